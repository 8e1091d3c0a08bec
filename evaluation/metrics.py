"""Per-episode measurements (image fidelity, placement agreement) and the intervals that aggregate them.

Everything is numpy/OpenCV so the harness needs no scikit-image or scipy.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import cv2
import numpy as np

from sim_envs.keyframe_vision import detect_blocks
from sim_envs.scene import CameraModel, SceneSpec
from sim_envs.tasks import SkillCall, parse_subgoal

Z95 = 1.959963984540054


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (inf when identical)."""
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else float(10 * math.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03), averaged over channels."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x, y = a.astype(np.float64), b.astype(np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    blur = lambda im: cv2.GaussianBlur(im, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)
    vals = []
    for c in range(x.shape[2]):
        xc, yc = x[..., c], y[..., c]
        mx, my = blur(xc), blur(yc)
        sxx, syy, sxy = blur(xc * xc) - mx * mx, blur(yc * yc) - my * my, blur(xc * yc) - mx * my
        num = (2 * mx * my + c1) * (2 * sxy + c2)
        den = (mx * mx + my * my + c1) * (sxx + syy + c2)
        vals.append(float((num / den).mean()))
    return float(np.mean(vals))


def placement_agreement(
    predicted: np.ndarray,
    achieved: np.ndarray,
    cam: CameraModel,
    colours: Sequence[str],
    tol: float = 0.03,
    skip: Collection[str] = (),
) -> tuple[int, int]:
    """(blocks placed alike, blocks considered), from `block_agreement`. ``skip``: colours left out (a block held in
    the air has no placement, and its back-projection moves with its height)."""
    ok = block_agreement(predicted, achieved, cam, [c for c in colours if c not in skip], tol)
    return sum(ok.values()), len(ok)


def block_agreement(
    predicted: np.ndarray, achieved: np.ndarray, cam: CameraModel, colours: Sequence[str], tol: float = 0.03
) -> dict[str, bool]:
    """Colour -> placed alike: each scene block is located by colour segmentation in both images and back-projected
    onto the table; it agrees when both are found within ``tol`` metres, or both are missing (e.g. hidden in the
    gripper). Judges the image a planner drew, not its pixels."""
    p, q = detect_blocks(predicted, cam, colours), detect_blocks(achieved, cam, colours)
    return {c: bool(np.linalg.norm(p[c] - q[c]) <= tol) if c in p and c in q else (c not in p and c not in q)
            for c in colours}  # fmt: skip


def follows_text(text: str, skill: SkillCall | None, scene: SceneSpec) -> bool | None:
    """Did the key-frame executor, which never reads the text, do what the subgoal's text says? The same block
    picked; the same block placed on the named block; or placed at a point inside the named zone. None when the text
    is outside the grammar. It separates a key-frame that shows the wrong thing from an executor that fails to do
    what a right key-frame shows (the subgoal's own success judges both)."""
    want = parse_subgoal(text)
    if want is None:
        return None
    if skill is None or skill.obj != want.obj:
        return False
    if want.skill == "pick":
        return skill.skill == "pick"
    if want.skill == "place_on":
        return skill.skill == "place_on" and skill.target == want.target
    if skill.skill != "place_at" or want.target not in scene.zone_names():
        return False
    return scene.zone(want.target).contains(skill.point)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a success rate: well-behaved at 0/n and n/n, unlike the normal approximation."""
    if n == 0:
        return (0.0, 1.0)
    ph = k / n
    den = 1 + z * z / n
    centre = (ph + z * z / (2 * n)) / den
    half = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / den
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if k == 0 else lo, 1.0 if k == n else hi)  # exact at the ends (no rounding below 1)


def bootstrap_mean(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap 95% interval; seeded so a report is reproducible."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return (float("nan"), float("nan"), float("nan"))
    if v.size == 1:
        return (float(v[0]), float(v[0]), float(v[0]))
    idx = np.random.default_rng(seed).integers(0, v.size, (resamples, v.size))
    means = v[idx].mean(axis=1)
    return (float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))
