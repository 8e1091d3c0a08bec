"""Shared scene description: geometry, palette, cameras and seeded layout sampling.

Both engines build their world from these numbers, so a task, an expert or a key-frame detector written
against them behaves the same on MuJoCo and PyBullet. World frame: table top is the plane z = 0, +x points
from the robot towards the front camera, +z is up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BLOCK_HALF = 0.02  # blocks are 4 cm cubes
BLOCK_MASS = 0.05
MAX_BLOCKS = 4
MAX_ZONES = 4
ZONE_HALF = 0.05  # marked zones are 10 cm squares
TRAY_HALF = 0.085  # the tray (ClearTable target) is a 17 cm square
TRAY_SLOT_DY = 0.055  # blocks go into the tray side by side along y (across the front camera's view)
TABLE_HALF = (0.5, 0.5)  # half extents of the table top in x and y
TABLE_CENTER = (-0.15, 0.0)
TABLE_RGBA = (0.62, 0.6, 0.56, 1.0)  # grey: low saturation, so it never looks like a block
ROBOT_BASE = (-0.55, 0.0, 0.0)  # PyBullet Panda base; the MuJoCo gripper floats

# Workspace where blocks and zones are sampled, and where the end-effector may go.
SAMPLE_X = (-0.2, 0.14)
SAMPLE_Y = (-0.24, 0.24)
EE_LOW = np.array([-0.3, -0.35, 0.005])
EE_HIGH = np.array([0.3, 0.35, 0.35])
EE_HOME = np.array([-0.1, 0.0, 0.22])
CARRY_Z = 0.2

# Fully saturated block colours, 30 degrees apart in OpenCV hue so segmentation is unambiguous.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1),
    "yellow": (0.85, 0.85, 0.1),
    "green": (0.1, 0.75, 0.1),
    "cyan": (0.1, 0.75, 0.8),
    "blue": (0.1, 0.2, 0.85),
    "magenta": (0.8, 0.1, 0.8),
}
ZONE_WHITE_MIX = 0.6  # zones are pastel (mixed with white) so blocks of the same colour segment apart


def block_rgba(colour: str) -> tuple[float, float, float, float]:
    return (*PALETTE[colour], 1.0)


def zone_rgba(colour: str) -> tuple[float, float, float, float]:
    if colour == "tray":
        return (0.95, 0.95, 0.95, 1.0)
    r, g, b = PALETTE[colour]
    m = ZONE_WHITE_MIX
    return (r * (1 - m) + m, g * (1 - m) + m, b * (1 - m) + m, 1.0)


@dataclass(frozen=True)
class BlockSpec:
    name: str  # e.g. "red block"
    colour: str
    xy: tuple[float, float]
    yaw: float


@dataclass(frozen=True)
class ZoneSpec:
    name: str  # e.g. "green zone" or "tray"
    colour: str  # palette name or "tray"
    xy: tuple[float, float]
    half: float

    def contains(self, p: np.ndarray, margin: float = 0.0) -> bool:
        return bool(abs(p[0] - self.xy[0]) <= self.half - margin and abs(p[1] - self.xy[1]) <= self.half - margin)


@dataclass(frozen=True)
class SceneSpec:
    blocks: tuple[BlockSpec, ...]
    zones: tuple[ZoneSpec, ...] = field(default_factory=tuple)

    def block(self, name: str) -> BlockSpec:
        return next(b for b in self.blocks if b.name == name)

    def zone(self, name: str) -> ZoneSpec:
        return next(z for z in self.zones if z.name == name)

    def block_names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def zone_names(self) -> list[str]:
        return [z.name for z in self.zones]


@dataclass(frozen=True)
class CameraSpec:
    """A pinhole camera given by eye/target/up (world frame, or end-effector frame when ``on_ee``)."""

    name: str
    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    up: tuple[float, float, float]
    fovy_deg: float
    on_ee: bool = False


CAMERAS: dict[str, CameraSpec] = {
    "front": CameraSpec("front", eye=(0.55, 0.0, 0.5), target=(-0.05, 0.0, 0.0), up=(0, 0, 1), fovy_deg=50.0),
    # wrist camera rides on the gripper, behind the fingers, looking down past them
    "wrist": CameraSpec(
        "wrist", eye=(-0.09, 0.0, 0.12), target=(0.03, 0.0, -0.06), up=(1, 0, 0), fovy_deg=70.0, on_ee=True
    ),
}


@dataclass(frozen=True)
class CameraModel:
    """Intrinsics ``K`` (pixels) and camera-to-world transform in the OpenCV convention (x right, y down, z fwd)."""

    K: np.ndarray
    cam_to_world: np.ndarray
    width: int
    height: int


def look_at_rotation(eye, target, up) -> np.ndarray:
    """OpenCV-convention camera rotation (columns: right, down, forward) for a look-at camera."""
    eye, target, up = (np.asarray(v, dtype=float) for v in (eye, target, up))
    fwd = target - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd], axis=1)


def intrinsics(fovy_deg: float, width: int, height: int) -> np.ndarray:
    f = 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2)
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])


def yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def orbit_camera(azimuth_deg: float, elevation_deg: float, distance: float, fovy_deg: float = 50.0) -> CameraSpec:
    """A camera on a sphere around the workspace centre, looking at it (the explore task moves one).

    Azimuth 0 is the front camera's side (+x), positive turns towards +y; elevation is above the table plane.
    """
    az, el = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
    target = np.array([ORBIT_TARGET[0], ORBIT_TARGET[1], 0.0])
    eye = target + distance * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    name = f"orbit({azimuth_deg:g},{elevation_deg:g},{distance:g})"
    return CameraSpec(name, tuple(eye.tolist()), tuple(target.tolist()), (0.0, 0.0, 1.0), fovy_deg)


ORBIT_TARGET = (-0.05, 0.0)  # the front camera's target


def camera_model(spec: CameraSpec, width: int, height: int, ee_pos=None, ee_yaw: float = 0.0) -> CameraModel:
    R = look_at_rotation(spec.eye, spec.target, spec.up)
    t = np.asarray(spec.eye, dtype=float)
    if spec.on_ee:
        Rz = yaw_matrix(ee_yaw)
        R = Rz @ R
        t = np.asarray(ee_pos, dtype=float) + Rz @ t
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return CameraModel(intrinsics(spec.fovy_deg, width, height), T, width, height)


def world_camera_pose(spec: CameraSpec, ee_pos=None, ee_yaw: float = 0.0):
    """Eye, target and up in the world frame (what a renderer's look-at call wants)."""
    eye, target, up = (np.asarray(v, dtype=float) for v in (spec.eye, spec.target, spec.up))
    if spec.on_ee:
        Rz = yaw_matrix(ee_yaw)
        ee = np.asarray(ee_pos, dtype=float)
        return ee + Rz @ eye, ee + Rz @ target, Rz @ up
    return eye, target, up


def wrap_grasp_yaw(block_yaw: float) -> float:
    """A cube looks the same every 90 degrees: the gripper yaw closest to 0 that squares with its faces."""
    return float((block_yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4)


def sample_xy(rng: np.random.Generator, taken: list[tuple[np.ndarray, float]], radius: float, tries: int = 500):
    """Rejection-sample a point in the workspace at least ``radius + r_i`` away from each taken (point, r_i)."""
    for _ in range(tries):
        p = np.array([rng.uniform(*SAMPLE_X), rng.uniform(*SAMPLE_Y)])
        if all(np.linalg.norm(p - q) >= radius + r for q, r in taken):
            return p
    raise RuntimeError("could not place object; workspace too crowded")
