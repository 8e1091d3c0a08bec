"""`emu35-robot eval`: arguments and the run -> report sequence (emu35_robot/cli.py only wires the subcommand)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from emu35_robot.argtypes import positive_int


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default="all", help="comma-separated task families, or 'all'")
    p.add_argument("--engines", default="mujoco,pybullet", help="comma-separated: mujoco, pybullet")
    p.add_argument(
        "--planner",
        default="oracle,mini",
        help="comma-separated: oracle, random, mini (the shipped Emu3.5-mini, served in-process), saved:DIR (plans an "
        "earlier --save-plans run wrote), or host:port of `emu35-robot serve`",
    )
    p.add_argument("--episodes", type=int, default=10, help="episodes (seeds) per task x engine x planner")
    p.add_argument("--seed", type=int, default=0, help="first seed; episode i uses seed + i")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (or Ray CPUs with --ray local)")
    p.add_argument(
        "--mini-device",
        default=None,
        help="run planner `mini` on one server on this device (cuda, cuda:N or cpu; float32) that every worker asks, "
        "so their requests and candidates decode in one batch (default: a CPU server in every worker)",
    )
    p.add_argument("--ray", default=None, metavar="ADDRESS", help="run on Ray: a cluster address, or 'local'")
    p.add_argument("--out", required=True, help="output directory (episodes.jsonl, report.*, videos/)")
    p.add_argument("--executor", default="keyframe", choices=["keyframe", "language"])
    p.add_argument("--replans", type=int, default=None, help="re-plans allowed per episode (closed loop; default 1)")
    p.add_argument(
        "--horizon",
        type=int,
        default=0,
        help="run only each plan's first K subgoals, then plan again from the camera (0: whole plans); a gRPC "
        "planner is asked for K subgoals unless --max-subgoals says otherwise",
    )
    p.add_argument(
        "--recover",
        action="store_true",
        help="before each re-plan, put down a block left in the gripper, so every plan starts with an empty gripper",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="camera and key-frame size, pixels (default: 128 when `mini` is a planner, as it was trained; else 96)",
    )
    p.add_argument("--max-steps-per-subgoal", type=int, default=120)
    p.add_argument("--placement-tol", type=float, default=0.03, help="metres, for key-frame placement agreement")
    p.add_argument("--no-video", action="store_true", help="skip the per-episode videos")
    p.add_argument(
        "--save-plans",
        action="store_true",
        help="write every plan (texts, key-frames) to OUT/plans/PLANNER/ (--planner saved:OUT/plans/PLANNER replays)",
    )
    p.add_argument("--video-every", type=int, default=3, help="a video frame every k env steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from episodes.jsonl, run nothing")
    g = p.add_argument_group("gRPC planner options")
    g.add_argument("--token", default=None, help="bearer token (default: $EMU35_ROBOT_TOKEN)")
    g.add_argument("--timeout", type=float, default=600.0, help="deadline of one plan request, seconds")
    g.add_argument("--keyframe-grid", default=None, help="token grid HxW of key-frames, e.g. 32x32")
    g.add_argument("--max-subgoals", type=int, default=0, help="0: the server's default")
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument("--cfg-scale", type=float, default=None)
    g.add_argument("--plan-seed", type=int, default=None, help="fixed decoding seed (default: from episode seed)")
    g.add_argument("--logit-bias", action="append", default=[], metavar="ID=BIAS", help="repeatable")
    g.add_argument("--jacobi-window", type=int, default=None, help="speculative Jacobi decoding of key-frames")
    g.add_argument(
        "--image-sampling",
        default=None,
        metavar="T,K,P",
        help="key-frame sampling: temperature (0 = greedy), top_k (0 = all), top_p; default: the server's",
    )
    g.add_argument(
        "--checked",
        action="store_true",
        help="the checked planner at its fullest, as `emu35-robot demo` plans: --candidates 5 --check-keyframes "
        "--replan-on-check --check-scene --recover --replans 3 (a --candidates or --replans given as well wins)",
    )
    g.add_argument(
        "--candidates",
        type=positive_int,
        default=None,
        help="> 1: ask for that many plans at once and execute the consensus (PlannerClient.plan_consensus; default 1)",
    )
    g.add_argument(
        "--check-keyframes",
        action="store_true",
        help="with --candidates N and the key-frame executor: before a subgoal runs, read its key-frame as the "
        "executor would; when that is not what the text says, run another candidate's key-frame for the same text "
        "that is",
    )
    g.add_argument(
        "--check-scene",
        action="store_true",
        help="with --check-keyframes: of the candidates whose key-frames pass, prefer one that also leaves every "
        "block the subgoal does not name where the camera sees it now",
    )
    g.add_argument(
        "--replan-on-check",
        action="store_true",
        help="with --check-keyframes: when no candidate's key-frame passes, run none and plan again from the camera "
        "(counted as a re-plan) instead of running one that shows the wrong thing",
    )
    g.add_argument(
        "--candidate-sampling",
        default=None,
        metavar="T,K,P",
        help="key-frame sampling of the candidates after the first (default 0.7,0,1)",
    )
    g.add_argument(
        "--text-sampling",
        default=None,
        metavar="T,K,P",
        help="subgoal-text sampling, the same three numbers; default: the server's (1,1024,0.9, spec §7)",
    )


def _sampling(spec: str | None, flag: str = "--image-sampling") -> tuple[float, int, float] | None:
    if not spec:
        return None
    from model.sampling import SamplingParams  # imported only with the flag: it pulls in torch

    try:
        t, k, p = spec.split(",")
        params = SamplingParams(float(t), int(k), float(p))
        params.validate(flag)  # here, not once per episode by the service
    except ValueError as e:
        raise SystemExit(f"{flag}: want TEMPERATURE,TOP_K,TOP_P (e.g. 0.5,0,1), got {spec!r}: {e}") from None
    return params.temperature, params.top_k, params.top_p


def config_from_args(args: argparse.Namespace):
    from .episode import CHECKED, CHECKED_CANDIDATES, CHECKED_REPLANS, EvalConfig
    from .planners import GrpcOptions

    grid = None
    if args.keyframe_grid:
        h, w = args.keyframe_grid.lower().split("x")
        grid = (int(h), int(w))
    bias = {}
    for item in args.logit_bias:
        k, v = item.split("=")
        bias[int(k)] = float(v)
    if args.checked:
        vars(args).update(CHECKED)
    if args.candidates is None:
        args.candidates = CHECKED_CANDIDATES if args.checked else 1
    if args.replans is None:
        args.replans = CHECKED_REPLANS if args.checked else 1
    if args.check_keyframes and (args.candidates < 2 or args.executor != "keyframe"):
        raise SystemExit("--check-keyframes: needs --candidates 2 or more and --executor keyframe (the default)")
    if args.mini_device is not None:
        import torch

        try:
            device = torch.device(args.mini_device)
        except RuntimeError as e:
            raise SystemExit(f"--mini-device: {e}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"--mini-device {args.mini_device}: this machine has no CUDA device")
    for flag in ("check_scene", "replan_on_check"):
        if getattr(args, flag) and not args.check_keyframes:
            raise SystemExit(f"--{flag.replace('_', '-')}: refines --check-keyframes; pass both")
    grpc = GrpcOptions(
        image_size=grid,
        max_subgoals=args.max_subgoals or args.horizon,
        max_new_tokens=args.max_new_tokens,
        cfg_scale=args.cfg_scale,
        seed=args.plan_seed,
        logit_bias=bias,
        jacobi_window=args.jacobi_window,
        image_sampling=_sampling(args.image_sampling),
        text_sampling=_sampling(args.text_sampling, "--text-sampling"),
        timeout_s=args.timeout,
        token=args.token or os.environ.get("EMU35_ROBOT_TOKEN"),
        candidates=args.candidates,
        candidate_sampling=_sampling(args.candidate_sampling, "--candidate-sampling"),
    )
    return EvalConfig(
        executor=args.executor,
        replans=args.replans,
        horizon=args.horizon,
        recover=args.recover,
        image_size=args.image_size or (128 if "mini" in _csv(args.planner) else 96),
        max_steps_per_subgoal=args.max_steps_per_subgoal,
        placement_tol_m=args.placement_tol,
        video=not args.no_video,
        video_every=args.video_every,
        save_plans=args.save_plans,
        check_keyframes=args.check_keyframes,
        check_scene=args.check_scene,
        replan_on_check=args.replan_on_check,
        mini_device=args.mini_device,
        grpc=grpc,
    )


def main(args: argparse.Namespace) -> int:
    from sim_envs import ENGINES, FAMILIES

    from .planners import SavedPlanner
    from .report import markdown_table, write_report
    from .runner import EPISODES_FILE, episode_specs, read_records, run

    out = Path(args.out)
    tasks = sorted(FAMILIES) if args.tasks == "all" else _csv(args.tasks)
    engines = _csv(args.engines)
    for t in tasks:
        if t not in FAMILIES:
            raise ValueError(f"unknown task {t!r}; known: {sorted(FAMILIES)}")
    for e in engines:
        if e not in ENGINES:
            raise ValueError(f"unknown engine {e!r}; known: {list(ENGINES)}")
    for p in _csv(args.planner):  # a missing saved-plans folder here, not as a failed record per episode
        if p.startswith("saved:"):
            SavedPlanner(p[len("saved:") :])
    if args.report_only:
        records = read_records(out / EPISODES_FILE)
    else:
        specs = episode_specs(tasks, engines, _csv(args.planner), range(args.seed, args.seed + args.episodes))
        records = run(specs, config_from_args(args), out, args.workers, args.ray, progress=not args.no_progress)
    agg = write_report(out, records)
    print(markdown_table(agg["overall"], ("planner",)))
    print(f"report: {out / 'report.md'}  {out / 'report.html'}", file=sys.stderr)
    return 0
