"""The evaluation harness end to end: real episodes on both engines, worker processes, a killed and resumed run,
local Ray, and one episode planned by a real gRPC server on loopback (tiny random model)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from emu35_robot.cli import main as cli_main
from evaluation.episode import EpisodeSpec, EvalConfig
from evaluation.metrics import wilson
from evaluation.runner import EPISODES_FILE, read_records, run
from sim_envs.tasks import parse_subgoal

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--image-size", "64", "--no-progress"]


def eval_cmd(out, *extra):
    return ["eval", "--tasks", "PlaceInZone", "--engines", "mujoco,pybullet", "--planner", "oracle,random",
            "--episodes", "2", "--seed", "10", "--out", str(out), *SMALL, *extra]  # fmt: skip


def test_oracle_and_random_on_both_engines_with_workers(tmp_path):
    out = tmp_path / "run"
    assert cli_main(eval_cmd(out, "--workers", "2")) == 0
    records = read_records(out / EPISODES_FILE)
    keys = [r["key"] for r in records]
    assert len(records) == 8 and len(set(keys)) == 8
    assert len({r["worker_pid"] for r in records}) == 2  # really spread over two processes

    for r in records:
        assert r["error"] is None, r.get("traceback")
        sgs = r["subgoals"]
        assert r["subgoals_completed"] == sum(s["success"] for s in sgs)
        assert r["subgoals_attempted"] == len(sgs) and r["replans"] == len(r["plans"]) - 1 <= 1
        assert r["steps"] == sum(s["steps"] for s in sgs)
        assert r["tokens_generated"] == 0 and r["plan_latency_s"] == r["plans"][0]["latency_s"]
        assert r["ssim_mean"] == pytest.approx(np.mean([s["ssim"] for s in sgs]))
        agree = sum(s["placement_agree"] for s in sgs) / sum(s["placement_total"] for s in sgs)
        assert r["placement_agreement"] == pytest.approx(agree)
        rest = sum(s["placement_rest_agree"] for s in sgs) / sum(s["placement_rest_total"] for s in sgs)
        assert r["placement_agreement_resting"] == pytest.approx(rest)
        follows = [s["follows_text"] for s in sgs if s["follows_text"] is not None]  # key-frame executor: every one
        assert len(follows) == len(sgs) and r["keyframe_follows_text"] == pytest.approx(np.mean(follows))
        if r["planner"] == "oracle":
            assert r["keyframe_follows_text"] >= 0.75  # the expert's own key-frames show what its texts say
        picks = [s for s in sgs if s["success"] and s["text"].startswith("pick up")]
        assert all(s["placement_rest_total"] == s["placement_total"] - 1 for s in picks)  # the held block is left out
        assert all(s["placement_moved"] is None for s in picks)  # a block in the air is not placed
        placed = [s["placement_moved"] for s in sgs if s["success"] and s["text"].startswith("place")]
        assert all(isinstance(m, bool) for m in placed)
        moved = [s["placement_moved"] for s in sgs if s["placement_moved"] is not None]
        assert r["placement_moved_agreement"] == (pytest.approx(np.mean(moved)) if moved else None)
        if r["planner"] == "oracle" and r["success"]:
            assert all(placed)  # the expert's key-frame shows the block where the expert put it
        if not r["success"] and sgs[-1]["success"] is False:  # stopped by a failed subgoal: re-planned if allowed
            assert r["replans"] == 1
        for p in r["plans"]:
            assert p["keyframes"] == len(p["texts"])  # every planned subgoal came with a key-frame
            if r["planner"] == "random":  # well-formed: in the grammar, pick/place pairs, 2..6 subgoals
                assert all(parse_subgoal(t) is not None for t in p["texts"])
                assert len(p["texts"]) in (2, 4, 6)
        if r["planner"] == "oracle":
            assert r["plans"][0]["texts"] == r["canonical_subgoals"]
            assert r["first_plan_reaches_goal"] and r["first_plan_check"] == "ok"  # the expert's texts do
        assert (out / r["video"]).is_file()
        frame = iio.imread(out / r["video"], index=0)
        assert frame.shape[0] % 16 == 0 and frame.shape[1] % 16 == 0  # whole codec macro blocks: never resized

    oracle = [r for r in records if r["planner"] == "oracle"]
    random = [r for r in records if r["planner"] == "random"]
    assert sum(r["success"] for r in oracle) >= 3 and sum(r["success"] for r in oracle) > sum(
        r["success"] for r in random
    )

    report = json.loads((out / "report.json").read_text())
    assert report["episodes"] == 8 and len(report["rows"]) == 4
    for row in report["rows"]:
        mine = [
            r for r in records if (r["task"], r["engine"], r["planner"]) == (row["task"], row["engine"], row["planner"])
        ]  # noqa: E501
        k = sum(r["success"] for r in mine)
        assert row["episodes"] == len(mine) == 2 and row["successes"] == k
        assert row["success_ci"] == pytest.approx(list(wilson(k, 2)))
        fields = ("subgoals_completed", "replans", "first_plan_reaches_goal", "plan_latency_s", "psnr_mean",
                  "placement_agreement")  # fmt: skip
        for field in fields:
            assert row[field]["mean"] == pytest.approx(np.mean([r[field] for r in mine]))
            assert row[field]["ci"][0] <= row[field]["mean"] <= row[field]["ci"][1]
    html = (out / "report.html").read_text()
    assert all(r["video"] in html for r in records)
    for name in ("report.md", "success_per_task.png", "latency_hist.png"):
        assert (out / name).stat().st_size > 500


def test_killed_run_resumes_without_duplicates(tmp_path):
    out = tmp_path / "run"
    # with tuple-valued options, which config.json reads back as lists: the resume must still match its settings
    cmd = [sys.executable, "-m", "emu35_robot", "eval", "--tasks", "Tower", "--engines", "mujoco", "--planner",
           "oracle", "--episodes", "8", "--workers", "1", "--no-video", "--out", str(out), *SMALL,
           "--keyframe-grid", "8x8", "--image-sampling", "0,0,1", "--text-sampling", "0,0,1"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    jsonl, t0 = out / EPISODES_FILE, time.time()
    while not (jsonl.exists() and jsonl.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() - t0 < 90, "no episode landed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = jsonl.read_text()
    landed = [json.loads(line) for line in first.splitlines()]
    assert 1 <= len(landed) < 8, "the run finished before the kill"
    with open(jsonl, "a") as f:
        f.write('{"key": "Tower|mujoco|ora')  # what a kill in the middle of a write leaves

    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    text = jsonl.read_text()
    assert text.startswith(first)  # earlier episodes kept byte for byte, not re-run
    keys = [json.loads(line)["key"] for line in text.splitlines()]  # every line parses: the torn one is gone
    assert sorted(keys) == sorted(f"Tower|mujoco|oracle|{s}" for s in range(8))
    assert json.loads((out / "report.json").read_text())["episodes"] == 8


def test_local_ray_matches_the_process_backend(tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install ray)")
    specs = [EpisodeSpec("Stack", "mujoco", "oracle", s) for s in (0, 1)]
    cfg = EvalConfig(image_size=64, video_every=6)
    ray_recs = run(specs, cfg, tmp_path / "ray", workers=2, ray_address="local", progress=False)
    local = run(specs, cfg, tmp_path / "local", workers=1, progress=False)
    assert [r.get("backend") for r in ray_recs] == ["ray", "ray"]
    assert all((tmp_path / "ray" / r["video"]).is_file() for r in ray_recs)
    by_key = {r["key"]: r for r in local}
    for r in ray_recs:  # seeded: the same episode on another backend is the same episode
        mine = by_key[r["key"]]
        for field in ("success", "steps", "psnr_mean", "placement_agreement"):
            assert r[field] == mine[field], field


@pytest.fixture(scope="module")
def grpc_server(bundle):
    from emu35_robot import Limits, PlannerServer
    from emu35_robot.servicers import ModelInfo
    from model.engine import load_engine

    engine = load_engine(bundle.model, bundle.tokenizer, bundle.vision_tokenizer, max_len=2048)
    s = PlannerServer(port=0, host="127.0.0.1", limits=Limits(), grace_s=5).start()
    s.attach(engine, ModelInfo("tiny-random", str(bundle.model), True, "float32", 0))
    yield f"127.0.0.1:{s.port}", engine.tok
    s.stop(0)


def grpc_eval(address, tok, out, *extra):
    """`eval` of one Stack episode on MuJoCo planned by the service, 3x3 key-frames forced by a BOI bias."""
    return ["eval", "--tasks", "Stack", "--engines", "mujoco", "--planner", address, "--episodes", "1",
            "--out", str(out), "--keyframe-grid", "3x3", "--max-new-tokens", "160",
            "--logit-bias", f"{tok.boi_id}=50", *extra, *SMALL]  # fmt: skip


def test_one_episode_planned_by_the_grpc_service(grpc_server, tmp_path):
    torch.set_num_threads(1)
    address, tok = grpc_server
    out = tmp_path / "grpc"
    assert cli_main(grpc_eval(address, tok, out, "--max-subgoals", "2", "--jacobi-window", "4")) == 0
    # a horizon asks the service for that many subgoals only
    assert cli_main(grpc_eval(address, tok, tmp_path / "h1", "--horizon", "1", "--replans", "2")) == 0
    (r1,) = read_records(tmp_path / "h1" / EPISODES_FILE)
    assert r1["error"] is None and len(r1["plans"]) >= 2 and all(len(p["texts"]) <= 1 for p in r1["plans"])
    (r,) = read_records(out / EPISODES_FILE)
    assert r["error"] is None and r["planner_errors"] == [], r
    assert r["planner"] == address and r["tokens_generated"] > 0
    for p in r["plans"]:
        assert p["texts"] and p["keyframes"] == len(p["texts"])  # BOI forced: every subgoal has its key-frame
        assert p["tokens"] > 0 and p["info"]["server_timings"]["total_s"] > 0
    assert 0 < r["time_to_first_subgoal_s"] <= r["plan_latency_s"]
    assert r["subgoals"] and all("ssim" in s for s in r["subgoals"])  # fidelity against the service's images
    assert (out / r["video"]).is_file() and r["video"] in (out / "report.html").read_text()


def test_consensus_candidates_through_the_grpc_service(grpc_server, tmp_path, capsys):
    """--candidates 3: each plan is the consensus of three, whose choice, distances and tokens the record keeps."""
    torch.set_num_threads(1)
    address, tok = grpc_server
    out = tmp_path / "cons"
    opts = ("--max-subgoals", "2", "--replans", "0", "--candidates", "3", "--no-video")
    assert cli_main(grpc_eval(address, tok, out, *opts, "--candidate-sampling", "1,0,1", "--check-keyframes")) == 0
    (r,) = read_records(out / EPISODES_FILE)
    assert r["error"] is None and r["planner_errors"] == [], r
    for sg in r["subgoals"]:  # every key-frame was read before it ran (a random model's texts rarely parse)
        chk = sg["keyframe_check"]
        assert chk["follows"] in (True, False, None) and 1 <= chk["read"] <= 3 and 0 <= chk["candidate"] <= 2
    assert r["keyframe_swaps"] == sum(sg["keyframe_check"]["candidate"] > 0 for sg in r["subgoals"])
    (p,) = r["plans"]
    c = p["info"]["consensus"]
    assert c["chosen"] in (0, 1, 2) and len(c["distances"]) == 3 and len(c["tokens"]) == 3
    assert p["tokens"] == sum(c["tokens"]) == r["tokens_generated"]
    assert r["time_to_first_subgoal_s"] == pytest.approx(r["plan_latency_s"], abs=0.01)  # nothing before all three
    with pytest.raises(SystemExit, match="candidate-sampling"):
        cli_main(grpc_eval(address, tok, tmp_path / "bad", *opts, "--candidate-sampling", "x"))
    with pytest.raises(SystemExit, match="2"):  # argparse: a usage error
        cli_main(grpc_eval(address, tok, tmp_path / "bad", "--candidates", "0"))
    assert "argument --candidates: want 1 or more, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--check-keyframes: needs --candidates 2 or more"):
        cli_main(grpc_eval(address, tok, tmp_path / "bad", "--check-keyframes"))
    with pytest.raises(SystemExit, match="--check-scene: refines --check-keyframes"):
        cli_main(grpc_eval(address, tok, tmp_path / "bad", *opts, "--check-scene"))
    with pytest.raises(SystemExit, match="--replan-on-check: refines --check-keyframes"):
        cli_main(grpc_eval(address, tok, tmp_path / "bad", *opts, "--replan-on-check"))
    with pytest.raises(SystemExit, match="--mini-device"):
        cli_main(grpc_eval(address, tok, tmp_path / "bad", "--mini-device", "gpu"))


def test_an_episode_whose_video_cannot_be_written_keeps_its_result(tmp_path):
    from evaluation.episode import run_episode
    from evaluation.planners import OraclePlanner

    (tmp_path / "videos").write_text("a file where the videos folder would go")
    spec = EpisodeSpec("PlaceInZone", "mujoco", "oracle", 0)
    r = run_episode(spec, EvalConfig(image_size=64, video_every=6), OraclePlanner(64), tmp_path)
    assert r["success"] and r["video"] is None and r["video_error"].startswith(("FileExistsError", "NotADirectory"))


def test_a_bad_image_or_text_sampling_is_refused_before_any_episode(tmp_path):
    for flag, bad in [("--image-sampling", "0,0,2"), ("--image-sampling", "-1,0,1"), ("--text-sampling", "greedy")]:
        cmd = [sys.executable, "-m", "emu35_robot", "eval", "--planner", "oracle", flag, bad,
               "--episodes", "1", "--out", str(tmp_path / "run")]  # fmt: skip
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and flag in r.stderr and not (tmp_path / "run").exists()


def test_saved_plans_replay_through_another_executor(tmp_path):
    """--save-plans writes every plan; --planner saved:DIR serves them again, so executors can be compared on the
    same plans without the planner: the oracle's plans replayed score as the oracle did, texts and all."""
    first, again = tmp_path / "first", tmp_path / "again"
    args = ["--tasks", "Stack", "--engines", "mujoco", "--episodes", "2", "--seed", "3", *SMALL, "--no-video"]
    assert cli_main(["eval", "--planner", "oracle", "--out", str(first), "--save-plans", *args]) == 0
    saved = first / "plans" / "oracle"
    assert sorted(p.name for p in saved.iterdir()) == [
        "sim_envs-Stack-mujoco-v0_3_a0.npz",
        "sim_envs-Stack-mujoco-v0_4_a0.npz",
    ]
    assert cli_main(["eval", "--planner", f"saved:{saved}", "--out", str(again), *args]) == 0
    a, b = read_records(first / EPISODES_FILE), read_records(again / EPISODES_FILE)
    assert [r["success"] for r in a] == [r["success"] for r in b] == [True, True]
    assert [r["plans"][0]["texts"] for r in a] == [r["plans"][0]["texts"] for r in b]
    assert [r["placement_agreement"] for r in a] == [r["placement_agreement"] for r in b]
    # a re-plan asked from another view than the one it was made from is refused, in the record
    from evaluation.planners import PlanContext, SavedPlanner, plan_file

    z = dict(np.load(saved / plan_file("sim_envs/Stack-mujoco-v0", 3, 0)))
    np.savez(saved / plan_file("sim_envs/Stack-mujoco-v0", 3, 1), **z)  # as if attempt 1 had been made from it
    ctx = PlanContext("x", z["image"], "sim_envs/Stack-mujoco-v0", 3, 1, 0, [], [])
    assert not SavedPlanner(saved).plan(ctx).error
    moved = z["image"].copy()
    moved[10, 10] ^= 1
    assert "another view" in SavedPlanner(saved).plan(PlanContext("x", moved, ctx.env_id, 3, 1, 0, [], [])).error
    # a seed no run saved is a planner error in that episode's record, not a crash
    assert cli_main(["eval", "--planner", f"saved:{saved}", "--out", str(tmp_path / "other"), *args[:4], "--episodes",
                     "1", "--seed", "9", *SMALL, "--no-video"]) == 0  # fmt: skip
    (r,) = read_records(tmp_path / "other" / EPISODES_FILE)
    assert not r["success"] and "no saved plan" in r["planner_errors"][0]
    # a directory that is not there is refused before any episode
    assert cli_main(["eval", "--planner", f"saved:{tmp_path / 'none'}", "--out", str(tmp_path / "x"), *args]) == 2
    assert not (tmp_path / "x").exists()


