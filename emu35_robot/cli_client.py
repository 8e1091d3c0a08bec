"""The client commands of the CLI (`plan`, `generate`, `explore`): call the server, show progress, write results."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from .client import PlannerClient
from .contact_sheet import contact_sheet
from .types import ExploreView, GeneratedImage, ImageProgress, Options, Subgoal, TextChunk


class Progress:
    """One status line on stderr, rewritten in place: tokens of text, rows of the current image, images done."""

    def __init__(self, what: str, quiet: bool):
        self.what, self.quiet, self.chars, self.images, self.rows = what, quiet, 0, 0, ""

    def update(self, ev) -> None:
        if isinstance(ev, TextChunk):
            self.chars += len(ev.text)
        elif isinstance(ev, ImageProgress):
            self.rows = f" | image {ev.index + 1}: row {ev.rows_done}/{ev.rows_total}"
        elif isinstance(ev, Subgoal | GeneratedImage | ExploreView):
            self.images += 1
            self.rows = ""
        if not self.quiet:
            print(f"\\r{self.what}: {self.chars} chars, {self.images} image(s){self.rows}   ", end="", file=sys.stderr)

    def done(self) -> None:
        if not self.quiet:
            print(file=sys.stderr)


def _options(args: argparse.Namespace) -> Options:
    size = None
    if args.image_size:
        h, _, w = args.image_size.lower().partition("x")
        size = (int(h), int(w))
    bias = {}
    for item in args.logit_bias:
        k, _, v = item.partition("=")
        bias[int(k)] = float(v)
    return Options(
        image_size=size,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        cfg_scale=args.cfg_scale,
        logit_bias=bias,
        jacobi_window=args.jacobi_window,
    )


def _client(args: argparse.Namespace, token: str | None) -> PlannerClient:
    tls = args.tls_ca or args.tls
    return PlannerClient(args.server, token=token, tls=tls, server_name=args.server_name, timeout=args.timeout)


def _usage(u) -> dict:
    return asdict(u)


def run(args: argparse.Namespace, token: str | None) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    opts = _options(args)
    images = [Image.open(p) for p in getattr(args, "image", [])]
    with _client(args, token) as client:
        if args.client == "plan":
            consensus = None
            if args.candidates > 1:  # no stream to show: the plan is known when every candidate is done
                c = client.plan_consensus(
                    args.instruction, images, args.candidates, options=opts, max_subgoals=args.max_subgoals
                )
                plan, consensus = c.plan, c.summary()
            else:
                bar, plan = Progress("plan", args.quiet), None
                for ev in client.plan_stream(args.instruction, images, max_subgoals=args.max_subgoals, options=opts):
                    bar.update(ev)
                    plan = ev
                bar.done()
            steps = []
            for s in plan.subgoals:
                s.image.save(out / f"keyframe_{s.index:02d}.png")
                steps.append(
                    {
                        "index": s.index,
                        "text": s.text,
                        "chain_of_thought": s.chain_of_thought,
                        "keyframe": f"keyframe_{s.index:02d}.png",
                        "grid": list(s.codes.shape),
                    }
                )
            doc = {
                "instruction": plan.instruction,
                "subgoals": steps,
                "trailing_text": plan.trailing_text,
                "chain_of_thought": plan.chain_of_thought,
                "usage": _usage(plan.usage),
            }
            if consensus is not None:
                doc["consensus"] = consensus
            (out / "plan.json").write_text(json.dumps(doc, indent=2))
            sheet = contact_sheet([s.image for s in plan.subgoals], [s.text for s in plan.subgoals], plan.instruction)
            print(f"{len(plan.subgoals)} subgoal(s), finished: {plan.usage.reason}; wrote {out}/")
        elif args.client == "generate":
            bar, gen = Progress(args.task, args.quiet), None
            for ev in client.generate_stream(args.task, args.prompt, images, options=opts):
                bar.update(ev)
                gen = ev
            bar.done()
            for g in gen.images:
                g.image.save(out / f"image_{g.index:02d}.png")
            doc = {
                "task": gen.task,
                "prompt": gen.prompt,
                "text": gen.text,
                "usage": _usage(gen.usage),
                "images": [{"file": f"image_{g.index:02d}.png", "caption": g.caption} for g in gen.images],
            }
            (out / "generation.json").write_text(json.dumps(doc, indent=2))
            sheet = contact_sheet([g.image for g in gen.images], [g.caption for g in gen.images], gen.prompt)
            print(f"{len(gen.images)} image(s), finished: {gen.usage.reason}; wrote {out}/")
        else:
            session = client.explore(args.scene, images, options=opts)
            for cmd in args.command:
                bar = Progress(cmd, args.quiet)
                for ev in session.step_stream(cmd):
                    bar.update(ev)
                bar.done()
            session.close()
            turns, views = [], []
            for t in session.turns:
                files = []
                for v in t.views:
                    name = f"turn_{t.turn:02d}_view_{v.index:02d}.png"
                    v.image.save(out / name)
                    files.append(name)
                    views.append((v.image, f"[{t.command}] {v.narration}"))
                turns.append(
                    {
                        "turn": t.turn,
                        "command": t.command,
                        "narration": t.narration,
                        "views": files,
                        "context_tokens": t.context_tokens,
                        "usage": _usage(t.usage),
                    }
                )
            (out / "explore.json").write_text(json.dumps({"scene": args.scene, "turns": turns}, indent=2))
            sheet = contact_sheet([v[0] for v in views], [v[1] for v in views], args.scene)
            print(f"{len(turns)} turn(s), {len(views)} view(s); wrote {out}/")
    sheet.save(out / "contact_sheet.png")
    return 0
