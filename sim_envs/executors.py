"""Plan executors: turn a plan's subgoals (text and/or predicted key-frame) into actions on an env.

Plug in your own policy by implementing :class:`Executor`. Both built-in executors report, per subgoal,
whether the subgoal's predicate holds afterwards and how far the achieved front frame is from the key-frame.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .keyframe_vision import VISIBLE_DZ, block_width_px, block_xy, find_blobs, image_distance, project
from .scene import BLOCK_HALF
from .skills import pick, place_at, run_call
from .tasks import SkillCall, check_call, is_held, parse_subgoal


@dataclass
class Subgoal:
    """One plan step: what to achieve, in words and/or as the image the scene should look like afterwards."""

    text: str
    keyframe: np.ndarray | None = None  # uint8 HxWx3, front camera


@dataclass
class SubgoalResult:
    text: str
    success: bool  # the subgoal's predicate holds on the state reached
    grounded: bool  # the executor could turn the subgoal into a skill at all
    skill: SkillCall | None = None
    steps: int = 0
    message: str = ""
    keyframe_mae: float | None = None  # mean |achieved - keyframe| in 0..255
    keyframe_psnr: float | None = None
    frame: np.ndarray | None = None  # achieved front frame (at the key-frame's size) when a key-frame was given


class Executor(Protocol):
    def execute(self, env, subgoal: Subgoal) -> SubgoalResult: ...


def run_plan(env, executor: Executor, plan: Sequence[Subgoal], stop_on_failure: bool = True) -> list[SubgoalResult]:
    results = []
    for sg in plan:
        r = executor.execute(env, sg)
        results.append(r)
        if stop_on_failure and not r.success:
            break
    return results


def _drive(env, actions: Iterator[np.ndarray], max_steps: int) -> int:
    """Step the env with a skill's actions (truncation by a TimeLimit wrapper is ignored: the plan decides)."""
    n = 0
    for a in actions:
        env.step(a)
        n += 1
        if n >= max_steps:
            break
    return n


def _finish(env, sg: Subgoal, call: SkillCall | None, steps: int, predicate: bool, message: str = "") -> SubgoalResult:
    u = env.unwrapped
    res = SubgoalResult(sg.text, bool(predicate), True, call, steps, message)
    if sg.keyframe is not None:
        h, w = sg.keyframe.shape[:2]
        res.frame = u.render_camera("front", w, h)
        res.keyframe_mae, res.keyframe_psnr = image_distance(res.frame, sg.keyframe)
    return res


def _predicate(env, sg: Subgoal, call: SkillCall | None, fallback) -> bool:
    """The subgoal's own predicate when its text is groundable, else the executor's inferred one."""
    ok = env.unwrapped.check_subgoal(sg.text) if sg.text else None
    return bool(fallback() if ok is None else ok)


class LanguageExecutor:
    """Subgoal text -> skill (pick / place in zone / place on block) -> actions."""

    def __init__(self, max_steps: int = 120) -> None:
        self.max_steps = max_steps

    def execute(self, env, subgoal: Subgoal) -> SubgoalResult:
        u = env.unwrapped
        call = parse_subgoal(subgoal.text)
        if call is None:
            return SubgoalResult(
                subgoal.text, False, False, message=f"cannot ground {subgoal.text!r}: no skill matches"
            )
        scene = u.task.scene
        missing = [n for n in (call.obj, call.target) if n and n not in scene.block_names() + scene.zone_names()]
        if missing:
            return SubgoalResult(subgoal.text, False, False, call, message=f"no {missing[0]!r} in the scene")
        steps = _drive(env, run_call(env, call), self.max_steps)
        return _finish(env, subgoal, call, steps, check_call(u.world_state(), call))