def test_a_receding_horizon_plans_again_after_each_subgoal(tmp_path):
    """--horizon 1: each plan runs only its first subgoal, then the next plan starts from the new view; those
    continuations are not re-plans. A run directory written before a setting existed resumes under its default."""
    out = tmp_path / "h1"
    args = ["eval", "--tasks", "Stack", "--engines", "mujoco", "--planner", "oracle", "--episodes", "1", "--seed", "3",
            "--out", str(out), "--no-video", *SMALL]  # fmt: skip
    assert cli_main([*args, "--horizon", "1"]) == 0
    (r,) = read_records(out / EPISODES_FILE)
    n = len(r["canonical_subgoals"])
    assert r["success"] and r["replans"] == 0 and r["plans_made"] == n == 2
    assert [p["after"] for p in r["plans"]] == ["start", "horizon"]
    assert [(s["plan"], s["index"]) for s in r["subgoals"]] == [(0, 0), (1, 0)]
    assert r["first_plan_reaches_goal"] is None  # a plan cut at the horizon is not judged as a whole
    assert json.loads((out / "config.json").read_text())["horizon"] == 1

    old = tmp_path / "old"
    whole = [a if a != str(out) else str(old) for a in args]
    assert cli_main(whole) == 0
    cfg = json.loads((old / "config.json").read_text())
    del cfg["horizon"], cfg["grpc"]["candidate_sampling"]  # a setting, and a gRPC option, added since
    (old / "config.json").write_text(json.dumps(cfg))
    assert cli_main([*whole, "--episodes", "2"]) == 0
    assert [r["plans_made"] for r in read_records(old / EPISODES_FILE)] == [1, 1]


