"""`emu35-robot train collect | vq | lm | package`: the Emu3.5-mini recipe, stage by stage."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train Emu3.5-mini on simulator demonstrations, stage by stage")
    ts = t.add_subparsers(dest="train_command", required=True)
    c = ts.add_parser("collect", help="record expert demonstrations (first view + key-frames) on both engines")
    c.add_argument("--out", required=True)
    c.add_argument("--seeds", default="0:150", help="START:STOP per env id (held-out evaluation uses seeds >= 10000)")
    c.add_argument("--envs", default="all", help="comma list of env ids, or all")
    c.add_argument("--explore-seeds", default="0:60", help="START:STOP per env id for explore episodes (or none)")
    c.add_argument("--turns", type=int, default=4, help="camera commands per explore episode")
    c.add_argument("--workers", type=int, default=1, help="processes recording episodes side by side (one per core)")
    c.add_argument(
        "--retarget",
        type=int,
        default=0,
        help="also record each scene's first K other goals (the same view, another instruction or another order)",
    )
    for name, default_steps, default_batch in (("vq", 6000, 64), ("lm", 4000, 32)):
        p = ts.add_parser(name, help=f"train the {'IBQ vision tokenizer' if name == 'vq' else 'decoder'}; resumes")
        p.add_argument("--data", required=True, help="collection dir, or several separated by commas")
        p.add_argument("--run", required=True)
        p.add_argument("--steps", type=int, default=default_steps)
        p.add_argument("--batch", type=int, default=default_batch)
        p.add_argument("--device", default="cuda")
        p.add_argument("--until", type=int, default=None, help="stop after this step (time-boxed slices)")
        if name == "lm":
            p.add_argument("--augment", type=int, default=3, help="recoloured/mirrored copies of each training episode")
            p.add_argument("--input-noise", type=float, default=0.15, help="share of image tokens read corrupted")
            p.add_argument("--init", default=None, help="fine-tune this model dir (e.g. a bundle's model/)")
            p.add_argument(
                "--lr", type=float, default=1e-3, help="peak learning rate (lower to continue a trained model)"
            )
            p.add_argument(
                "--change-weight", type=float, default=0.0, help="extra loss weight of image tokens that changed"
            )
            p.add_argument(
                "--contrast-weight",
                type=float,
                default=0.0,
                help="weight of the grounding loss against colour-swapped negatives (0: off)",
            )
        if name == "vq":
            p.add_argument("--init", default=None, help="fine-tune this vision_tokenizer dir instead of afresh")
            p.add_argument(
                "--decoder-only",
                action="store_true",
                help="with --init: train only the pixel decoder; every image keeps its codes, so the language model"
                " trained on them stays valid",
            )
            p.add_argument(
                "--colour-weight", type=float, default=None, help="extra reconstruction weight of saturated pixels"
            )
            p.add_argument(
                "--lr", type=float, default=None, help="peak learning rate (default 4e-4, 1.5e-4 with --init)"
            )
    a = ts.add_parser("all", help="vq -> lm -> package in one go; each stage resumes or is skipped when done")
    a.add_argument("--data", required=True, help="collection dir, or several separated by commas")
    a.add_argument("--vq-init", default=None, help="fine-tune this vision_tokenizer dir instead of starting afresh")
    a.add_argument("--run", required=True)
    a.add_argument("--out", required=True, help="bundle directory to write")
    a.add_argument("--vq-steps", type=int, default=6000)
    a.add_argument("--vq-batch", type=int, default=64)
    a.add_argument("--lm-steps", type=int, default=4000)
    a.add_argument("--lm-batch", type=int, default=32)
    a.add_argument("--augment", type=int, default=3, help="recoloured/mirrored copies of each training episode")
    a.add_argument("--input-noise", type=float, default=0.15, help="share of image tokens read corrupted")
    a.add_argument("--lm-init", default=None, help="fine-tune this model dir (e.g. a bundle's model/)")
    a.add_argument("--change-weight", type=float, default=0.0, help="extra loss weight of image tokens that changed")
    a.add_argument("--contrast-weight", type=float, default=0.0, help="grounding loss weight (0: off)")
    a.add_argument("--device", default="cuda")
    pr = ts.add_parser("probe", help="free-running plans on recorded episodes, scored against their key-frames")
    pr.add_argument("--bundle", required=True)
    pr.add_argument("--data", required=True, help="collection dir(s); the held-out split is probed")
    pr.add_argument("--n", type=int, default=32)
    pr.add_argument("--greedy", action="store_true")
    pr.add_argument("--grounding", action="store_true", help="also: does a key-frame depend on the target's name")
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--out", default=None, help="also write the whole result, every episode's row, as JSON here")
    rs = ts.add_parser("result", help="lm_result.json (held-out loss, probes) of a run stopped before its last step")
    rs.add_argument("--run", required=True)
    rs.add_argument("--bundle", required=True, help="the bundle packaged from that run's last checkpoint")
    rs.add_argument("--data", required=True, help="collection dir(s) the run trained on")
    rs.add_argument("--step", type=int, required=True, help="the step of the checkpoint the bundle was packaged from")
    rs.add_argument("--n", type=int, default=32, help="held-out episodes per probe")
    rs.add_argument("--device", default="cpu")
    cd = ts.add_parser("card", help="write BUNDLE/MODEL_CARD.md from the run's records and an evaluation report")
    cd.add_argument("--run", required=True)
    cd.add_argument("--bundle", required=True)
    cd.add_argument("--eval", default=None, help="output dir of `emu35-robot eval --planner oracle,HOST:PORT`")
    cd.add_argument("--planner", default=None, help="the mini planner's name in that report (default: not oracle)")
    cd.add_argument("--eval-note", default="", help="a line printed under the evaluation table")
    k = ts.add_parser("package", help="write the trained run as a bundle in the official layouts")
    k.add_argument("--run", required=True)
    k.add_argument("--out", required=True)
    t.set_defaults(func=run)


def _data(args: argparse.Namespace) -> list[Path]:
    return [Path(d) for d in args.data.split(",") if d]


def _stage_head(args: argparse.Namespace) -> tuple:
    """The positional arguments `train vq` and `train lm` pass alike: data, run, steps, batch, device, until."""
    return _data(args), Path(args.run), args.steps, args.batch, args.device, args.until


def run(args: argparse.Namespace) -> int:
    from . import pipeline

    if args.train_command == "collect":
        import sim_envs

        from .collect import collect, collect_explore

        start, stop = (int(x) for x in args.seeds.split(":"))
        envs = list(sim_envs.ENV_IDS) if args.envs == "all" else args.envs.split(",")
        n = collect(args.out, envs, range(start, stop), workers=args.workers, retarget=args.retarget)
        print(f"added {n} episodes to {args.out}")
        if args.explore_seeds != "none":
            start, stop = (int(x) for x in args.explore_seeds.split(":"))
            n = collect_explore(args.out, envs, range(start, stop), turns=args.turns, workers=args.workers)
            print(f"added {n} explore episodes to {args.out}")
    elif args.train_command == "vq":
        init = Path(args.init) if args.init else None
        if args.decoder_only and init is None:
            raise SystemExit("train vq: --decoder-only needs --init (the tokenizer whose codes to keep)")
        print(
            pipeline.stage_vq(
                *_stage_head(args),
                init=init,
                decoder_only=args.decoder_only,
                colour_weight=args.colour_weight,
                lr=args.lr,
            )
        )
    elif args.train_command == "lm":
        init = Path(args.init) if args.init else None
        hist = pipeline.stage_lm(
            *_stage_head(args),
            args.augment,
            args.input_noise,
            init,
            args.lr,
            args.change_weight,
            args.contrast_weight,
        )
        print(f"loss {hist[0]['loss']:.3f} -> {hist[-1]['loss']:.3f} at step {hist[-1]['step']}")
    elif args.train_command == "all":
        data, run_dir, init = _data(args), Path(args.run), Path(args.vq_init) if args.vq_init else None
        print(pipeline.stage_vq(data, run_dir, args.vq_steps, args.vq_batch, args.device, init=init), flush=True)
        lm_init = Path(args.lm_init) if args.lm_init else None
        hist = pipeline.stage_lm(
            data,
            run_dir,
            args.lm_steps,
            args.lm_batch,
            args.device,
            None,
            args.augment,
            args.input_noise,
            lm_init,
            change_weight=args.change_weight,
            contrast_weight=args.contrast_weight,
        )
        print(f"loss {hist[0]['loss']:.3f} -> {hist[-1]['loss']:.3f} at step {hist[-1]['step']}", flush=True)
        print(f"wrote {pipeline.package(run_dir, Path(args.out))}")
    elif args.train_command == "probe":
        from model.engine import load_engine

        from .probe import probe

        b = Path(args.bundle)
        engine = load_engine(b / "model", b / "tokenizer", b / "vision_tokenizer", args.device, max_len=4096)
        held = pipeline.episodes(_data(args))[1]
        result = probe(engine, held, args.n, greedy=args.greedy)
        print(json.dumps({k: v for k, v in result.items() if k != "per_episode"}, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))
        if args.grounding:
            from .probe import grounding

            g = grounding(engine, held, args.n)
            print(json.dumps({k: v for k, v in g.items() if k != "per_episode"}, indent=2))
    elif args.train_command == "result":
        r = pipeline.result_of_stopped_run(
            _data(args), Path(args.run), Path(args.bundle), args.step, args.n, args.device
        )
        print(json.dumps(r, indent=2))
    elif args.train_command == "card":
        from .card import model_card

        report, planner = None, ""
        if args.eval:
            report = json.loads((Path(args.eval) / "report.json").read_text())
            names = sorted({r["planner"] for r in report["rows"]} - {"oracle", "random"})
            planner = args.planner or (names[0] if names else "")
        text = model_card(Path(args.run), Path(args.bundle), report, planner, args.eval_note)
        (Path(args.bundle) / "MODEL_CARD.md").write_text(text)
        print(text)
    else:
        print(f"wrote {pipeline.package(Path(args.run), Path(args.out))}")
    return 0
