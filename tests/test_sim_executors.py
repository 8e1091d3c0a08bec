"""Plan executors complete oracle plans: language from canonical subgoal texts, key-frame from the TRUE
key-frames the expert recorded (the key-frame executor never sees the text or a privileged target)."""

from __future__ import annotations

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")
sim_envs = pytest.importorskip("sim_envs")  # sets MUJOCO_GL before mujoco loads
pytest.importorskip("mujoco")
pytest.importorskip("pybullet")
pytest.importorskip("cv2")

from sim_envs.executors import KeyframeExecutor, LanguageExecutor, Subgoal, run_plan  # noqa: E402
from sim_envs.keyframe_vision import detect_blocks, image_distance  # noqa: E402
from sim_envs.recorder import record_expert_episode  # noqa: E402

IMAGE = 96
FAMILIES = list(sim_envs.FAMILIES)


def _solved(env) -> bool:
    u = env.unwrapped
    return u.task.success(u.world_state())


@pytest.mark.parametrize("engine", sim_envs.ENGINES)
@pytest.mark.parametrize("family", FAMILIES)
def test_language_executor_completes_canonical_plan(family, engine):
    env = gym.make(sim_envs.env_id(family, engine), image_obs=False)
    for seed in range(3):
        _, info = env.reset(seed=seed)
        results = run_plan(env, LanguageExecutor(), [Subgoal(t) for t in info["subgoals"]])
        assert [r.success for r in results] == [True] * len(info["subgoals"]), [r.message for r in results]
        assert _solved(env)
    env.close()


def test_language_executor_reports_ungroundable_text():
    env = gym.make("sim_envs/Stack-mujoco-v0", image_obs=False)
    env.reset(seed=0)
    r = LanguageExecutor().execute(env, Subgoal("juggle the red block"))
    assert not r.success and not r.grounded and "cannot ground" in r.message and r.steps == 0
    r = LanguageExecutor().execute(env, Subgoal("pick up the purple block"))
    assert not r.grounded and "no 'purple block'" in r.message
    env.close()


@pytest.mark.parametrize("engine", sim_envs.ENGINES)
@pytest.mark.parametrize("family", FAMILIES)
def test_keyframe_executor_completes_true_keyframe_plan(family, engine, tmp_path):
    env = gym.make(sim_envs.env_id(family, engine), image_obs=False, image_size=IMAGE)
    seeds = range(4)
    completed, failures = 0, []
    for seed in seeds:
        ep = record_expert_episode(env, tmp_path / f"ep{seed}", seed=seed, cameras=())
        assert ep.meta["success"]
        # text is kept only so the result can report the subgoal's own predicate; the executor ignores it
        plan = [Subgoal(k["text"], img) for k, img in ep.keyframes()]
        env.reset(seed=seed)
        results = run_plan(env, KeyframeExecutor(), plan)
        for r in results:
            assert r.keyframe_mae is not None and r.keyframe_psnr is not None
        if [r.success for r in results] == [True] * len(plan) and _solved(env):
            completed += 1
            assert max(r.keyframe_mae for r in results) < 20  # achieved frames look like the key-frames
        else:
            failures.append((seed, [r.message for r in results]))
    env.close()
    # occlusion by the arm can hide a block in a key-frame; allow one miss in four
    assert completed >= len(seeds) - 1, failures


def test_keyframe_executor_ignores_text():
    """With a blank text, the key-frame alone must drive the robot (predicate then checked on inferred goals)."""
    env = gym.make("sim_envs/PlaceInZone-mujoco-v0", image_obs=False, image_size=IMAGE)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        ep = record_expert_episode(env, f"{d}/ep", seed=5, cameras=())
        plan = [Subgoal("", img) for _, img in ep.keyframes()]
    env.reset(seed=5)
    results = run_plan(env, KeyframeExecutor(), plan)
    assert all(r.success and r.grounded for r in results), [r.message for r in results]
    assert _solved(env)
    env.close()


@pytest.mark.parametrize("engine", sim_envs.ENGINES)
def test_vision_backprojection_matches_state(engine):
    env = gym.make(f"sim_envs/SortByColour-{engine}-v0", image_obs=False, image_size=IMAGE)
    u = env.unwrapped
    for seed in range(3):
        env.reset(seed=seed)
        det = detect_blocks(u.render_camera("front"), u.camera_model("front"))
        for name, p in u.world_state().positions.items():
            assert np.linalg.norm(det[name.split()[0]] - p[:2]) < 0.015
    img = u.render_camera("front")
    assert image_distance(img, img) == (0.0, float("inf"))
    env.close()


def test_subgoal_grammar_accepts_varied_phrasing():
    from sim_envs.tasks import SkillCall, parse_subgoal

    assert parse_subgoal("Grab the red cube.") == SkillCall("pick", "red block")
    assert parse_subgoal("put the red block into the green zone") == SkillCall("place_zone", "red block", "green zone")
    assert parse_subgoal("move the blue block to the tray") == SkillCall("place_zone", "blue block", "tray")
    assert parse_subgoal("stack the red block on top of the blue one") == SkillCall(
        "place_on", "red block", "blue block"
    )
    assert parse_subgoal("sing a song") is None


def test_package_does_not_import_torch_or_model():
    import subprocess
    import sys

    code = (
        "import sys, sim_envs, sim_envs.executors, sim_envs.recorder, sim_envs.experts, sim_envs.mujoco_env, "
        "sim_envs.pybullet_env; bad = [m for m in ('torch', 'model', 'emu35_robot') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
