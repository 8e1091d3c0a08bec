"""Where a decode step's time goes, at the 34B shape on one GPU: kernels by total time (torch.profiler), and the
matrix products alone (every weight of the step multiplied once, in one CUDA graph) against the copy-bandwidth floor.

    python benchmarks/profile_step.py --rows 2 --out $OUT/profile.txt
    python benchmarks/profile_step.py --prefill 2048 --out $OUT/profile.txt    # and where a 2k prefill's time goes
    python benchmarks/profile_step.py --fp8 --trace $OUT/fp8_trace.json --out $OUT/profile_fp8.txt

The step is the engine's as `serve` builds it (skinny kernels, Triton decode attention, CUDA graphs; `--fp8`: float8
weights). Besides the kernels by total time it reports the step's timeline: busy time (kernels running) against the
step's span, and the gaps between consecutive kernels, where the GPU idles at each kernel boundary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import copy_bandwidth, random_model, time_prefill  # noqa: E402

from model.config import emu35_34b_config  # noqa: E402
from model.engine import Engine  # noqa: E402
from model.random_checkpoint import official_size_ranks  # noqa: E402
from model.skinny_mm import SkinnyLinear, tune  # noqa: E402
from model.text_tokenizer import TextTokenizer, vision_token_list  # noqa: E402
from model.vision_tokenizer import VisionTokenizer, tiny_vision_config  # noqa: E402


def graph_ms(fn, reps: int = 20) -> float:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        g.replay()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t) / reps


def profile_prefill(eng: Engine, tokens: int) -> list[str]:
    """Wall time of a one-row prefill of `tokens` tokens (decode.py's time_prefill: best of 3) and the kernels of one
    more, by total time."""
    best = time_prefill(eng, 1, tokens)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        time_prefill(eng, 1, tokens, reps=1)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=90)
    return [f"prefill {tokens} tokens x 1 row (fused projections, compiled kernels): {1000 * best:.0f} ms", table]


HOST_GAP_US = 100.0


def timeline(trace: Path, steps: int) -> list[str]:
    """Busy time against span over the profiled steps, from the kernels of a chrome trace: the gaps between
    consecutive kernels are where the GPU idles (launch latency, a kernel's ramp-up waiting on the one before)."""
    ev = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("cat") == "kernel"]
    ev.sort(key=lambda e: e["ts"])
    span = ev[-1]["ts"] + ev[-1]["dur"] - ev[0]["ts"]
    busy = sum(e["dur"] for e in ev)
    gaps = [(b["ts"] - (a["ts"] + a["dur"]), a["name"], b["name"]) for a, b in zip(ev, ev[1:])]
    pos = sorted((g for g in gaps if g[0] > 0), reverse=True)
    # a gap this long is the host between two replays (the steps are queued one by one), not a kernel boundary
    inside, between = [g[0] for g in pos if g[0] < HOST_GAP_US], [g[0] for g in pos if g[0] >= HOST_GAP_US]
    lines = [
        f"timeline over {steps} steps: {len(ev) / steps:.0f} kernels per step, span {span / steps / 1000:.3f} ms"
        f" per step, kernels busy {busy / steps / 1000:.3f} ms, idle between kernels {sum(inside) / steps / 1000:.3f}"
        f" ms ({len(inside) / steps:.0f} gaps per step, median {inside[len(inside) // 2] if inside else 0:.2f} us),"
        f" idle between replays {sum(between) / steps / 1000:.3f} ms ({len(between)} gaps >= {HOST_GAP_US} us)"
    ]
    # kernel time and the gap before it, by kernel name
    by: dict[str, list[float]] = {}
    for (g, _, name), e in zip([(0.0, "", ev[0]["name"]), *gaps], ev):
        r = by.setdefault(name, [0, 0.0, 0.0])
        r[0] += 1
        r[1] += e["dur"]
        r[2] += max(g, 0.0)
    lines.append(f"{'kernel':90s} {'per step':>8s} {'us/step':>9s} {'us each':>8s} {'gap before, us/step':>20s}")
    for name, (n, d, g) in sorted(by.items(), key=lambda kv: -kv[1][1] - kv[1][2])[:30]:
        lines.append(f"{name[:90]:90s} {n / steps:8.1f} {d / steps:9.1f} {d / n:8.2f} {g / steps:20.1f}")
    lines.append("largest gaps (us, kernel before -> after):")
    lines += [f"  {g:7.2f}  {a[:60]} -> {b[:60]}" for g, a, b in pos[:12]]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--prefill", type=int, default=0, help="also profile a prefill of this many tokens, one row")
    ap.add_argument("--fp8", action="store_true", help="float8 weights (serve --fp8)")
    ap.add_argument("--trace", default=None, help="write the profiled steps' chrome trace here")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    config = emu35_34b_config()
    bw = copy_bandwidth(dev)
    lm = random_model(config, dev, torch.bfloat16)
    tok = TextTokenizer(official_size_ranks(), vision_token_list(131072))
    max_len = max(args.prompt, args.prefill) + 64
    eng = Engine(lm, tok, VisionTokenizer(tiny_vision_config()), max_len=max_len, compile_kernels=True, fp8=args.fp8)
    B = args.rows
    lines = [
        f"{torch.cuda.get_device_name()} | {'float8' if args.fp8 else 'bfloat16'} weights | copy bandwidth "
        f"{bw / 1e12:.2f} TB/s | {B} rows, prompt {args.prompt}"
    ]

    # matrix products alone: every projection a decode step runs (the engine's own modules) and the head's visual
    # slice, on B rows
    mods = [m for m in lm.modules() if isinstance(m, SkinnyLinear)]
    x = {m.in_features: torch.randn(B, m.in_features, device=dev, dtype=torch.bfloat16) for m in mods}
    tune(lm, rows=(B,))  # each shape's kernel configuration, chosen eagerly before the graph capture
    gemm_bytes = sum(m.weight.numel() * m.weight.element_size() for m in mods)
    ms = graph_ms(lambda: [m(x[m.in_features]) for m in mods])
    floor = 1000 * gemm_bytes / bw
    lines.append(
        f"projections alone ({len(mods)} modules, no head), {B} rows: {ms:.2f} ms for {gemm_bytes / 1e9:.1f} GB = "
        f"{floor:.2f} ms floor -> {ms / floor:.2f}x ({gemm_bytes / ms / 1e9:.2f} TB/s)"
    )
    cache = eng._cache(B)
    ids = torch.randint(0, config.vocab_size, (B, args.prompt), device=dev)
    with torch.no_grad():
        lm(ids, cache=cache, cache_pos=torch.arange(args.prompt, device=dev), kv_len=args.prompt, logits_to_keep=1)
        t = torch.full((B, 1), eng.visual.start, device=dev)
        pos = torch.full((B, 1), args.prompt, device=dev)
        valid = torch.ones(B, 1, dtype=torch.bool, device=dev)
        for i in range(3):
            eng._step(cache, t, pos, valid, args.prompt + i, True)
        torch.cuda.synchronize()
        # steps queued back to back, as the engine's lookahead runs them inside an image
        for i in range(3):
            eng._step(cache, t, pos, valid, args.prompt + 3 + i, True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            eng._step(cache, t, pos, valid, args.prompt + 6, True)
        torch.cuda.synchronize()
        lines.append(f"step, queued back to back: {1000 * (time.perf_counter() - t0) / 20:.2f} ms")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for i in range(5):
                eng._step(cache, t, pos, valid, args.prompt + 3 + i, True)
            torch.cuda.synchronize()
    trace = Path(args.trace) if args.trace else Path(f"/tmp/profile_step_{'fp8' if args.fp8 else 'bf16'}.json")
    prof.export_chrome_trace(str(trace))
    lines += timeline(trace, 5)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=90)
    n_kernels = sum(e.count for e in prof.key_averages()) / 5
    lines.append(f"kernels per step: {n_kernels:.0f}")
    lines.append(table)
    if args.prefill:
        lines += profile_prefill(eng, args.prefill)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
