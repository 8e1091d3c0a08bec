"""`emu35-robot` command line: `model info`, `demo`, `serve`, the service clients `plan`, `generate`, `explore`, and
`eval` (the evaluation harness in `evaluation/`)."""

from __future__ import annotations

import argparse
import sys

from .argtypes import positive_int


def _model_info(args: argparse.Namespace) -> int:
    from model.info import format_info, inspect_checkpoint

    info = inspect_checkpoint(args.path)
    device_bytes = int(args.device_memory_gib * 2**30) if args.device_memory_gib else None
    print(
        format_info(
            info,
            dtype=args.dtype,
            context=args.context,
            streams=args.streams,
            device=args.device,
            device_bytes=device_bytes,
        )
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .mini import mini_available

    if args.checkpoint == "random" or (args.checkpoint is None and not mini_available()):
        from .demo_roundtrip import run_roundtrip

        why = "as asked" if args.checkpoint == "random" else "the Emu3.5-mini weights are missing from this install"
        print(f"emu35-robot demo: the model round trip on a tiny random checkpoint ({why})")
        run_roundtrip(args.out, new_tokens=args.new_tokens, seed=args.seed)
        return 0
    from .demo import run_demo

    if args.check_keyframes and args.candidates < 2:
        raise SystemExit("emu35-robot demo: --check-keyframes needs --candidates 2 or more (e.g. 5)")
    run_demo(
        args.out, checkpoint=args.checkpoint, task=args.task, engine=args.engine, seed=args.seed, device=args.device,
        candidates=args.candidates, check_keyframes=args.check_keyframes,
    )  # fmt: skip
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .server import serve_forever

    return serve_forever(args)


def _eval(args: argparse.Namespace) -> int:
    from evaluation.cli import main as eval_main

    return eval_main(args)


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default="localhost:50051", help="host:port of `emu35-robot serve`")
    p.add_argument("--token", default=None, help="bearer token (default: $EMU35_ROBOT_TOKEN)")
    p.add_argument("--tls-ca", default=None, help="CA certificate (PEM) to verify the server; enables TLS")
    p.add_argument("--tls", action="store_true", help="TLS with the system's root certificates")
    p.add_argument("--server-name", default=None, help="TLS name to check, when it differs from the host")
    p.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--image-size", default=None, help="token grid HxW of generated images, e.g. 32x32")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--logit-bias", action="append", default=[], metavar="ID=BIAS", help="repeatable")
    p.add_argument(
        "--jacobi-window", type=int, default=None, metavar="N", help="speculative Jacobi decoding, N drafts per forward"
    )
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")


def _serve_args(p: argparse.ArgumentParser) -> None:
    from .limits import Limits

    lim = Limits()
    p.add_argument(
        "--model",
        default=None,
        help="bundle dir (model/, tokenizer/, vision_tokenizer/) or model dir; default: the shipped Emu3.5-mini "
        "(emu35_robot/weights/emu35-mini); 'random': a tiny random checkpoint (noise, for trying the service)",
    )
    p.add_argument("--tokenizer", default=None, help="tokenizer dir, when --model is a model dir")
    p.add_argument("--vision-tokenizer", default=None, help="vision tokenizer dir, when --model is a model dir")
    p.add_argument("--host", default="[::]")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port (printed on stderr)")
    p.add_argument("--tls-cert", default=None, help="server certificate (PEM)")
    p.add_argument("--tls-key", default=None, help="server private key (PEM)")
    p.add_argument("--auth-token", default=None, help="require 'authorization: Bearer <token>' (or $EMU35_ROBOT_TOKEN)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument(
        "--tensor-parallel",
        type=int,
        default=1,
        metavar="N",
        help="split every block over N ranks, one GPU each from --device on (NCCL; gloo on cpu)",
    )
    p.add_argument(
        "--tp-all-reduce",
        choices=["auto", "nccl", "lamport", "lamport_nopdl", "one_shot"],
        default="auto",
        help="how tensor-parallel decode steps sum partial outputs: auto (lamport on GPUs with peer access, else "
        "nccl); lamport: one kernel over NVLink peer memory with the add + RMSNorm after it; one_shot: PyTorch's "
        "symmetric-memory all-reduce; lamport_nopdl: lamport without launching the next products early",
    )
    p.add_argument(
        "--fp8",
        action="store_true",
        help="float8 weights with per-channel scales (Hopper/Ada GPUs; 34B on an H200: 1.53x bf16 per decode step)",
    )
    p.add_argument("--max-len", type=int, default=8192, help="context tokens per request or Explore session")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--grace", type=float, default=30.0, help="seconds in-flight streams get to finish on shutdown")
    p.add_argument("--max-queue", type=int, default=lim.max_queue, help="waiting requests before RESOURCE_EXHAUSTED")
    p.add_argument("--max-batch", type=int, default=lim.max_batch, help="requests decoding together (0: one at a time)")
    p.add_argument("--max-sessions", type=int, default=lim.max_sessions, help="open Explore sessions")
    p.add_argument("--max-new-tokens", type=int, default=lim.max_new_tokens, help="cap per request or turn")
    p.add_argument("--max-image-bytes", type=int, default=lim.max_image_bytes, help="per input image")