class _WrongPickThenCanonical:
    """First plan: pick up a block the task does not start with, then a subgoal no executor grounds (the episode's
    first failure, with that block in hand); every later plan: the canonical subgoals."""

    name = "scripted"

    def plan(self, ctx):
        from evaluation.planners import PlanResult
        from sim_envs.executors import Subgoal

        if ctx.attempt == 0:
            texts = [f"pick up the {ctx.blocks[-1]}", "do a little dance"]
        else:
            env = gym_make(ctx.env_id)
            _, info = env.reset(seed=ctx.seed)
            env.close()
            texts = list(info["subgoals"])
        return PlanResult([Subgoal(t) for t in texts], 0.0, 0.0)


def gym_make(env_id):
    import gymnasium as gym

    return gym.make(env_id, image_size=64, image_obs=False)


@pytest.mark.parametrize("engine", ["mujoco", "pybullet"])
def test_recover_puts_a_held_block_down_before_the_replan(engine):
    """--recover: after a failed subgoal with a block in hand, the block goes down on the table before the re-plan,
    so the next plan starts with an empty gripper (and here, with the canonical plan, succeeds). Without it nothing
    is put down (the language executor's pick then drops the held block itself; the key-frame executor would try
    to place it, README: Evaluation)."""
    from evaluation.episode import run_episode

    spec = EpisodeSpec("Stack", engine, "scripted", 3)
    kw = dict(executor="language", replans=1, image_size=64, video=False)
    r = run_episode(spec, EvalConfig(recover=True, **kw), _WrongPickThenCanonical())
    first = r["plans"][0]
    assert r["subgoals"][0]["success"] and not r["subgoals"][1]["success"]  # picked, then the dance failed
    assert first["put_down"] == r["subgoals"][0]["skill"][1] and first["put_down_steps"] > 0
    assert r["success"] and r["replans"] == 1
    r = run_episode(spec, EvalConfig(recover=False, **kw), _WrongPickThenCanonical())
    assert "put_down" not in r["plans"][0]


