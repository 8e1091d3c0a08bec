"""Gymnasium tabletop environments on MuJoCo and PyBullet, scripted experts and plan executors.

Knows nothing of the model: plans arrive as subgoal text plus key-frame images. ``import sim_envs`` registers
one env id per task family and engine, e.g. ``gymnasium.make("sim_envs/PlaceInZone-mujoco-v0")``.
"""

from __future__ import annotations

import os

# Headless MuJoCo rendering. MuJoCo picks its GL backend when first imported, so this must happen before any
# ``import mujoco``: import sim_envs first, or export MUJOCO_GL yourself (egl, or osmesa without a GPU driver).
os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402

from .tasks import FAMILIES  # noqa: E402

ENGINES = ("mujoco", "pybullet")
STEPS_PER_SUBGOAL = 60


def env_id(family: str, engine: str) -> str:
    return f"sim_envs/{family}-{engine}-v0"


ENV_IDS: list[str] = []
for _family, _spec in FAMILIES.items():
    for _engine in ENGINES:
        _id = env_id(_family, _engine)
        ENV_IDS.append(_id)
        if _id not in gym.registry:
            gym.register(
                id=_id,
                entry_point="sim_envs.base:TabletopEnv",
                kwargs={"family": _family, "engine": _engine},
                max_episode_steps=STEPS_PER_SUBGOAL * _spec.max_subgoals,
            )

__all__ = ["ENGINES", "ENV_IDS", "FAMILIES", "env_id"]