def _client_main(args: argparse.Namespace) -> int:
    import os

    import grpc

    from . import cli_client

    try:
        return cli_client.run(args, token=args.token or os.environ.get("EMU35_ROBOT_TOKEN"))
    except grpc.RpcError as e:
        print(f"emu35-robot: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emu35-robot", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("model", help="inspect checkpoints").add_subparsers(dest="model_command", required=True)
    info = m.add_parser("info", help="parameters, dtypes, bytes and the memory a device needs, without loading")
    info.add_argument("path", help="checkpoint directory (config.json + safetensors)")
    info.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32", "float8_e4m3fn"])
    info.add_argument("--context", type=int, default=32768, help="tokens per stream to size the KV cache for")
    info.add_argument("--streams", type=int, default=1, help="concurrent requests (each 2 rows with CFG)")
    info.add_argument("--device", default=None, help="e.g. cuda:0 or cpu: say whether it fits")
    info.add_argument("--device-memory-gib", type=float, default=None, help="device memory when it cannot be read")
    info.set_defaults(func=_model_info)

    d = sub.add_parser(
        "demo", help="the shipped Emu3.5-mini plans a MuJoCo episode over gRPC; the key-frame executor runs it"
    )
    d.add_argument("--out", default="emu35_demo", help="output directory")
    d.add_argument(
        "--checkpoint",
        default=None,
        help="trained bundle dir (default: the shipped Emu3.5-mini); 'random': the model round trip on a tiny "
        "random checkpoint instead of an episode",
    )
    d.add_argument(
        "--task", default="PlaceInZone", help="task family: PlaceInZone, Stack, Tower, SortByColour, ClearTable"
    )
    d.add_argument("--engine", default="mujoco", choices=["mujoco", "pybullet"])
    d.add_argument("--seed", type=int, default=10000, help="scene seed (training used seeds below 10000)")
    d.add_argument("--device", default="cpu")
    d.add_argument(
        "--candidates",
        type=int,
        default=5,
        help="plans decoded at once; their consensus is kept (default 5; 1: one greedy plan, the quickest)",
    )
    d.add_argument(
        "--check-keyframes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="before each subgoal, swap a key-frame that does not show what its text says for a candidate's that "
        "does (and leaves the other blocks in place, if one does); when none does, put down what the gripper holds "
        "and plan again, up to three times (README, Evaluation). Default: on when --candidates is 2 or more",
    )
    d.add_argument("--new-tokens", type=int, default=24, help="round trip only (no trained model): tokens to sample")
    d.set_defaults(func=_demo)

    s = sub.add_parser("serve", help="run the gRPC planning service")
    _serve_args(s)
    s.set_defaults(func=_serve)

    pl = sub.add_parser("plan", help="plan: subgoals with key-frames; writes plan.json, PNGs and a contact sheet")
    pl.add_argument("instruction")
    pl.add_argument("--image", action="append", required=True, help="camera image (PNG/JPEG), repeatable")
    pl.add_argument("--max-subgoals", type=int, default=0)
    pl.add_argument(
        "--candidates", type=positive_int, default=1, help="> 1: that many plans at once, keep their consensus (README)"
    )
    _client_args(pl)
    pl.set_defaults(func=_client_main, client="plan")

    g = sub.add_parser("generate", help="t2i / x2i / story / howto; writes generation.json, PNGs, contact sheet")
    g.add_argument("prompt")
    g.add_argument("--task", default="t2i", choices=["t2i", "x2i", "story", "howto"])
    g.add_argument("--image", action="append", default=[], help="reference image, repeatable")
    _client_args(g)
    g.set_defaults(func=_client_main, client="generate")

    from .training.cli import add_parser as add_train_parser

    add_train_parser(sub)

    e = sub.add_parser("explore", help="walk a scene: start views + commands; writes explore.json, PNGs, sheet")
    e.add_argument("scene", help="scene description")
    e.add_argument("--image", action="append", required=True, help="starting view, repeatable")
    e.add_argument("--command", action="append", default=[], help="a command per turn, e.g. 'move forward'")
    _client_args(e)
    e.set_defaults(func=_client_main, client="explore")

    from evaluation.cli import add_arguments as eval_arguments

    ev = sub.add_parser("eval", help="benchmark a planner (service, oracle, random) on the simulated tasks")
    eval_arguments(ev)
    ev.set_defaults(func=_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"emu35-robot: error: {e}", file=sys.stderr)
        return 2
