"""`emu35-robot train collect | vq | lm | package`: the Emu3.5-mini recipe, stage by stage."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train Emu3.5-mini on simulator demonstrations, stage by stage")
    ts = t.add_subparsers(dest="train_command", required=True)
    c = ts.add_parser("collect", help="record expert demonstrations (first view + key-frames) on both engines")
    c.add_argument("--out", required=True)
    c.add_argument("--seeds", default="0:150", help="START:STOP per env id (held-out evaluation uses seeds >= 10000)")
    c.add_argument("--envs", default="all", help="comma list of env ids, or all")
    for name, default_steps, default_batch in (("vq", 6000, 64), ("lm", 4000, 32)):
        p = ts.add_parser(name, help=f"train the {'IBQ vision tokenizer' if name == 'vq' else 'decoder'}; resumes")
        p.add_argument("--data", required=True)
        p.add_argument("--run", required=True)
        p.add_argument("--steps", type=int, default=default_steps)
        p.add_argument("--batch", type=int, default=default_batch)
        p.add_argument("--device", default="cuda")
        p.add_argument("--until", type=int, default=None, help="stop after this step (time-boxed slices)")
    k = ts.add_parser("package", help="write the trained run as a bundle in the official layouts")
    k.add_argument("--run", required=True)
    k.add_argument("--out", required=True)
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from . import pipeline

    if args.train_command == "collect":
        import sim_envs

        from .collect import collect

        start, stop = (int(x) for x in args.seeds.split(":"))
        envs = list(sim_envs.ENV_IDS) if args.envs == "all" else args.envs.split(",")
        print(f"added {collect(args.out, envs, range(start, stop))} episodes to {args.out}")
    elif args.train_command == "vq":
        print(pipeline.stage_vq(Path(args.data), Path(args.run), args.steps, args.batch, args.device, args.until))
    elif args.train_command == "lm":
        hist = pipeline.stage_lm(Path(args.data), Path(args.run), args.steps, args.batch, args.device, args.until)
        print(f"loss {hist[0]['loss']:.3f} -> {hist[-1]['loss']:.3f} at step {hist[-1]['step']}")
    else:
        print(f"wrote {pipeline.package(Path(args.run), Path(args.out))}")
    return 0
