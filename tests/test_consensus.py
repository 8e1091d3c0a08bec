"""Consensus selection over plans (emu35_robot.consensus): distances and the medoid on hand-made plans."""

import numpy as np
import pytest
from PIL import Image

from emu35_robot.consensus import THUMB, consensus, distance_matrix, keyframe_distance, medoid, plan_distance
from emu35_robot.types import Plan, Subgoal, Usage


def frame(block_xy=None, size=128):
    """A grey table with one red 8x8 block at block_xy (pixels), or none."""
    a = np.full((size, size, 3), 128, np.uint8)
    if block_xy is not None:
        x, y = block_xy
        a[y : y + 8, x : x + 8] = (220, 30, 30)
    return Image.fromarray(a)


def plan(*frames):
    sgs = [Subgoal(i, f"step {i}", image=f) for i, f in enumerate(frames)]
    return Plan("go", sgs, "", "", Usage("eos", 1, 1, 0, False, {}))


def test_keyframe_distance_sees_a_moved_block_and_not_texture():
    a, b = frame((8, 8)), frame((40, 40))
    assert keyframe_distance(Subgoal(0, "", image=a), Subgoal(0, "", image=a)) == 0
    moved = keyframe_distance(Subgoal(0, "", image=a), Subgoal(0, "", image=b))
    noisy = np.asarray(a).astype(int) + np.random.default_rng(0).integers(-20, 21, (128, 128, 3))  # zero-mean texture
    noisy = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
    textured = keyframe_distance(Subgoal(0, "", image=a), Subgoal(0, "", image=noisy))
    assert moved > 0.005 and textured == 0
    assert keyframe_distance(Subgoal(0, "", image=a), Subgoal(0, "")) == 1.0  # no key-frame
    assert THUMB == 32


def test_plan_distance_counts_missing_subgoals_as_whole_differences():
    p = plan(frame((8, 8)), frame((20, 20)))
    assert plan_distance(p, p) == 0
    assert plan_distance(p, plan(frame((8, 8)))) == pytest.approx(0.5)
    assert plan_distance(plan(), plan()) == 0


def test_medoid_is_the_majority_and_ties_go_to_the_first():
    right, wrong = frame((8, 8)), frame((44, 40))
    plans = [plan(wrong), plan(right), plan(right), plan(frame((9, 8)))]
    assert medoid(plans) in (1, 2) and medoid(plans) == 1
    assert medoid([plan(right), plan(right)]) == 0
    assert medoid([plan(), plan(right), plan(wrong)]) in (1, 2)  # an empty plan is never chosen over a real one
    assert medoid([plan(), plan()]) == 0
    d = distance_matrix(plans)
    assert d.shape == (4, 4) and np.allclose(d, d.T)
    with pytest.raises(ValueError):
        medoid([])


def test_an_admissible_plan_is_kept_over_a_medoid_that_is_not():
    """consensus(plans, admissible): the medoid of all plans unless it fails the test; then the best plan that passes
    (every plan still counts as evidence); the medoid of all when none passes. The eval's test: texts that parse."""
    from evaluation.planners import in_grammar

    right, wrong = frame((8, 8)), frame((44, 40))
    plans = [plan(wrong), plan(right), plan(right), plan(frame((9, 8)))]
    plans[1].subgoals[0].text = "placyan the red block in the tray"  # garbled, as sampled texts now and then are
    for p in plans[2:]:
        p.subgoals[0].text = "pick up the red block"
    plans[0].subgoals[0].text = "pick up the red block"
    assert consensus(plans).chosen == 1
    assert consensus(plans, in_grammar).chosen == 2
    assert consensus(plans, lambda p: False).chosen == 1  # none passes: the medoid of all
    assert not in_grammar(plans[1]) and in_grammar(plans[2])
