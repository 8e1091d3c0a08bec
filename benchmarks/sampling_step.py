"""Time the part of a CFG image step after the forward: CFG combination, the draw, and the host read of the tokens.

    python benchmarks/sampling_step.py --device cuda --streams 1,8            # spec sampling (top-k 10240), t2i, greedy
    python benchmarks/sampling_step.py --device cpu --streams 1 --iters 20

Random logits over the release's 131,072 visual codes, 2 rows per stream (conditional, unconditional), drawn through
`engine.draw_tokens` as the engine draws them: eagerly, and on CUDA also through a `GraphSampler` (one captured graph
per group; the noise drawn eagerly per stream). Prints the median wall time per step and, on CUDA, the GPU time per
step from torch.profiler: where wall time is well above GPU time, kernel launches set the cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.engine import Draw, draw_tokens  # noqa: E402
from model.graph_sampler import GraphSampler  # noqa: E402
from model.sampling import IMAGE_SAMPLING, SamplingParams  # noqa: E402

PARAMS = {
    "spec": IMAGE_SAMPLING,
    "t2i": SamplingParams(temperature=1.0, top_k=5120, top_p=1.0),
    "greedy": SamplingParams(temperature=0.0, top_k=0, top_p=1.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--streams", default="1,8")
    ap.add_argument("--codes", type=int, default=131072)
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--kernels", action="store_true", help="print the eager draw's kernels by GPU time (CUDA)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    samplers = {"eager": None} | ({"graph": GraphSampler()} if dev.type == "cuda" else {})
    for streams in (int(s) for s in args.streams.split(",")):
        for name, params in PARAMS.items():
            logits = torch.randn(2 * streams, args.codes, device=dev, dtype=torch.bfloat16)  # [2 streams, V]
            picked = {}
            for how, sampler in samplers.items():
                gens = [torch.Generator(device=dev).manual_seed(s) for s in range(streams)]
                draws = [Draw(logits[2 * s : 2 * s + 2], params, g, 3.0) for s, g in enumerate(gens)]
                times, tokens = [], []
                for _ in range(args.iters):
                    sync()
                    t = time.perf_counter()
                    tokens.append(draw_tokens(draws, sampler))
                    times.append(time.perf_counter() - t)
                picked[how] = tokens
                timed = sorted(times[args.iters // 6 :])  # the first sixth warms up (and captures)
                wall = 1000 * timed[len(timed) // 2]
                gpu = ""
                if dev.type == "cuda":
                    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                        for _ in range(10):
                            draw_tokens(draws, sampler)
                    gpu_us = sum(e.self_device_time_total for e in prof.key_averages()) / 10
                    gpu = f", GPU {gpu_us / 1000:.3f} ms"
                    if args.kernels and sampler is None:
                        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15), flush=True)
                print(f"{streams} stream(s) {name:6s} {how:5s}: {wall:.3f} ms wall{gpu}", flush=True)
            if len(picked) == 2:  # the same seeds draw the same tokens with and without the graph
                print(f"  graph draws == eager draws: {picked['graph'] == picked['eager']}", flush=True)


if __name__ == "__main__":
    main()