def test_a_table_placement_onto_a_standing_block_does_not_land_free():
    """lands_free (the check's second test): a place_at key-frame whose point is where another block stands now (a
    key-frame that painted the held block over one placed before) fails it; a free point, a stacking and no reading
    pass; the held block itself does not count."""
    import gymnasium as gym

    import sim_envs
    from evaluation.episode import FREE_DISTANCE, lands_free
    from sim_envs.tasks import SkillCall

    env = gym.make(sim_envs.env_id("ClearTable", "mujoco"), image_obs=False, image_size=96)
    env.reset(seed=3)
    pos = env.unwrapped.world_state().positions
    (a, pa), (b, pb) = list(pos.items())[:2]
    at = lambda xy: SkillCall("place_at", b, f"{xy[0]:.3f},{xy[1]:.3f}")  # noqa: E731
    assert not lands_free(env, at(pa[:2]))  # b set down where a stands
    assert not lands_free(env, at(pa[:2] + [0.5 * FREE_DISTANCE, 0.0]))
    grid = [np.array([x, y]) for x in np.linspace(-0.3, 0.3, 13) for y in np.linspace(-0.3, 0.3, 13)]
    far = max(grid, key=lambda xy: min(np.linalg.norm(p[:2] - xy) for n, p in pos.items() if n != b))
    assert min(np.linalg.norm(p[:2] - far) for n, p in pos.items() if n != b) > FREE_DISTANCE
    assert lands_free(env, at(far))
    assert lands_free(env, at(pb[:2]))  # where the held block itself is: its own place
    assert lands_free(env, SkillCall("place_on", b, a)) and lands_free(env, None)
    env.close()


