"""Whole-episode augmentation: recolour the blocks and zones (images and words together) and mirror the scene.

Why: a 14M-parameter decoder trained on 6,000 scenes memorised them (held-out loss 6.5x the training loss) and drew
plausible scenes instead of editing the one in its camera image. Permuting the six palette colours gives 720
variants of every episode that only copying can predict, and a left-right mirror is another valid scene (the world's
y axis flipped; instructions and subgoals never say left or right).

Colours are moved in hue only (OpenCV HSV), on pixels saturated enough to be a block or a zone: the grey table,
the robot and the white tray are untouched, shading and anti-aliased edges keep their saturation and brightness.
"""

from __future__ import annotations

import re
from dataclasses import replace

import cv2
import numpy as np

from sim_envs.keyframe_vision import PALETTE_HUES, hue_distance

from .collect import EpisodeRecord, ExploreRecord

MIN_SATURATION = 45  # zones are the palette mixed 60 % with white (saturation about 80); the table is about 25
HUE_TOL = 12
COLOURS = tuple(PALETTE_HUES)


def recolour(frames: np.ndarray, perm: dict[str, str]) -> np.ndarray:
    """uint8 [N, H, W, 3] RGB -> the same scenes with palette colour c drawn as perm[c]."""
    out = np.empty_like(frames)
    for i, f in enumerate(frames):
        hsv = cv2.cvtColor(f, cv2.COLOR_RGB2HSV)
        h = hsv[..., 0].astype(np.int16)
        new_h = h.copy()
        coloured = hsv[..., 1] >= MIN_SATURATION
        for src, dst in perm.items():
            near = coloured & (hue_distance(h, src) <= HUE_TOL)
            new_h[near] = (h[near] + PALETTE_HUES[dst] - PALETTE_HUES[src]) % 180
        hsv[..., 0] = new_h.astype(np.uint8)
        out[i] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return out


def recolour_text(text: str, perm: dict[str, str]) -> str:
    return re.sub(r"\b(" + "|".join(COLOURS) + r")\b", lambda m: perm.get(m.group(1), m.group(1)), text)


def random_permutation(rng: np.random.Generator) -> dict[str, str]:
    return dict(zip(COLOURS, (COLOURS[i] for i in rng.permutation(len(COLOURS)))))


def augment_episode(
    rec: EpisodeRecord, frames: np.ndarray, rng: np.random.Generator
) -> tuple[EpisodeRecord, np.ndarray]:
    """A recoloured, and half the time mirrored, copy of a vla episode."""
    perm = random_permutation(rng)
    frames = recolour(frames, perm)
    if rng.random() < 0.5:
        frames = np.ascontiguousarray(frames[:, :, ::-1])
    rec = replace(
        rec,
        instruction=recolour_text(rec.instruction, perm),
        subgoals=[recolour_text(s, perm) for s in rec.subgoals],
    )
    return rec, frames


COLOUR_WORD = re.compile(r"\b(" + "|".join(COLOURS) + r")\b")


def swap_colours(rec: EpisodeRecord, rng: np.random.Generator) -> EpisodeRecord | None:
    """The episode with other words and the same frames, a negative for the grounding loss
    (`TrainConfig.contrast_weight`): the colours its texts name are deranged among themselves, so every block, zone
    and target named becomes another one the episode names. None when it names fewer than two colours."""
    named = sorted({m for t in (rec.instruction, *rec.subgoals) for m in COLOUR_WORD.findall(t)})
    if len(named) < 2:
        return None
    order = [named[i] for i in rng.permutation(len(named))]
    perm = dict(zip(order, order[1:] + order[:1]))  # one cycle: no colour keeps its name
    return replace(
        rec, instruction=recolour_text(rec.instruction, perm), subgoals=[recolour_text(s, perm) for s in rec.subgoals]
    )


def augment_explore(
    rec: ExploreRecord, frames: np.ndarray, rng: np.random.Generator
) -> tuple[ExploreRecord, np.ndarray]:
    """A recoloured copy of an explore walk (never mirrored: its narrations and commands say left and right, and
    list objects from left to right)."""
    perm = random_permutation(rng)
    return replace(rec, narrations=[recolour_text(n, perm) for n in rec.narrations]), recolour(frames, perm)
