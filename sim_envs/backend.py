"""The small interface each physics engine implements; tasks, experts and executors only see this."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .scene import SceneSpec


class Backend(Protocol):
    """One physics engine behind the tabletop env.

    ``apply`` advances one control period (several physics substeps) while driving the end-effector towards a
    target pose; the env turns the continuous action into that target, so control is identical across engines.
    """

    control_dt: float

    def reset(self, scene: SceneSpec) -> None:
        """Place the blocks and zones of ``scene`` and put the gripper, open, at its home pose."""

    def apply(self, target_pos: np.ndarray, target_yaw: float, close: bool) -> None:
        """Drive the end-effector to ``target_pos``/``target_yaw`` with the gripper open or closed."""

    def block_poses(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Block name -> (centre xyz, quaternion wxyz)."""

    def ee_state(self) -> tuple[np.ndarray, float, float]:
        """(grasp-point xyz, yaw, finger opening in metres)."""

    def render(self, camera: str, width: int, height: int) -> np.ndarray:
        """uint8 HxWx3 image from a camera of ``scene.CAMERAS``."""

    def close(self) -> None: ...


def quat_yaw(q_wxyz: np.ndarray) -> float:
    w, x, y, z = q_wxyz
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def yaw_quat(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def make_backend(engine: str) -> Backend:
    """Import engines lazily so either one works without the other installed."""
    if engine == "mujoco":
        from .mujoco_env import MujocoBackend

        return MujocoBackend()
    if engine == "pybullet":
        from .pybullet_env import PybulletBackend

        return PybulletBackend()
    raise ValueError(f"unknown engine {engine!r}; expected 'mujoco' or 'pybullet'")
