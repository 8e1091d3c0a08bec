"""Scripted experts solve every task family on both engines (20 seeds each, no rendering)."""

from __future__ import annotations

import math

import pytest

gym = pytest.importorskip("gymnasium")
sim_envs = pytest.importorskip("sim_envs")  # sets MUJOCO_GL before mujoco loads
pytest.importorskip("mujoco")
pytest.importorskip("pybullet")

from sim_envs.experts import run_expert  # noqa: E402

SEEDS = range(20)


@pytest.mark.parametrize("engine", sim_envs.ENGINES)
@pytest.mark.parametrize("family", list(sim_envs.FAMILIES))
def test_expert_solves_family(family, engine):
    env = gym.make(sim_envs.env_id(family, engine), image_obs=False)
    results = [run_expert(env, seed=s) for s in SEEDS]
    env.close()
    solved = sum(ok for ok, _, _ in results)
    assert solved >= 0.95 * len(SEEDS), [
        (s, info["subgoal_index"]) for s, (ok, _, info) in zip(SEEDS, results) if not ok
    ]
    for ok, _, info in results:
        if ok:  # success implies every canonical subgoal was reached, in order
            assert info["subgoal_index"] == info["num_subgoals"]


@pytest.mark.parametrize("family", ["PlaceInZone", "Stack", "Tower", "SortByColour"])
def test_a_retargeted_goal_keeps_the_scene_and_the_expert_solves_it(family):
    """reset(options={"retarget": k}): the seed's scene with its k-th other goal (the same first view, another
    instruction or order), for recording the contrasts a planner needs to read which object and target the words
    name."""
    env = gym.make(sim_envs.env_id(family, "mujoco"), image_obs=False)
    _, own = env.reset(seed=5)
    scene = env.unwrapped.task.scene
    seen = {tuple(own["subgoals"])}
    for k in (1, 2) if family != "Stack" else (1,):
        ok, _, info = run_expert(env, seed=5, options={"retarget": k})
        assert env.unwrapped.task.scene == scene and ok
        assert tuple(info["subgoals"]) not in seen  # a new goal each time
        seen.add(tuple(info["subgoals"]))
    with pytest.raises(ValueError, match="no goal 99"):
        env.reset(seed=5, options={"retarget": 99})
    env.close()


def test_order_free_families_retarget_to_other_orders_with_another_first_pick():
    """ClearTable and SortByColour fix the goal but not the order: their other goals are the same instruction with the
    blocks taken in another order, another block first while there is one."""
    from sim_envs.tasks import FAMILIES

    for name in ("ClearTable", "SortByColour"):
        env = gym.make(sim_envs.env_id(name, "mujoco"), image_obs=False)
        _, own = env.reset(seed=5)
        task = env.unwrapped.task
        n = len(task.goal)
        others = [FAMILIES[name].retarget(task, k) for k in range(1, 7)]
        orders = [o for o in others if o is not None]
        assert len(orders) == math.factorial(n) - 1  # every other order once
        assert all(o.instruction == task.instruction and set(o.goal) == set(task.goal) for o in orders)
        firsts = [o.subgoals[0] for o in orders[: n - 1]]
        assert len(set(firsts)) == n - 1 and task.subgoals[0] not in firsts  # each other block first, in turn
        ok, _, info = run_expert(env, seed=5, options={"retarget": 1})
        assert ok and info["subgoals"][0] == firsts[0]
        env.close()
