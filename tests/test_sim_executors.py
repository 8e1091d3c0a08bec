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
from sim_envs.keyframe_vision import (  # noqa: E402
    VISIBLE_DZ,
    backproject,
    block_width_px,
    detect_blocks,
    find_blobs,
    image_distance,
    project,
)
from sim_envs.recorder import record_expert_episode  # noqa: E402
from sim_envs.scene import BLOCK_HALF  # noqa: E402

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
            assert np.linalg.norm(det[name.split()[0]] - p[:2]) < 0.008  # measured: at most 5.7 mm
    img = u.render_camera("front")
    assert image_distance(img, img) == (0.0, float("inf"))
    env.close()


def test_project_inverts_backproject():
    env = gym.make("sim_envs/Stack-mujoco-v0", image_obs=False, image_size=IMAGE)
    env.reset(seed=0)
    cam = env.unwrapped.camera_model("front")
    for uv in [(10.0, 80.0), (47.5, 47.5), (90.2, 60.7)]:
        for z in (0.0, 0.07):
            np.testing.assert_allclose(project(backproject(uv, cam, z), cam)[0], uv, atol=1e-9)
    assert 4 < block_width_px([0.0, 0.0, BLOCK_HALF], cam) < 8  # a 4 cm block at 96 px
    env.close()


def _stack_keyframes(engine: str, seed: int, tmp_path):
    env = gym.make(sim_envs.env_id("Stack", engine), image_obs=False, image_size=IMAGE)
    ep = record_expert_episode(env, tmp_path / "ep", seed=seed, cameras=())
    assert ep.meta["success"]
    return env, [(k["text"], img) for k, img in ep.keyframes()]


@pytest.mark.parametrize("engine", sim_envs.ENGINES)
def test_stacked_block_appears_where_the_executor_looks(engine, tmp_path):
    """After the expert stacks a on b, a's blob is where project() puts a block on b's top."""
    env, _ = _stack_keyframes(engine, 1, tmp_path)
    u = env.unwrapped
    call = u.task.goal[0]
    top = u.world_state().positions[call.obj].copy()
    blob = find_blobs(u.render_camera("front"))[call.obj.split()[0]]
    top[2] += VISIBLE_DZ
    cam = u.camera_model("front")
    assert np.linalg.norm(project(top, cam)[0] - blob.centroid) < 0.25 * block_width_px(top, cam)
    env.close()


@pytest.mark.parametrize("shift, skill", [(0.5, "place_on"), (2.0, "place_at")])
def test_keyframe_executor_stacks_within_tolerance_of_a_block_top(shift, skill, tmp_path):
    """A key-frame that draws the stacked block half a block width off still means 'on that block' (a predicted
    key-frame is never exact); two widths off, it means the table next to it."""
    env, kfs = _stack_keyframes("mujoco", 1, tmp_path)
    env.reset(seed=1)
    u = env.unwrapped
    cam = u.camera_model("front")
    (_, pick_kf), (_, place_kf) = kfs[:2]
    assert KeyframeExecutor().execute(env, Subgoal("", pick_kf)).success
    base = u.world_state().positions[u.task.goal[0].target]
    px = int(round(shift * block_width_px(base, cam)))
    r = KeyframeExecutor().execute(env, Subgoal("", np.roll(place_kf, -px, axis=1)))  # drawn px pixels to the left
    assert r.skill is not None and r.skill.skill == skill, r.message
    env.close()


def test_keyframe_executor_never_stacks_on_a_covered_block(tmp_path):
    """In a tower only the top block is a support: a key-frame drawn between levels must not mean the middle one."""
    env = gym.make("sim_envs/Tower-mujoco-v0", image_obs=False, image_size=IMAGE)
    ep = record_expert_episode(env, tmp_path / "ep", seed=0, cameras=())
    assert ep.meta["success"]
    u = env.unwrapped
    ws = u.world_state()
    bottom, middle, top = u.task.goal[0].target, u.task.goal[0].obj, u.task.goal[1].obj
    assert KeyframeExecutor._covered(ws, bottom, held="") and KeyframeExecutor._covered(ws, middle, held="")
    assert not KeyframeExecutor._covered(ws, top, held="")
    assert not KeyframeExecutor._covered(ws, middle, held=top)  # the block being moved does not cover
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


def test_read_keyframe_says_what_execute_then_does(tmp_path):
    """read_keyframe is execute's decision without the acting: the same skill call, and the env untouched."""
    env = gym.make("sim_envs/Stack-mujoco-v0", image_obs=False, image_size=IMAGE)
    ep = record_expert_episode(env, tmp_path / "ep", seed=2, cameras=())
    env.reset(seed=2)
    ex = KeyframeExecutor()
    for k, img in ep.keyframes():
        sg = Subgoal(k["text"], img)
        before = env.unwrapped.world_state().positions
        call, how = ex.read_keyframe(env, sg)
        after = env.unwrapped.world_state().positions
        assert all(np.array_equal(before[n], after[n]) for n in before)  # nothing moved
        r = ex.execute(env, sg)
        assert r.success and call == r.skill, (k["text"], call, r.skill, how)
    assert ex.read_keyframe(env, Subgoal("x"))[0] is None
    env.close()
