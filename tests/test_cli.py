"""The command line, run as a user runs it (a real subprocess)."""

import json
import os
import subprocess
import sys

import pytest

from model import Emu35


def run(*args):
    return subprocess.run([sys.executable, "-m", "emu35_robot", *args], capture_output=True, text=True, timeout=300)


def test_model_info(bundle):
    r = run("model", "info", str(bundle.model), "--device", "cuda:0", "--device-memory-gib", "80")
    assert r.returncode == 0, r.stderr
    n = sum(p.numel() for p in Emu35.from_pretrained(bundle.model).parameters())
    assert f"parameters     {n:,}" in r.stdout
    shards = len(list(bundle.model.glob("model-*-of-*.safetensors")))
    assert shards > 1 and f"in {shards} file(s)" in r.stdout
    assert "cuda:0: 80.00 GiB -> fits" in r.stdout


def test_model_info_bad_path_is_a_clear_error(tmp_path):
    r = run("model", "info", str(tmp_path))
    assert r.returncode == 2 and "no config.json" in r.stderr


def test_demo_round_trip(tmp_path):
    r = run("demo", "--checkpoint", "random", "--out", str(tmp_path), "--new-tokens", "8")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["cached_equals_full"] and summary["prompt_image_parsed_back"]
    assert len(summary["generated_ids"]) == 8
    assert (tmp_path / "scene.png").is_file() and (tmp_path / "scene_reconstruction.png").is_file()


def test_demo_episode_with_a_given_checkpoint(bundle, tmp_path):
    """The trained-model demo path (service on loopback, gRPC plan, MuJoCo, key-frame executor), on the tiny random
    bundle: its plans are noise, so only the outputs' presence and structure are checked here."""
    r = run(
        "demo", "--checkpoint", str(bundle.root), "--out", str(tmp_path), "--task", "PlaceInZone", "--candidates", "1"
    )
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "demo.json").read_text())
    assert s["task"] == "PlaceInZone" and s["engine"] == "mujoco" and s["seed"] == 10000
    assert s["candidates"] == 1 and s["check_keyframes"] is False  # one plan: nothing to check it against
    assert s["instruction"] and isinstance(s["success"], bool) and s["plans"]
    assert s["video"] and (tmp_path / s["video"]).is_file(), s.get("video_error")
    assert (tmp_path / "plan_strip.png").is_file()
    assert "[3/3]" in r.stdout


def test_demo_with_checked_keyframes(bundle, tmp_path):
    """The demo's default on the tiny random bundle: five plans in one request, the consensus kept and its key-frames
    checked; demo.json says so and counts the swaps. A check with one plan to check against is refused."""
    r = run("demo", "--checkpoint", str(bundle.root), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "demo.json").read_text())
    assert s["candidates"] == 5 and s["check_keyframes"] is True and isinstance(s["keyframe_swaps"], int)
    assert 1 <= len(s["plans"]) <= 4  # the first plan and at most three re-plans
    assert "5 plans at once, key-frames checked" in r.stdout and (tmp_path / "plan_strip.png").is_file()
    x = tmp_path / "x"
    r = run("demo", "--checkpoint", str(bundle.root), "--out", str(x), "--candidates", "1", "--check-keyframes")
    assert r.returncode != 0 and "--candidates 2 or more" in r.stderr


@pytest.mark.parametrize("given,want", [(None, "false"), ("1", "1")])
def test_importing_the_sdk_turns_grpc_fork_support_off_unless_set(given, want):
    """grpc/grpc#43055: with fork support on, a subprocess started while channels are active (the video writer's
    ffmpeg) can die between fork and exec; the demo lost its video that way in 3 of 24 loaded runs."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    if given is not None:
        env["GRPC_ENABLE_FORK_SUPPORT"] = given
    code = "import evaluation, os; print(os.environ['GRPC_ENABLE_FORK_SUPPORT'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == want


def test_serve_offers_every_tensor_parallel_sum_the_engine_knows():
    """`serve --tp-all-reduce` lists its choices by hand (the CLI imports no torch to parse arguments): they must be
    model.tp_engine's, in the same order."""
    from emu35_robot.cli import build_parser
    from model.tp_engine import ALL_REDUCE

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    action = next(a for a in serve._actions if a.dest == "tp_all_reduce")
    assert tuple(action.choices) == ALL_REDUCE and action.default == "auto"
