"""Scripted experts solve every task family on both engines (20 seeds each, no rendering)."""

from __future__ import annotations

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