def test_check_keyframes_runs_another_candidates_keyframe_when_the_kept_one_shows_the_wrong_thing(tmp_path):
    """The kept plan's key-frame for "pick up X" shows another block lifted; a candidate's for the same text shows X:
    checked_keyframe runs the candidate's, and keeps the kept one when it is right."""
    import gymnasium as gym

    import sim_envs
    from evaluation.episode import checked_keyframe
    from sim_envs.executors import KeyframeExecutor, Subgoal
    from sim_envs.recorder import record_expert_episode

    env = gym.make(sim_envs.env_id("Stack", "mujoco"), image_obs=False, image_size=96)
    ep = record_expert_episode(env, tmp_path / "ep", seed=1, cameras=())
    (k0, pick_kf), (k1, _) = list(ep.keyframes())[:2]
    env.reset(seed=1)
    u = env.unwrapped
    ex, scene = KeyframeExecutor(), u.task.scene
    right = Subgoal(k0["text"], pick_kf)
    moved = ex.read_keyframe(env, right)[0].obj
    other = next(b for b in scene.block_names() if b != moved)
    wrong = Subgoal(f"pick up the {other}", pick_kf)  # the text names a block the key-frame does not lift
    sg, rec = checked_keyframe(ex, env, scene, wrong, [Subgoal(wrong.text, None), right])
    picks = f"pick {moved}"  # how the check records what a key-frame reads as
    assert sg is wrong and rec == {"follows": False, "candidate": 0, "read": 1, "reads": [picks]}  # no candidate
    fixed = Subgoal(right.text, np.zeros_like(pick_kf))  # a blank key-frame: nothing moved
    sg, rec = checked_keyframe(ex, env, scene, fixed, [Subgoal("something else", pick_kf), right])
    nothing = "key-frame shows no block moved"
    assert sg is right and rec == {"follows": False, "candidate": 2, "read": 2, "reads": [nothing, picks]}
    sg, rec = checked_keyframe(ex, env, scene, right, [fixed])
    assert sg is right and rec == {"follows": True, "candidate": 0, "read": 1, "reads": [picks]}
    env.close()


