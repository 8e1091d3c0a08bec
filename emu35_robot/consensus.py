"""Consensus plans: draw several plans of one scene and keep the one the others agree with most.

This is minimum-Bayes-risk selection with the plans' own key-frames as the evidence: the chosen plan is the medoid,
the candidate whose key-frames differ least, in the area where colours differ, from every other candidate's. Why:
a planner's worst errors are single key-frames that show the wrong thing (for the shipped mini: the wrong block
lifted, a block put in another zone; README, Evaluation). Such errors vary from draw to draw while a right key-frame
recurs, so the medoid is right more often than any one draw. Model-agnostic: it reads only the key-frame images
the service returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .types import Plan, Subgoal

THUMB = 32  # key-frames are compared at 32 x 32 pixels
TAU = 0.1  # a colour difference that counts (of 1.0, in any channel)


def _thumb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((THUMB, THUMB), Image.BOX), dtype=np.float32) / 255.0


def keyframe_distance(a: Subgoal, b: Subgoal) -> float:
    """Share of the area where two key-frames differ in colour: both shrunk to THUMB x THUMB pixels by area
    averaging, a pixel counts when a channel differs by more than TAU. 1.0 when either has no image. Why not a
    plain pixel difference: two draws of the same scene differ in many visual tokens that decode to slightly other
    texture everywhere, which averaging removes; a block or the arm somewhere else changes whole patches of colour,
    which it keeps."""
    if a.image is None or b.image is None:
        return 1.0
    return float((np.abs(_thumb(a.image) - _thumb(b.image)).max(-1) > TAU).mean())


def plan_distance(a: Plan, b: Plan) -> float:
    """Mean key-frame distance over the longer plan's subgoals, a subgoal the other plan lacks counting 1.0."""
    n = max(len(a.subgoals), len(b.subgoals))
    if n == 0:
        return 0.0
    pairs = zip(a.subgoals, b.subgoals)
    return (sum(keyframe_distance(x, y) for x, y in pairs) + abs(len(a.subgoals) - len(b.subgoals))) / n


def distance_matrix(plans: Sequence[Plan]) -> np.ndarray:
    """[n, n] symmetric plan distances, zero diagonal."""
    n = len(plans)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            d[i, j] = d[j, i] = plan_distance(plans[i], plans[j])
    return d


def _medoid(plans: Sequence[Plan], d: np.ndarray, admissible: Callable[[Plan], bool] | None = None) -> int:
    total = d.sum(1)
    total[[not p.subgoals for p in plans]] = np.inf
    if admissible is not None:  # every plan stays evidence; only admissible ones may be kept, when there are any
        kept = total.copy()
        kept[[not admissible(p) for p in plans]] = np.inf
        total = kept if np.isfinite(kept).any() else total
    return int(np.argmin(total)) if np.isfinite(total).any() else 0


def medoid(plans: Sequence[Plan]) -> int:
    """Index of the plan with the least total distance to the others; ties go to the lowest index (so a greedy
    candidate listed first wins them). Plans without subgoals are never chosen unless all are empty."""
    return consensus(plans).chosen


@dataclass
class Consensus:
    """The candidates of one scene, their distances and the medoid kept."""

    candidates: list[Plan]
    distances: np.ndarray  # [n, n], `distance_matrix`
    chosen: int  # index of the medoid

    @property
    def plan(self) -> Plan:
        return self.candidates[self.chosen]

    def summary(self) -> dict:
        """What a record keeps of it: the choice, the distances and every candidate's generated tokens."""
        return {
            "chosen": self.chosen,
            "distances": self.distances.round(4).tolist(),
            "tokens": [p.usage.generated_tokens for p in self.candidates],
        }


def consensus(plans: Sequence[Plan], admissible: Callable[[Plan], bool] | None = None) -> Consensus:
    """The distances of `plans` (computed once) and their medoid (`medoid`). `admissible`: a test a kept plan must
    pass (e.g. its subgoal texts parse in the caller's grammar); every plan still counts as evidence, and when none
    passes the medoid of all is kept."""
    if not plans:
        raise ValueError("medoid: no plans")
    d = distance_matrix(plans)
    return Consensus(list(plans), d, _medoid(plans, d, admissible))
