"""Evaluation metrics and the JSONL store on their own: known values, properties, real rendered frames."""

import json

import gymnasium as gym
import numpy as np
import pytest

import sim_envs  # noqa: F401
from evaluation.metrics import bootstrap_mean, placement_agreement, psnr, ssim, wilson
from evaluation.runner import RecordWriter, read_records


def test_wilson_known_values():
    lo, hi = wilson(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)  # textbook value for 0/10
    lo, hi = wilson(10, 10)
    assert hi == 1 and lo == pytest.approx(0.7225, abs=1e-4)
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_bootstrap_mean_brackets_the_mean_and_reproduces():
    v = np.random.default_rng(0).normal(3.0, 1.0, 200)
    m, lo, hi = bootstrap_mean(v)
    assert m == pytest.approx(v.mean()) and lo < m < hi and hi - lo < 0.5
    assert bootstrap_mean(v) == (m, lo, hi)
    assert bootstrap_mean([2.0]) == (2.0, 2.0, 2.0) and np.isnan(bootstrap_mean([None])[0])


def test_psnr_and_ssim_properties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    flat = np.full_like(a, 128)
    assert psnr(flat, flat + 16) == pytest.approx(10 * np.log10(255**2 / 256))
    noise = rng.integers(0, 256, a.shape, dtype=np.uint8)
    assert ssim(a, b) == pytest.approx(ssim(b, a)) and ssim(a, noise) < 0.1 < ssim(a, b) < 1.0
    blurred = np.clip(a.astype(int) // 2 + 64, 0, 255).astype(np.uint8)  # contrast halved: structure kept
    assert ssim(a, blurred) > ssim(a, noise)


def test_placement_agreement_on_rendered_frames():
    env = gym.make("sim_envs/Stack-mujoco-v0", image_size=64, image_obs=False)
    env.reset(seed=3)
    u = env.unwrapped
    before = u.render_camera("front")
    colours = [b.colour for b in u.task.scene.blocks]
    cam = u.camera_model("front", 64, 64)
    assert placement_agreement(before, before, cam, colours) == (len(colours), len(colours))
    from sim_envs.experts import expert_actions

    for a in expert_actions(env):
        env.step(a)
    after = u.render_camera("front")
    agree, total = placement_agreement(before, after, cam, colours)
    assert total == len(colours) and agree == total - 1  # only the stacked block moved
    moved = [
        c
        for c in colours
        if placement_agreement(before, after, cam, colours, skip=[x for x in colours if x != c])[0] == 0
    ]
    assert placement_agreement(before, after, cam, colours, skip=moved) == (total - 1, total - 1)
    env.close()


def test_record_writer_repairs_a_torn_line(tmp_path):
    p = tmp_path / "episodes.jsonl"
    w = RecordWriter(p)
    w.append({"key": "a"})
    w.close()
    with open(p, "a") as f:
        f.write('{"key": "tor')  # a kill in the middle of a write
    assert [r["key"] for r in read_records(p)] == ["a"]
    w = RecordWriter(p)
    w.append({"key": "b"})
    w.close()
    assert [json.loads(line)["key"] for line in p.read_text().splitlines()] == ["a", "b"]


def test_follows_text_compares_the_executor_s_skill_with_the_subgoal_text():
    from evaluation.metrics import follows_text
    from sim_envs.scene import BlockSpec, SceneSpec, ZoneSpec
    from sim_envs.tasks import SkillCall

    blocks = tuple(BlockSpec(f"{c} block", c, (0.1 * i, 0.0), 0.0) for i, c in enumerate(("red", "green")))
    scene = SceneSpec(blocks, (ZoneSpec("blue zone", "blue", (0.2, 0.2), 0.06),))
    assert follows_text("pick up the red block", SkillCall("pick", "red block"), scene) is True
    assert follows_text("pick up the red block", SkillCall("pick", "green block"), scene) is False
    assert follows_text("pick up the red block", None, scene) is False  # the executor could not ground it
    on = "place the red block on the green block"
    assert follows_text(on, SkillCall("place_on", "red block", "green block"), scene) is True
    assert follows_text(on, SkillCall("place_at", "red block", "0.100,0.000"), scene) is False
    zone = "place the red block in the blue zone"
    assert follows_text(zone, SkillCall("place_at", "red block", "0.230,0.170"), scene) is True
    assert follows_text(zone, SkillCall("place_at", "red block", "0.300,0.200"), scene) is False  # outside
    assert follows_text(zone, SkillCall("place_on", "red block", "green block"), scene) is False
    assert follows_text(zone, SkillCall("place_at", "green block", "0.200,0.200"), scene) is False  # other block
    assert follows_text("do a little dance", SkillCall("pick", "red block"), scene) is None
