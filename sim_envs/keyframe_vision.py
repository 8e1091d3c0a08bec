"""Find blocks in an RGB image by colour and put them on the table by back-projecting through the camera.

This is the only perception the key-frame executor has about where things should end up: no simulator state.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .scene import BLOCK_HALF, PALETTE, CameraModel

MIN_SATURATION = 140  # blocks are saturated; zones are pastel and the table/robot grey
MIN_VALUE = 40
HUE_TOL = 9  # OpenCV hue units (0..180); palette hues are 30 apart
MIN_AREA = 3  # pixels
# a blob mixes top face and front face; its centroid sits just above the block's centre. Measured on both
# engines at 96-256 px: resting blocks back-project within 2.5 mm at 0.1 half-widths; 0.45 (until 2026-11-30)
# put them 0.7-1.0 cm too near the camera
VISIBLE_DZ = 0.1 * BLOCK_HALF


def _hue(rgb: tuple[float, float, float]) -> int:
    px = np.uint8([[np.round(np.asarray(rgb) * 255)]])
    return int(cv2.cvtColor(px, cv2.COLOR_RGB2HSV)[0, 0, 0])


PALETTE_HUES: dict[str, int] = {c: _hue(rgb) for c, rgb in PALETTE.items()}


@dataclass(frozen=True)
class Blob:
    colour: str
    centroid: tuple[float, float]  # (u, v) pixels, u to the right, v down
    area: int


def hue_distance(hue: np.ndarray, colour: str) -> np.ndarray:
    """Distance of OpenCV hues (0..180, wrapping) from a palette colour's hue."""
    d = np.abs(hue.astype(np.int16) - PALETTE_HUES[colour])
    return np.minimum(d, 180 - d)


def colour_mask(image: np.ndarray, colour: str) -> np.ndarray:
    hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV)
    d = hue_distance(hsv[..., 0], colour)
    return ((d <= HUE_TOL) & (hsv[..., 1] >= MIN_SATURATION) & (hsv[..., 2] >= MIN_VALUE)).astype(np.uint8)


def find_blobs(image: np.ndarray, colours=None) -> dict[str, Blob]:
    """Largest blob of each palette colour present in the image."""
    out = {}
    for c in colours or PALETTE:
        n, _, stats, cents = cv2.connectedComponentsWithStats(colour_mask(image, c), connectivity=8)
        if n <= 1:
            continue
        i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        if stats[i, cv2.CC_STAT_AREA] >= MIN_AREA:
            out[c] = Blob(c, (float(cents[i][0]), float(cents[i][1])), int(stats[i, cv2.CC_STAT_AREA]))
    return out


def backproject(uv: tuple[float, float], cam: CameraModel, plane_z: float) -> np.ndarray:
    """World point where the ray through pixel ``uv`` meets the horizontal plane ``z = plane_z``."""
    K, T = cam.K, cam.cam_to_world
    # pixel centres: connected-component centroids index pixels from 0, the principal point is at W/2
    d_cam = np.array([(uv[0] + 0.5 - K[0, 2]) / K[0, 0], (uv[1] + 0.5 - K[1, 2]) / K[1, 1], 1.0])
    ray = T[:3, :3] @ d_cam
    eye = T[:3, 3]
    if abs(ray[2]) < 1e-9:
        raise ValueError("ray parallel to the plane")
    return eye + (plane_z - eye[2]) / ray[2] * ray


def project(point, cam: CameraModel) -> tuple[np.ndarray, float]:
    """Pixel (u, v) of a world point (the inverse of :func:`backproject`) and its depth along the optical axis."""
    R, t = cam.cam_to_world[:3, :3], cam.cam_to_world[:3, 3]
    pc = R.T @ (np.asarray(point, dtype=float) - t)
    K = cam.K
    uv = np.array([K[0, 0] * pc[0] / pc[2] + K[0, 2] - 0.5, K[1, 1] * pc[1] / pc[2] + K[1, 2] - 0.5])
    return uv, float(pc[2])


def block_width_px(point, cam: CameraModel) -> float:
    """Apparent width in pixels of a block centred at ``point``: the scale the key-frame's errors live on."""
    return float(cam.K[0, 0] * 2 * BLOCK_HALF / project(point, cam)[1])


def block_xy(blob: Blob, cam: CameraModel, centre_z: float = BLOCK_HALF) -> np.ndarray:
    """Table position of a block seen as ``blob``, assuming its centre is at height ``centre_z``."""
    return backproject(blob.centroid, cam, centre_z + VISIBLE_DZ)[:2]


def detect_blocks(image: np.ndarray, cam: CameraModel, colours=None) -> dict[str, np.ndarray]:
    """Colour -> xy of blocks resting on the table."""
    return {c: block_xy(b, cam) for c, b in find_blobs(image, colours).items()}


def image_distance(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean absolute difference in 0..255, PSNR in dB) between two uint8 images of the same size."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    mae = float(np.abs(a - b).mean())
    mse = float(((a - b) ** 2).mean())
    psnr = float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
    return mae, psnr
