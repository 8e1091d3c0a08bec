"""The probe's order-free scores: a plan's texts checked on a symbolic world, key-frames matched by subgoal text."""

import numpy as np

from emu35_robot.training.probe import moved_block_agreement
from sim_envs.plan_check import check_plan, goal_of
from sim_envs.scene import PALETTE

CLEAR = ["pick up the red block", "place the red block in the tray", "pick up the blue block",
         "place the blue block in the tray"]  # fmt: skip
TOWER = ["pick up the green block", "place the green block on the yellow block", "pick up the red block",
         "place the red block on the green block"]  # fmt: skip


def test_the_expert_plan_reaches_its_goal_and_another_order_does_where_the_task_allows():
    assert check_plan(CLEAR, CLEAR).reaches_goal and check_plan(TOWER, TOWER).reaches_goal
    assert check_plan(CLEAR[2:] + CLEAR[:2], CLEAR).reaches_goal  # any block order clears a table
    assert [g.obj for g in goal_of(TOWER)] == ["green block", "red block"]


def test_plans_that_fail_say_why():
    wrong_order = TOWER[2:] + TOWER[:2]  # red onto the green block first: the green block is then not free to pick
    r = check_plan(wrong_order, TOWER)
    assert r.valid is False and "has a block on it" in r.reason
    r = check_plan(CLEAR[:2], CLEAR)  # stops after one block
    assert r.valid and not r.reaches_goal and "blue block" in r.reason
    r = check_plan(CLEAR[:1] + CLEAR[2:], CLEAR)  # picks a second block while holding one
    assert not r.valid and "while holding" in r.reason
    r = check_plan(["place the red block in the tray"], CLEAR)
    assert not r.valid and "not held" in r.reason
    r = check_plan(["pick up the red block"], CLEAR)
    assert r.valid and not r.reaches_goal and r.reason == "ends holding the red block"
    r = check_plan(["fly to the moon"], CLEAR)
    assert not r.valid and "does not parse" in r.reason
    r = check_plan(["pick up the red block", "place the red block on the red block"], CLEAR)
    assert not r.valid and "not free" in r.reason
    wrong_target = [TOWER[0], "place the green block on the red block", *TOWER[2:]]
    assert not check_plan(wrong_target, TOWER).valid  # then the red block is not free to pick


def square(centres: dict[str, tuple[int, int]]) -> np.ndarray:
    """A 64 x 64 frame with a 6 x 6 square of each palette colour at its centre (x, y)."""
    img = np.full((64, 64, 3), 128, dtype=np.uint8)
    for colour, (x, y) in centres.items():
        img[y - 3 : y + 3, x - 3 : x + 3] = np.round(np.array(PALETTE[colour]) * 255)
    return img


def test_key_frames_are_matched_by_subgoal_text_and_scored_on_the_named_block():
    f1, f2 = square({"red": (20, 20), "blue": (40, 40)}), square({"red": (50, 10), "blue": (40, 40)})
    expert = ["pick up the red block", "place the red block in the tray"]
    assert moved_block_agreement(expert, [f1, f2], expert, [f1, f2], 2.0) == (2, 2)
    other_blue = square({"red": (50, 10), "blue": (10, 50)})  # only a block the subgoal does not name moved
    assert moved_block_agreement(expert, [f1, other_blue], expert, [f1, f2], 2.0) == (2, 2)
    red_off = square({"red": (30, 10), "blue": (40, 40)})
    assert moved_block_agreement(expert, [f1, red_off], expert, [f1, f2], 2.0) == (1, 2)
    assert moved_block_agreement(expert, [f1, None], expert, [f1, f2], 2.0) == (1, 2)  # no image
    assert moved_block_agreement(["pick up the blue block"], [f1], expert, [f1, f2], 2.0) == (0, 1)  # unmatched
