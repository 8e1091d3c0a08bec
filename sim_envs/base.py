"""The Gymnasium env shared by both engines: action mapping, observations, subgoal tracking, success."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .backend import Backend, make_backend, quat_yaw
from .scene import CAMERAS, EE_HIGH, EE_HOME, EE_LOW, MAX_BLOCKS, CameraModel, CameraSpec, camera_model
from .tasks import FAMILIES, NoSuchGoal, TaskInstance, WorldState, check_call, parse_subgoal

MAX_DPOS = 0.04  # metres per control step at action magnitude 1
MAX_DYAW = 0.3  # radians per control step
YAW_LIMIT = 2.6


class TabletopEnv(gym.Env):
    """Tabletop manipulation: one task family on one engine.

    Action (Box [-1, 1]^5): end-effector delta x, y, z (x ``MAX_DPOS`` m), delta yaw (x ``MAX_DYAW`` rad) and
    gripper (> 0 open, <= 0 close). Observation: camera images (only when ``image_obs``), ``proprio`` =
    [x, y, z, yaw, finger opening, gripper closed], and ``privileged_object_poses`` (MAX_BLOCKS x 7: xyz + quat
    wxyz, zero rows past the scene's blocks) which policies meant for the real world must not read.
    Reward is sparse (1 on success), and success terminates the episode.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}

    def __init__(
        self,
        family: str = "PlaceInZone",
        engine: str = "mujoco",
        render_mode: str | None = "rgb_array",
        image_size: int | tuple[int, int] = 96,
        cameras: tuple[str, ...] = ("front", "wrist"),
        image_obs: bool = True,
    ) -> None:
        if family not in FAMILIES:
            raise ValueError(f"unknown task family {family!r}; known: {sorted(FAMILIES)}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.family = FAMILIES[family]
        self.engine = engine
        self.render_mode = render_mode
        self.height, self.width = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.cameras = tuple(cameras) if image_obs else ()
        for c in self.cameras:
            if c not in CAMERAS:
                raise ValueError(f"unknown camera {c!r}; known: {sorted(CAMERAS)}")
        self.backend: Backend = make_backend(engine)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(5,), dtype=np.float32)
        obs = {c: spaces.Box(0, 255, shape=(self.height, self.width, 3), dtype=np.uint8) for c in self.cameras}
        lo = np.array([*EE_LOW - 0.1, -np.pi, -0.02, 0.0], dtype=np.float32)
        hi = np.array([*EE_HIGH + 0.1, np.pi, 0.12, 1.0], dtype=np.float32)
        obs["proprio"] = spaces.Box(lo, hi, dtype=np.float32)
        # blocks knocked off the table land on the floor (z = -0.75); bounds leave room for that
        obs["privileged_object_poses"] = spaces.Box(-10.0, 10.0, shape=(MAX_BLOCKS, 7), dtype=np.float32)
        self.observation_space = spaces.Dict(obs)
        self.task: TaskInstance | None = None
        self._target = EE_HOME.copy()
        self._yaw = 0.0
        self._closed = False
        self._subgoal_index = 0
        self._calls: list = []

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.task = self.family.sample(self.np_random)
        k = int((options or {}).get("retarget", 0))
        if k:  # another goal in the same scene (TaskFamily.retarget)
            task = self.family.retarget(self.task, k)
            if task is None:
                raise NoSuchGoal(f"{self.family.name}: this scene has no goal {k} besides its own")
            self.task = task
        self.backend.reset(self.task.scene)
        self._target, self._yaw, self._closed = EE_HOME.copy(), 0.0, False
        self._subgoal_index = 0
        self._calls = [parse_subgoal(s) for s in self.task.subgoals]
        ws = self.world_state()
        return self._obs(ws), self._info(ws, False, [])

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(5), -1.0, 1.0)
        self._target = np.clip(self._target + a[:3] * MAX_DPOS, EE_LOW, EE_HIGH)
        self._yaw = float(np.clip(self._yaw + a[3] * MAX_DYAW, -YAW_LIMIT, YAW_LIMIT))
        self._closed = bool(a[4] <= 0.0)
        self.backend.apply(self._target, self._yaw, self._closed)
        ws = self.world_state()
        done_now = []
        while self._subgoal_index < len(self._calls) and check_call(ws, self._calls[self._subgoal_index]):
            done_now.append(self._subgoal_index)
            self._subgoal_index += 1
        success = self.task.success(ws)
        return self._obs(ws), float(success), success, False, self._info(ws, success, done_now)

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        return self.render_camera("front")

    def close(self) -> None:
        self.backend.close()

    # ------------------------------------------------------------------ helpers used by experts and executors
    def world_state(self) -> WorldState:
        poses = self.backend.block_poses()
        ee, yaw, opening = self.backend.ee_state()
        return WorldState(
            positions={n: p for n, (p, _) in poses.items()},
            yaws={n: quat_yaw(q) for n, (_, q) in poses.items()},
            ee_pos=ee,
            ee_yaw=yaw,
            gripper_opening=opening,
            gripper_closed=self._closed,
            scene=self.task.scene,
        )

    @property
    def target_pose(self) -> tuple[np.ndarray, float]:
        """The commanded end-effector pose (actions integrate onto it)."""
        return self._target.copy(), self._yaw

    def render_camera(
        self, camera: str | CameraSpec = "front", width: int | None = None, height: int | None = None
    ) -> np.ndarray:
        """A named camera of ``scene.CAMERAS``, or any world-frame ``CameraSpec`` (e.g. ``scene.orbit_camera``)."""
        return self.backend.render(camera, width or self.width, height or self.height)

    def camera_model(self, camera: str = "front", width: int | None = None, height: int | None = None) -> CameraModel:
        ee, yaw, _ = self.backend.ee_state()
        return camera_model(CAMERAS[camera], width or self.width, height or self.height, ee, yaw)

    def check_subgoal(self, text: str) -> bool | None:
        """The predicate of a subgoal text on the current state, or None when the text cannot be grounded."""
        call = parse_subgoal(text)
        scene = self.task.scene
        if call is None or call.obj not in scene.block_names():
            return None
        if call.target is not None and call.target not in scene.block_names() + scene.zone_names():
            return None
        return check_call(self.world_state(), call)

    @property
    def subgoal_index(self) -> int:
        return self._subgoal_index

    def _obs(self, ws: WorldState) -> dict[str, np.ndarray]:
        obs = {c: self.render_camera(c) for c in self.cameras}
        obs["proprio"] = np.array(
            [*ws.ee_pos, ws.ee_yaw, ws.gripper_opening, float(ws.gripper_closed)], dtype=np.float32
        )
        poses = np.zeros((MAX_BLOCKS, 7), dtype=np.float32)
        for i, (p, q) in enumerate(self.backend.block_poses().values()):
            poses[i, :3], poses[i, 3:] = p, q
        obs["privileged_object_poses"] = poses
        return obs

    def _info(self, ws: WorldState, success: bool, done_now: list[int]) -> dict[str, Any]:
        return {
            "instruction": self.task.instruction,
            "success": bool(success),
            "subgoal_index": self._subgoal_index,
            "num_subgoals": len(self.task.subgoals),
            "subgoals": list(self.task.subgoals),
            "subgoals_completed_now": done_now,
            "object_names": [b.name for b in self.task.scene.blocks],
            "family": self.family.name,
            "engine": self.engine,
        }
