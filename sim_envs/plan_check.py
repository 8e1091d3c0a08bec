"""Does a plan's text reach the episode's goal? A symbolic check, order-free where the task is.

Comparing a plan's texts with the expert's, word for word and in order, counts a plan that clears the table in
another block order as wrong, though the simulator would count it a success. Here the plan runs on a symbolic world
instead: blocks on the table, in zones, on other blocks, or held.
Each subgoal must parse (`sim_envs.tasks.parse_subgoal`) and be possible where it comes: pick only with an empty
gripper and a block with nothing on it, place only the held block, and only on a block with nothing on it. After
the last subgoal the gripper must be empty and every goal placement must hold. The goal is the expert plan's
placements: an expert plan is built from exactly the pairs its goal checks (`tasks._pick_place`, `tasks._goal`).
So a tower built in the wrong order fails (its middle block is not free to pick), and any block order that clears a
table passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .tasks import SkillCall, parse_subgoal


@dataclass(frozen=True)
class PlanCheck:
    valid: bool  # every subgoal parses and is possible where it comes
    reaches_goal: bool  # valid, and the goal holds at the end with an empty gripper
    reason: str  # why not, or "ok"


def goal_of(expert_subgoals: list[str]) -> list[SkillCall]:
    """The goal placements of an episode: the place subgoals of its expert plan."""
    calls = [parse_subgoal(s) for s in expert_subgoals]
    if any(c is None for c in calls):
        raise ValueError(f"an expert subgoal outside the grammar: {expert_subgoals}")
    return [c for c in calls if c.skill != "pick"]


def check_plan(subgoals: list[str], expert_subgoals: list[str]) -> PlanCheck:
    """Run `subgoals` on a world whose blocks all start on the table, free; check the expert plan's goal at the end."""
    where: dict[str, str] = {}  # block -> "held", "zone:<name>" or "on:<block>" (absent: on the table)
    held: str | None = None

    def free(block: str) -> bool:
        return f"on:{block}" not in where.values()

    for i, text in enumerate(subgoals):
        call = parse_subgoal(text)
        if call is None:
            return PlanCheck(False, False, f"subgoal {i} does not parse: {text!r}")
        if call.skill == "pick":
            if held is not None:
                return PlanCheck(False, False, f"subgoal {i} picks the {call.obj} while holding the {held}")
            if not free(call.obj):
                return PlanCheck(False, False, f"subgoal {i} picks the {call.obj}, which has a block on it")
            held, where[call.obj] = call.obj, "held"
            continue
        if held != call.obj:
            return PlanCheck(False, False, f"subgoal {i} places the {call.obj}, not held (holding: {held})")
        if call.skill == "place_on":
            if call.target == call.obj or not free(call.target):  # the held block is call.obj: no other is held
                return PlanCheck(False, False, f"subgoal {i} places the {call.obj} on the {call.target}, not free")
            where[call.obj] = f"on:{call.target}"
        else:
            where[call.obj] = f"zone:{call.target}"
        held = None
    if held is not None:
        return PlanCheck(True, False, f"ends holding the {held}")
    for g in goal_of(expert_subgoals):
        want = f"on:{g.target}" if g.skill == "place_on" else f"zone:{g.target}"
        if where.get(g.obj) != want:
            return PlanCheck(True, False, f"the {g.obj} ends {where.get(g.obj, 'on the table')}, not {want}")
    return PlanCheck(True, True, "ok")
