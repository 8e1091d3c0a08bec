"""Every registered env passes Gymnasium's checker, is deterministic per seed, and renders headless."""

from __future__ import annotations

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")
sim_envs = pytest.importorskip("sim_envs")  # sets MUJOCO_GL before mujoco loads
pytest.importorskip("mujoco")
pytest.importorskip("pybullet")

from gymnasium.utils.env_checker import check_env  # noqa: E402

IMAGE = 64


@pytest.mark.parametrize("env_id", sim_envs.ENV_IDS)
def test_check_env(env_id):
    env = gym.make(env_id, image_size=IMAGE)
    try:
        check_env(env.unwrapped, skip_render_check=False)
    finally:
        env.close()


def test_ids_cover_families_and_engines():
    assert len(sim_envs.ENV_IDS) == len(sim_envs.FAMILIES) * 2 >= 10
    assert "sim_envs/PlaceInZone-mujoco-v0" in gym.registry


@pytest.mark.parametrize("engine", sim_envs.ENGINES)
def test_same_seed_same_first_observation(engine):
    env = gym.make(f"sim_envs/SortByColour-{engine}-v0", image_size=IMAGE)
    a, ia = env.reset(seed=123)
    env.step(env.action_space.sample())
    b, ib = env.reset(seed=123)
    c, _ = env.reset(seed=124)
    assert ia["instruction"] == ib["instruction"]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["privileged_object_poses"], c["privileged_object_poses"])
    env.close()


@pytest.mark.parametrize("engine", sim_envs.ENGINES)
def test_observation_and_info_contents(engine):
    env = gym.make(f"sim_envs/Tower-{engine}-v0", image_size=IMAGE)
    obs, info = env.reset(seed=0)
    assert obs["front"].shape == (IMAGE, IMAGE, 3) and obs["front"].dtype == np.uint8
    assert obs["wrist"].shape == (IMAGE, IMAGE, 3)
    assert obs["front"].std() > 5  # an actual picture, not a blank buffer
    assert obs["proprio"].shape == (6,)
    n = len(info["object_names"])
    assert np.abs(obs["privileged_object_poses"][:n, 2] - 0.02).max() < 1e-3  # blocks rest on the table
    assert not obs["privileged_object_poses"][n:].any()
    assert info["num_subgoals"] == 4 and info["subgoal_index"] == 0 and not info["success"]
    assert "tower" in info["instruction"]
    assert env.render().shape == (IMAGE, IMAGE, 3)
    env.close()
    fast = gym.make(f"sim_envs/Tower-{engine}-v0", image_obs=False)
    obs, _ = fast.reset(seed=0)
    assert set(obs) == {"proprio", "privileged_object_poses"}
    fast.close()


def test_action_moves_end_effector():
    env = gym.make("sim_envs/Stack-mujoco-v0", image_obs=False)
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        env.step(np.array([1, 0, 0, 0, 1], dtype=np.float32))
    for _ in range(3):  # the welded hand trails the commanded pose by a control step or so
        obs2, *_ = env.step(np.array([0, 0, 0, 0, 1], dtype=np.float32))
    assert obs2["proprio"][0] - obs["proprio"][0] == pytest.approx(3 * 0.04, abs=5e-3)
    env.close()


def test_instruction_templates_vary():
    env = gym.make("sim_envs/PlaceInZone-mujoco-v0", image_obs=False)
    texts = {env.reset(seed=s)[1]["instruction"].split(" the ")[0] for s in range(30)}
    assert len(texts) >= 3
    env.close()


@pytest.mark.parametrize("engine", sim_envs.ENGINES)
def test_orbit_camera_renders_any_view_and_narration_names_what_it_sees(engine):
    from sim_envs.explore import START, ExploreView, apply_command, narrate, visible_objects
    from sim_envs.scene import CAMERAS, orbit_camera

    env = gym.make(sim_envs.env_id("PlaceInZone", engine), image_size=IMAGE, image_obs=False)
    env.reset(seed=3)
    u = env.unwrapped
    front = CAMERAS["front"]
    d = np.subtract(front.eye, front.target)
    same = orbit_camera(0.0, np.degrees(np.arctan2(d[2], d[0])), float(np.linalg.norm(d)))
    assert np.abs(u.render_camera(same).astype(int) - u.render_camera("front")).mean() < 0.5  # the front camera
    view = ExploreView(**START)
    left = apply_command(apply_command(view, "orbit left"), "orbit left")
    assert left.azimuth == -60 and apply_command(left, "orbit left") is not None
    assert apply_command(apply_command(left, "orbit left"), "orbit left") is None  # beyond the range
    assert not np.array_equal(u.render_camera(left.camera()), u.render_camera(view.camera()))
    blocks, zones = visible_objects(env, view, IMAGE)
    assert sorted(blocks) == sorted(b.colour for b in u.task.scene.blocks)
    text = narrate(env, view, IMAGE)
    assert text.startswith("From the front:") and all(c in text for c in blocks + zones)
    with pytest.raises(ValueError, match="unknown explore command"):
        apply_command(view, "fly")
    env.close()