class KeyframeExecutor:
    """Reads the predicted key-frame with colour segmentation and back-projection; never reads the subgoal text.

    Not holding anything: the block whose position differs most between the current front view and the
    key-frame is the one to pick. Holding a block: if its blob in the key-frame sits where it would appear
    stacked on another block's free top (within ``stack_tol`` of a block's apparent width, compared in the image,
    where a key-frame's errors are made: on the table plane they stretch along the line of sight), it is stacked
    there; otherwise its blob, back-projected onto the table plane, is where it goes. The skills then run on the
    simulator's estimate of the *current* scene.
    """

    def __init__(self, max_steps: int = 120, min_move: float = 0.02, stack_tol: float = 0.7) -> None:
        self.max_steps, self.min_move, self.stack_tol = max_steps, min_move, stack_tol

    def _fail(self, sg: Subgoal, msg: str) -> SubgoalResult:
        return SubgoalResult(sg.text, False, False, message=msg)

    def execute(self, env, subgoal: Subgoal) -> SubgoalResult:
        u = env.unwrapped
        call, how = self.read_keyframe(env, subgoal)
        if call is None:
            return self._fail(subgoal, how)
        if call.skill == "pick":
            steps = _drive(env, pick(env, call.obj), self.max_steps)
            ok = _predicate(env, subgoal, call, lambda: check_call(u.world_state(), call))
            return _finish(env, subgoal, call, steps, ok, f"picked {call.obj}")
        held, target = call.obj, how["target"]
        if call.skill == "place_on":
            actions = place_at(env, held, target, how["z"], block_yaw=how["yaw"])
        else:
            actions = place_at(env, held, target, 0.0, fingers_along_x=how["fingers_along_x"])
        steps = _drive(env, actions, self.max_steps)

        def reached() -> bool:
            s = u.world_state()
            if call.skill == "place_on":
                return check_call(s, call)
            p = s.positions[held]
            return bool(
                np.linalg.norm(p[:2] - target) < 0.03 and abs(p[2] - BLOCK_HALF) < 0.01 and not s.gripper_closed
            )

        ok = _predicate(env, subgoal, call, reached)
        return _finish(env, subgoal, call, steps, ok, f"placed {held} at {np.round(target, 3).tolist()}")

    def read_keyframe(self, env, subgoal: Subgoal) -> tuple[SkillCall | None, dict | str]:
        """What `execute` would do for this key-frame from the current scene, without doing it: (the skill call,
        how to run it), or (None, why nothing). Reads only the key-frame and the current scene, never the text."""
        u = env.unwrapped
        kf = subgoal.keyframe
        if kf is None:
            return None, "no key-frame given"
        h, w = kf.shape[:2]
        cam = u.camera_model("front", w, h)
        blobs_k = find_blobs(kf)
        ws = u.world_state()
        held = self._held_block(ws)
        if held is None:
            obj = self._moved_block(u, cam, blobs_k, find_blobs(u.render_camera("front", w, h)))
            if obj is None:
                return None, "key-frame shows no block moved"
            return SkillCall("pick", obj), {}
        return self._placement(ws, cam, blobs_k, held)

    @staticmethod
    def _held_block(ws) -> str | None:
        """Proprioception says whether something is between closed fingers; the nearest block is it."""
        if not (ws.gripper_closed and ws.gripper_opening > 0.01):
            return None
        name, p = min(ws.positions.items(), key=lambda kv: np.linalg.norm(kv[1] - ws.ee_pos))
        return name if np.linalg.norm(p - ws.ee_pos) < 0.05 else None

    def _moved_block(self, u, cam, blobs_k, blobs_c) -> str | None:
        """The block to pick: the one whose position differs most between the current view and the key-frame."""
        names = {b.split()[0]: b for b in u.task.scene.block_names()}
        # a blob whose area changed a lot is partly occluded in one image (by the arm, or by the lifted block):
        # its apparent motion is trusted only when no cleanly visible block moved
        moves, unsure, hidden = {}, {}, []
        appeared = [c for c in blobs_k if c in names and c not in blobs_c]
        for c, bc in blobs_c.items():
            if c not in names:
                continue
            bk = blobs_k.get(c)
            if bk is None:
                hidden.append(c)
                continue
            d = float(np.linalg.norm(block_xy(bk, cam) - block_xy(bc, cam)))
            (moves if 0.6 < bk.area / bc.area < 1 / 0.6 else unsure)[c] = d
        for group in (moves, unsure):
            if group and max(group.values()) >= self.min_move:
                return names[max(group, key=group.get)]
        if len(appeared) == 1:  # hidden now (e.g. behind the arm), in view once lifted
            return names[appeared[0]]
        if len(hidden) == 1:
            return names[hidden[0]]
        return None

    def _placement(self, ws, cam, blobs_k, held: str) -> tuple[SkillCall | None, dict | str]:
        """Where the held block goes: stacked on a block whose free top its key-frame blob sits at, else the blob's
        point on the table."""
        blob = blobs_k.get(held.split()[0])
        if blob is None:
            return None, f"the held {held} is not visible in the key-frame"
        best, best_d = None, self.stack_tol
        for name, p in ws.positions.items():
            if name == held or p[2] > 0.2 or self._covered(ws, name, held):
                continue
            # where the held block's blob would be, stacked on this one; the distance in block widths
            top = np.array([p[0], p[1], p[2] + 2 * BLOCK_HALF + VISIBLE_DZ])
            uv = project(top, cam)[0]
            d = float(np.linalg.norm(uv - np.asarray(blob.centroid))) / block_width_px(top, cam)
            if d < best_d:
                best, best_d = name, d
        if best is not None:
            base = ws.positions[best]
            return SkillCall("place_on", held, best), {
                "target": base[:2],
                "z": base[2] + BLOCK_HALF,
                "yaw": ws.yaws[best],
            }
        target = block_xy(blob, cam)
        call = SkillCall("place_at", held, f"{target[0]:.3f},{target[1]:.3f}")
        return call, {"target": target, "fingers_along_x": self._neighbours_along_y(ws, held, target)}

    @staticmethod
    def _covered(ws, name: str, held: str) -> bool:
        """Another block rests on ``name``: its top is no place to stack."""
        p = ws.positions[name]
        others = [q for n, q in ws.positions.items() if n not in (name, held)]
        return any(
            abs(q[2] - p[2] - 2 * BLOCK_HALF) < BLOCK_HALF and np.linalg.norm(q[:2] - p[:2]) < 2 * BLOCK_HALF
            for q in others
        )

    @staticmethod
    def _neighbours_along_y(ws, held: str, xy) -> bool:
        """Open the fingers along x when the nearest other block at the target lies along y (e.g. a tray row)."""
        others = [p[:2] - xy for n, p in ws.positions.items() if n != held]
        near = [d for d in others if np.linalg.norm(d) < 0.09]
        if not near:
            return False
        d = min(near, key=np.linalg.norm)
        return bool(abs(d[1]) > abs(d[0]))


def put_down_held(env, max_steps: int = 120) -> tuple[str | None, int]:
    """Put a block left in the gripper down on the table, near where it is held; returns (the block, env steps), or
    (None, 0) when the gripper holds nothing.

    For re-planning after a failed subgoal (a wrong block picked, a place the executor could not ground): the next
    plan then starts with an empty gripper, as an episode's first plan does. The spot is the block's own (x, y)
    unless another block stands within two block widths; then the nearest free point 6-12 cm around it."""
    u = env.unwrapped
    ws = u.world_state()
    held = next((b for b in u.task.scene.block_names() if is_held(ws, b)), None)
    if held is None:
        return None, 0
    here = ws.positions[held][:2]
    others = [p[:2] for n, p in ws.positions.items() if n != held]
    rings = [here + r * np.array([np.cos(a), np.sin(a)]) for r in (0.06, 0.09, 0.12) for a in np.arange(8) * np.pi / 4]
    # candidates nearest first: the first free one
    xy = next((xy for xy in [here, *rings] if all(np.linalg.norm(xy - q) > 4 * BLOCK_HALF for q in others)), here)
    return held, _drive(env, place_at(env, held, xy, 0.0), max_steps)
