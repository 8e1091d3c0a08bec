"""Scripted expert: follows the task's canonical subgoals with the skills, re-grasping after a drop."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .skills import run_call
from .tasks import parse_subgoal


def expert_actions(env, max_attempts_per_subgoal: int = 3) -> Iterator[np.ndarray]:
    """Yield actions until the task succeeds or attempts run out; step the env with each one.

    Progress is read from the env's subgoal index, so a failed place (a dropped block) re-runs the place
    subgoal, whose skill re-picks the block first.
    """
    u = getattr(env, "unwrapped", env)
    attempts: dict[int, int] = {}
    while True:
        ws = u.world_state()
        if u.task.success(ws):
            return
        k = u.subgoal_index
        if k >= len(u.task.subgoals):
            # all subgoals were reached in order but the final state broke (e.g. a tower fell): redo the last one
            k = len(u.task.subgoals) - 1
        attempts[k] = attempts.get(k, 0) + 1
        if attempts[k] > max_attempts_per_subgoal:
            return
        yield from run_call(env, parse_subgoal(u.task.subgoals[k]))


def run_expert(
    env, seed: int | None = None, max_steps: int = 1000, options: dict | None = None
) -> tuple[bool, int, dict]:
    """Reset (with `options`, e.g. {"retarget": k}) and solve one episode; returns (success, steps, last info)."""
    _, info = env.reset(seed=seed, options=options)
    steps = 0
    for action in expert_actions(env):
        _, _, terminated, truncated, info = env.step(action)
        steps += 1
        if terminated or truncated or steps >= max_steps:
            break
    return bool(info["success"]), steps, info