def test_check_scene_prefers_a_candidate_whose_keyframe_leaves_the_other_blocks_in_place(tmp_path):
    """keeps_scene: the expert's pick key-frame leaves every other block where the camera sees it now; the same
    key-frame with another block painted elsewhere does not. checked_keyframe with check_scene runs a candidate's
    key-frame that keeps the scene over a kept one that follows its text but moves another block; without it, or
    when no candidate keeps the scene, the kept one runs."""
    import cv2
    import gymnasium as gym

    import sim_envs
    from evaluation.episode import checked_keyframe, keeps_scene
    from sim_envs.executors import KeyframeExecutor, Subgoal
    from sim_envs.keyframe_vision import colour_mask
    from sim_envs.recorder import record_expert_episode

    def shifted_block(image: np.ndarray, colour: str, dx: int) -> np.ndarray:  # the block's pixels dx to the right
        mask = cv2.dilate(colour_mask(image, colour), np.ones((3, 3), np.uint8)).astype(bool)
        ys, xs = np.nonzero(mask)
        out = image.copy()
        out[mask] = np.median(image[~mask], axis=0)
        out[ys, np.clip(xs + dx, 0, image.shape[1] - 1)] = image[ys, xs]
        return out

    env = gym.make(sim_envs.env_id("Stack", "mujoco"), image_obs=False, image_size=96)
    ep = record_expert_episode(env, tmp_path / "ep", seed=1, cameras=())
    k0, pick_kf = next(iter(ep.keyframes()))
    env.reset(seed=1)
    u = env.unwrapped
    ex, scene = KeyframeExecutor(), u.task.scene
    right = Subgoal(k0["text"], pick_kf)
    skill = ex.read_keyframe(env, right)[0]
    other = next(b for b in scene.blocks if b.name != skill.obj)
    shifted = Subgoal(right.text, shifted_block(pick_kf, other.colour, 8))  # about 8 cm at 96 px
    assert keeps_scene(env, scene, right.keyframe, skill)
    assert ex.read_keyframe(env, shifted)[0] == skill  # it still lifts the named block: the text check passes
    assert not keeps_scene(env, scene, shifted.keyframe, skill)
    assert not keeps_scene(env, scene, None, skill) and not keeps_scene(env, scene, pick_kf, None)
    sg, rec = checked_keyframe(ex, env, scene, shifted, [right], check_scene=True)
    picks = [f"pick {skill.obj}"] * 2
    assert sg is right and rec == {"follows": True, "candidate": 1, "read": 2, "reads": picks, "keeps_scene": True}
    sg, rec = checked_keyframe(ex, env, scene, shifted, [right])
    assert sg is shifted and rec == {"follows": True, "candidate": 0, "read": 1, "reads": picks[:1]}
    sg, rec = checked_keyframe(ex, env, scene, shifted, [shifted], check_scene=True)
    assert sg is shifted and rec == {"follows": True, "candidate": 0, "read": 2, "reads": picks, "keeps_scene": False}
    env.close()


