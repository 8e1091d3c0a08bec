"""The shipped Emu3.5-mini: official-layout files within the size budget, loaded the way `serve` loads it, planning
a held-out scene over gRPC, and a plan the key-frame executor (which never reads the text) carries out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from emu35_robot.mini import IMAGE_SIZE, MINI_BUNDLE, mini_available
from model import Emu35Config

pytest.importorskip("sim_envs")
pytestmark = pytest.mark.skipif(not mini_available(), reason="Emu3.5-mini is not shipped yet (issue 7)")

# A held-out scene (training used seeds < 10000) whose plan the mini model gets right; see MODEL_CARD.md for rates.
TASK, ENGINE, SEED = "PlaceInZone", "mujoco", 10000


def test_bundle_is_in_the_official_layouts_and_within_budget():
    files = {p.relative_to(MINI_BUNDLE).as_posix(): p.stat().st_size for p in MINI_BUNDLE.rglob("*") if p.is_file()}
    for name in (
        "model/config.json",
        "model/model.safetensors",
        "tokenizer/emu3.tiktoken",
        "tokenizer/emu3_vision_tokens.txt",
        "vision_tokenizer/config.yaml",
        "vision_tokenizer/model.ckpt",
        "MODEL_CARD.md",
    ):
        assert name in files, name
    assert sum(files.values()) <= 40 * 2**20
    cfg = Emu35Config.from_dict(json.loads((MINI_BUNDLE / "model/config.json").read_text()))
    vq = yaml.safe_load((MINI_BUNDLE / "vision_tokenizer/config.yaml").read_text())
    assert cfg.image_area == IMAGE_SIZE**2 and cfg.num_visual_tokens == vq["n_embed"]


@pytest.fixture(scope="module")
def server():
    from emu35_robot.server import PlannerServer

    s = PlannerServer.loopback(None)  # None: the default model
    yield s
    s.stop(0)


def test_default_model_is_the_mini(server):
    info = server.runtime.model
    assert info.name == "emu35-mini" and not info.random_weights and info.parameters > 10_000_000


def test_plan_for_a_held_out_seed_has_the_right_structure_and_succeeds(server, tmp_path):
    from evaluation.episode import EpisodeSpec, EvalConfig, run_episode
    from evaluation.planners import GrpcOptions, GrpcPlanner, RecordingPlanner
    from sim_envs.tasks import parse_subgoal

    planner = RecordingPlanner(GrpcPlanner(server.address, GrpcOptions(timeout_s=300)))
    cfg = EvalConfig(executor="keyframe", replans=1, image_size=IMAGE_SIZE, video=False)
    record = run_episode(EpisodeSpec(TASK, ENGINE, "mini", SEED), cfg, planner, tmp_path)
    plan = planner.calls[0][1]
    assert not plan.error and len(plan.subgoals) == len(record["canonical_subgoals"])
    for sg in plan.subgoals:
        assert parse_subgoal(sg.text) is not None, sg.text  # the subgoal grammar the suite uses
        assert sg.keyframe is not None and sg.keyframe.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        assert sg.keyframe.dtype == np.uint8 and sg.keyframe.std() > 5  # an image, not a blank
    assert [sg.text for sg in plan.subgoals] == record["canonical_subgoals"]
    assert record["success"], record["subgoals"]
    assert record["placement_agreement"] >= 0.5


def test_eval_planner_mini_serves_the_shipped_model_itself(tmp_path):
    from emu35_robot.cli import main as cli_main

    out = tmp_path / "eval"
    args = ["eval", "--planner", "mini", "--tasks", TASK, "--engines", ENGINE, "--episodes", "1", "--seed", str(SEED),
            "--image-size", str(IMAGE_SIZE), "--no-video", "--no-progress", "--out", str(out)]  # fmt: skip
    assert cli_main(args) == 0
    (r,) = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
    assert r["planner"] == "mini" and not r.get("error") and r["plans"] and r["tokens_generated"] > 0
    assert json.loads((out / "report.json").read_text())["overall"][0]["planner"] == "mini"


def test_eval_mini_device_serves_one_model_that_every_worker_asks(tmp_path):
    """`eval --mini-device cpu --workers 2`: the driver serves the mini once (runner.shared_mini) and both worker
    processes plan through it; the records still name the planner `mini`, and the run's config says where it ran."""
    from emu35_robot.cli import main as cli_main

    out = tmp_path / "eval"
    args = ["eval", "--planner", "mini", "--tasks", TASK, "--engines", ENGINE, "--episodes", "2", "--seed", str(SEED),
            "--image-size", str(IMAGE_SIZE), "--no-video", "--no-progress", "--out", str(out), "--workers", "2",
            "--mini-device", "cpu", "--max-subgoals", "1", "--replans", "0"]  # fmt: skip
    assert cli_main(args) == 0
    records = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
    assert sorted(r["seed"] for r in records) == [SEED, SEED + 1]
    for r in records:
        assert r["planner"] == "mini" and not r.get("error") and not r["planner_errors"], r
        assert len(r["plans"]) == 1 and r["tokens_generated"] > 0 and len(r["plans"][0]["texts"]) == 1
    assert json.loads((out / "config.json").read_text())["mini_device"] == "cpu"
