"""Service overhead: the same request through gRPC (loopback, real server) and on the engine in-process.

Measures time to the first event and time per generated token for (a) text only and (b) interleaved text and small
key-frames, on the tiny random checkpoint, one torch thread. The difference is what the service adds: request
conversion, queueing, a worker thread hand-off, protobuf encoding (PNG encoding for images), HTTP/2 framing.

    python benchmarks/service_overhead.py                 # print the table
    python benchmarks/service_overhead.py --write         # also append it to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emu35_robot import Limits, Options, PlannerClient, PlannerServer  # noqa: E402
from emu35_robot.servicers import ModelInfo  # noqa: E402
from model import Emu35, TextTokenizer, VisionTokenizer, write_random_bundle  # noqa: E402
from model.engine import Engine, GenerationRequest  # noqa: E402


def in_process(engine: Engine, req: GenerationRequest) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    first, n = None, 0
    for e in engine.generate(req):
        first = first if first is not None else time.perf_counter() - t0
        n = getattr(e, "generated_tokens", n)
    return first, time.perf_counter() - t0, n


def over_grpc(client: PlannerClient, task: str, prompt: str, images, opts: Options) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    first, last = None, None
    for ev in client.generate_stream(task, prompt, images, options=opts):
        first = first if first is not None else time.perf_counter() - t0
        last = ev
    return first, time.perf_counter() - t0, last.usage.generated_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--write", action="store_true", help="append the results to benchmarks/RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = write_random_bundle(Path(tempfile.mkdtemp()) / "bundle", seed=0)
    lm = Emu35.from_pretrained(root.model, dtype=torch.float32)
    tok = TextTokenizer.from_pretrained(root.tokenizer)
    engine = Engine(lm, tok, VisionTokenizer.from_pretrained(root.vision_tokenizer), max_len=4096)
    server = PlannerServer(port=0, host="127.0.0.1", limits=Limits()).start()
    server.attach(engine, ModelInfo("tiny-random", str(root.model), True, "float32", 0))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    no_stop = {tok.eos_id: -100.0, tok.boi_id: -100.0}
    cases = {
        "text only (story, CFG off)": ("story", [], Options(seed=1, cfg_scale=1.0, logit_bias=no_stop)),
        "text + 4x4 images (x2i, CFG 2)": (
            "x2i",
            [image],
            Options(seed=1, image_size=(4, 4), logit_bias={tok.eos_id: -100.0, tok.boi_id: 2.0}),
        ),
    }
    rows = []
    with PlannerClient(f"127.0.0.1:{server.port}") as client:
        for name, (task, images, opts) in cases.items():
            opts.max_new_tokens = args.tokens
            req = GenerationRequest(task=task, question="a robot tidies a desk", images=images,
                                    **{k: getattr(opts, k) for k in ("seed", "cfg_scale", "image_size", "logit_bias",
                                                                     "max_new_tokens")})  # fmt: skip
            in_process(engine, req)  # warm-up
            over_grpc(client, task, req.question, images, opts)
            local = [in_process(engine, req) for _ in range(args.repeats)]
            remote = [over_grpc(client, task, req.question, images, opts) for _ in range(args.repeats)]
            med = lambda xs, i: statistics.median(x[i] for x in xs)
            n = local[0][2]
            assert all(r[2] == n for r in local + remote), "both paths must generate the same number of tokens"
            rows.append((name, n, 1000 * med(local, 0), 1000 * med(remote, 0), 1000 * med(local, 1) / n,
                         1000 * med(remote, 1) / n))  # fmt: skip
    server.stop(0)
    head = "| request | tokens | first event, in-process (ms) | first event, gRPC (ms) | ms/token in-process | " \
           "ms/token gRPC | overhead per token (ms) |"  # fmt: skip
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for name, n, f_l, f_r, t_l, t_r in rows:
        lines.append(f"| {name} | {n} | {f_l:.1f} | {f_r:.1f} | {t_l:.3f} | {t_r:.3f} | {t_r - t_l:+.3f} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        section = f"""
## Service overhead

- Machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread, no GPU; Python \
{platform.python_version()}, torch {torch.__version__}
- Date: {datetime.now(timezone.utc).strftime("%a %b %d %H:%M:%S UTC %Y")}
- Command: `python benchmarks/service_overhead.py --write` ({args.tokens} new tokens, median of {args.repeats} runs)
- Model: the tiny random checkpoint (`write_random_bundle`), float32 on CPU; server and client in one process over
  loopback (127.0.0.1), plaintext, `Generation.Generate` vs `Engine.generate` with the same request and seed.
  Medians; the machine is shared, so single runs vary by several per cent.

{table}

With a 34B model a decode step takes tens of milliseconds, so the per-token overhead above (protobuf and a thread
hand-off per event, plus PNG encoding per image) is well under 1% there; on this tiny model it is a visible share.
"""
        path = Path(__file__).resolve().parent / "RESULTS.md"
        path.write_text(path.read_text().rstrip("\n") + "\n" + section)


if __name__ == "__main__":
    main()
