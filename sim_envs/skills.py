"""Scripted skills as action generators over the end-effector action space.

A skill yields one action at a time and reads the env's state between yields, so the caller stays in charge of
stepping (and can record, render or stop). Skills read the current scene through ``env.world_state()``, the
simulator's state estimate; where a block must *go* is always an argument, so executors decide targets.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .base import MAX_DPOS, MAX_DYAW, YAW_LIMIT
from .scene import BLOCK_HALF, CARRY_Z, wrap_grasp_yaw
from .tasks import SkillCall, tray_slots

Action = np.ndarray
OPEN, CLOSE = 1.0, -1.0
RELEASE_CLEARANCE = 0.004
RETREAT = 0.08


def _unwrap(env):
    return getattr(env, "unwrapped", env)


def goto(
    env, pos, yaw: float, grip: float, tol: float = 0.006, max_steps: int = 40, speed: float = 1.0
) -> Iterator[Action]:
    """Straight-line move of the commanded pose to ``pos``/``yaw``, then wait for the arm to get there."""
    u = _unwrap(env)
    pos = np.asarray(pos, dtype=float)
    for _ in range(max_steps):
        tgt, tyaw = u.target_pose
        dp, dy = (pos - tgt) / MAX_DPOS, (yaw - tyaw) / MAX_DYAW
        scale = max(1.0, np.abs(dp).max() / speed, abs(dy))
        if np.abs(dp).max() < 1e-3 and abs(dy) < 1e-2:
            ee = u.world_state().ee_pos
            if np.linalg.norm(ee - pos) < tol:
                return
        yield np.array([*(dp / scale), dy / scale, grip], dtype=np.float32)


def hold(env, steps: int, grip: float) -> Iterator[Action]:
    for _ in range(steps):
        yield np.array([0, 0, 0, 0, grip], dtype=np.float32)


def pick(env, obj: str) -> Iterator[Action]:
    """Top-down grasp of ``obj`` at its centre, then lift to carrying height."""
    ws = _unwrap(env).world_state()
    p = ws.positions[obj]
    yaw = wrap_grasp_yaw(ws.yaws[obj])
    z_above = max(CARRY_Z, p[2] + 0.1)
    yield from goto(env, [p[0], p[1], z_above], yaw, OPEN)
    p = _unwrap(env).world_state().positions[obj]
    yield from goto(env, [p[0], p[1], p[2] + 0.03], yaw, OPEN)
    yield from goto(env, [p[0], p[1], p[2]], yaw, OPEN, speed=0.5)
    yield from hold(env, 4, CLOSE)
    yield from goto(env, [p[0], p[1], z_above], yaw, CLOSE, speed=0.7)


def place_at(
    env, obj: str, xy, support_z: float, fingers_along_x: bool = False, block_yaw: float = 0.0
) -> Iterator[Action]:
    """Put the held ``obj`` down with its centre over ``xy``, resting on a surface at height ``support_z``.

    The hand turns (by multiples of 90 degrees, which a cube does not mind) so the block lands square to
    ``block_yaw``: axis-aligned on the table, or aligned with the block below it. ``fingers_along_x`` picks the
    turn that opens the fingers along x, clear of neighbours lined up along y (the tray).
    """
    u = _unwrap(env)
    ws = u.world_state()
    offset = ws.ee_pos - ws.positions[obj] if obj in ws.positions else np.zeros(3)
    held = np.linalg.norm(offset) <= 0.05
    if not held:  # not actually held: aim as if held at its centre
        offset = np.zeros(3)
    yaw = ws.ee_yaw
    if held:
        rel = ws.yaws[obj] - ws.ee_yaw
        options = [block_yaw - rel + k * np.pi / 2 for k in range(-5, 6)]
        options = [y for y in options if abs(y) <= YAW_LIMIT - 0.05]
        if fingers_along_x:
            options = [y for y in options if abs(np.sin(y)) > 0.7] or options
        yaw = min(options, key=lambda y: abs(y - ws.ee_yaw))
        c, s_ = np.cos(yaw - ws.ee_yaw), np.sin(yaw - ws.ee_yaw)
        offset[:2] = (c * offset[0] - s_ * offset[1], s_ * offset[0] + c * offset[1])
    ee_xy = np.asarray(xy, dtype=float) + offset[:2]
    z_release = support_z + BLOCK_HALF + offset[2] + RELEASE_CLEARANCE
    z_above = max(CARRY_Z, z_release + 0.06)
    yield from goto(env, [*ee_xy, z_above], yaw, CLOSE, speed=0.8)
    yield from goto(env, [*ee_xy, z_release + 0.03], yaw, CLOSE, speed=0.8)
    yield from goto(env, [*ee_xy, z_release], yaw, CLOSE, speed=0.4)
    yield from hold(env, 3, OPEN)
    yield from goto(env, [*ee_xy, z_release + RETREAT], yaw, OPEN)


def free_tray_slot(env, zone_name: str, obj: str) -> np.ndarray:
    """The first tray slot with no other block near it."""
    u = _unwrap(env)
    ws = u.world_state()
    zone = ws.scene.zone(zone_name)
    others = [p for n, p in ws.positions.items() if n != obj]
    for s in tray_slots(zone):
        if all(np.linalg.norm(p[:2] - s) > 0.035 for p in others):
            return s
    return np.asarray(zone.xy)


def run_call(env, call: SkillCall) -> Iterator[Action]:
    """Actions for a grounded subgoal; placing an object that is not in hand picks it up first."""
    from .tasks import is_held

    u = _unwrap(env)
    if call.skill == "pick":
        yield from pick(env, call.obj)
        return
    if not is_held(u.world_state(), call.obj):
        yield from pick(env, call.obj)
    ws = u.world_state()
    if call.skill == "place_zone":
        zone = ws.scene.zone(call.target)
        tray = zone.colour == "tray"
        xy = free_tray_slot(env, call.target, call.obj) if tray else np.asarray(zone.xy)
        yield from place_at(env, call.obj, xy, 0.0, fingers_along_x=tray)
    elif call.skill == "place_on":
        base = ws.positions[call.target]
        yield from place_at(env, call.obj, base[:2], base[2] + BLOCK_HALF, block_yaw=ws.yaws[call.target])
    else:
        raise ValueError(f"unknown skill {call.skill!r}")
