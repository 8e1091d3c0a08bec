"""Recording round-trips, and an interrupted recording keeps its finished steps."""

from __future__ import annotations

import json

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")
sim_envs = pytest.importorskip("sim_envs")  # sets MUJOCO_GL before mujoco loads
pytest.importorskip("mujoco")

from sim_envs.recorder import EpisodeWriter, read_episode, record_expert_episode  # noqa: E402


def test_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    frames = [{"front": rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)} for _ in range(4)]
    actions = rng.uniform(-1, 1, (4, 5)).astype(np.float32)
    with EpisodeWriter(tmp_path / "ep", {"instruction": "stack it"}) as w:
        for t in range(4):
            w.add_step(frames[t], actions[t], np.arange(6), 0.0, {"subgoal_index": t // 2})
            if t == 1:
                w.add_keyframe(0, frames[t]["front"], "pick up the red block")
    ep = read_episode(tmp_path / "ep")
    assert ep.meta["status"] == "complete" and ep.meta["num_steps"] == 4 and ep.meta["instruction"] == "stack it"
    np.testing.assert_allclose(ep.actions, actions, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(ep.frames("front"), np.stack([f["front"] for f in frames]))
    ((k, img),) = ep.keyframes()
    assert k["index"] == 0 and k["step"] == 2 and k["text"] == "pick up the red block"
    np.testing.assert_array_equal(img, frames[1]["front"])
    assert [s["subgoal_index"] for s in ep.steps] == [0, 0, 1, 1]


def test_interrupted_recording_keeps_finished_steps(tmp_path):
    img = np.full((8, 8, 3), 7, np.uint8)
    w = EpisodeWriter(tmp_path / "ep", {"instruction": "x"})
    for _ in range(3):
        w.add_step({"front": img}, np.zeros(5), np.zeros(6), 0.0, {})
    # simulate a crash mid-step: a torn JSON line, never closed
    w._steps.write('{"t": 3, "action": [0.1')
    w._steps.flush()
    ep = read_episode(tmp_path / "ep")
    assert ep.meta["status"] == "recording"
    assert [s["t"] for s in ep.steps] == [0, 1, 2]
    assert ep.frames("front").shape == (3, 8, 8, 3)


def test_record_expert_episode(tmp_path):
    env = gym.make("sim_envs/Stack-mujoco-v0", image_size=48, image_obs=False)
    ep = record_expert_episode(env, tmp_path / "ep", seed=3, cameras=("front", "wrist"))
    env.close()
    meta = json.loads((tmp_path / "ep" / "meta.json").read_text())
    assert meta["success"] and meta["num_steps"] == len(ep.steps) > 10
    assert meta["subgoals"] == ["pick up " + meta["subgoals"][0][8:], meta["subgoals"][1]]
    assert ep.frames("wrist").shape == (len(ep.steps), 48, 48, 3)
    assert ep.frame("front", "final").shape == (48, 48, 3)
    keys = ep.keyframes()
    assert [k["index"] for k, _ in keys] == [0, 1]
    assert [k["text"] for k, _ in keys] == meta["subgoals"]
    # the key-frame of the last subgoal is the last recorded observation
    np.testing.assert_array_equal(keys[-1][1], ep.frame("front", "final"))