def test_replan_on_check_plans_again_instead_of_running_a_keyframe_no_candidate_passes(tmp_path):
    """With replan_on_check, a first plan whose key-frames (kept and candidate alike) show nothing moved is not run:
    the subgoal is recorded as refused, without a step, and the re-plan (the oracle's) finishes the episode."""
    from evaluation.episode import run_episode
    from evaluation.planners import OraclePlanner, PlanResult
    from sim_envs.executors import Subgoal

    class BlankFirst:  # the oracle, except that its first plan's key-frames are blank in every candidate
        name = "blank-first"

        def __init__(self) -> None:
            self.oracle = OraclePlanner(96)

        def plan(self, ctx):
            pr = self.oracle.plan(ctx)
            if ctx.attempt > 0:
                return pr
            blank = [Subgoal(s.text, np.zeros_like(s.keyframe)) for s in pr.subgoals]
            return PlanResult(blank, pr.latency_s, pr.first_subgoal_s, alternatives=[list(blank), list(blank)])

    with pytest.raises(ValueError, match="replan_on_check refines check_keyframes"):
        EvalConfig(replan_on_check=True)
    cfg = EvalConfig(image_size=96, video=False, check_keyframes=True, replan_on_check=True)
    r = run_episode(EpisodeSpec("Stack", "mujoco", "blank-first", 1), cfg, BlankFirst(), tmp_path)
    first = r["subgoals"][0]
    assert first["refused"] and first["steps"] == 0 and not first["success"]
    reads = ["key-frame shows no block moved"] * 3
    assert first["keyframe_check"] == {"follows": False, "candidate": 0, "read": 3, "reads": reads}
    assert r["success"] and r["plans_made"] == 2 and r["replans"] == 1
    assert all(not s.get("refused") for s in r["subgoals"][1:])


def test_checked_is_the_full_check_and_given_counts_win():
    """`eval --checked` is the demo's planner: five candidates, every refinement of the check, put-downs and three
    re-plans; a --candidates or --replans given beside it wins, and without it the defaults stay one plan, one
    re-plan, no check."""
    import argparse

    from evaluation.cli import add_arguments, config_from_args

    def cfg(*argv: str) -> EvalConfig:
        p = argparse.ArgumentParser()
        add_arguments(p)
        return config_from_args(p.parse_args(["--out", "x", "--planner", "oracle", *argv]))

    c = cfg("--checked")
    assert (c.grpc.candidates, c.replans) == (5, 3)
    assert c.check_keyframes and c.check_scene and c.replan_on_check and c.recover
    c = cfg("--checked", "--candidates", "3", "--replans", "0")
    assert (c.grpc.candidates, c.replans) == (3, 0) and c.check_keyframes and c.recover
    c = cfg()
    assert (c.grpc.candidates, c.replans) == (1, 1)
    assert not (c.check_keyframes or c.check_scene or c.replan_on_check or c.recover)
    with pytest.raises(SystemExit, match="--check-keyframes: needs --candidates 2 or more"):
        cfg("--checked", "--candidates", "1")
