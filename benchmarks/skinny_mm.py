"""Skinny GEMMs at the 34B decode shapes: cuBLAS bf16, Fp8Linear (torch._scaled_mm), Triton bf16, Triton float8.

For each projection (K -> N: qkv, o, gate_up, down, and the head's visual slice) and rows M in 1, 2, 4, 8, 16:
microseconds per product by CUDA graph replay (the engine's way: a graph of 2 x `copies` products, each on the next
of `copies` random weight copies, enough bytes that L2 never holds the next one) and by `triton.testing.do_bench`'s
median (which flushes L2 before each call; launch overhead can show there), GB/s of weight bytes read (float8: one
byte a weight + float32 scales), the share of the measured copy bandwidth (decode.py's floor), and the relative error
||y - ref|| / ||ref|| against the float32 product of the bf16 weights (float8 also against its dequantized weights:
the kernel's own error). Sums a layer (qkv + o + gate_up + down) and 64 of them; the Triton path autotunes (eagerly)
before anything is timed.

    python benchmarks/skinny_mm.py --out skinny_mm.json                 # one GPU, about 3-5 minutes with tuning
    python benchmarks/skinny_mm.py --tiny                               # CPU smoke run (torch fallbacks)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import model.skinny_mm as sk  # noqa: E402
from model.config import emu35_34b_config  # noqa: E402
from model.fp8 import Fp8Linear  # noqa: E402
from model.skinny_mm import skinny_available, skinny_mm, triton  # noqa: E402

try:
    from decode import copy_bandwidth  # noqa: E402
except ImportError:  # the same measurement: device-to-device copy, read + write bytes per second

    def copy_bandwidth(device, gib: float = 4.0) -> float:
        n = int(gib * 2**30 / 2) if device.type == "cuda" else 2**26
        x = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
        y = torch.empty_like(x)
        y.copy_(x)
        sync(device)
        t = time.perf_counter()
        for _ in range(10):
            y.copy_(x)
        sync(device)
        return 2 * n * 2 * 10 / (time.perf_counter() - t)


METHODS = ("cublas_bf16", "scaled_mm_fp8", "triton_bf16", "triton_fp8", "triton_fp8_cvt")
LAYER = ("qkv", "o", "gate_up", "down")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def shapes(tiny: bool, tp: int = 1) -> dict[str, tuple[int, int]]:
    """name -> (K, N) of the products a decode step runs (fused q/k/v and gate/up, as the engine on CUDA); with
    `tp` > 1, one rank's share under tensor parallelism (q/k/v, gate/up and the head's rows split; o and down's
    inputs split)."""
    c = emu35_34b_config()
    C, I, H, KV, D = c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    V = c.num_visual_tokens
    if tiny:
        C, I, H, KV, D, V = 256, 640, 4, 2, 64, 4096
    return {
        "qkv": (C, (H + 2 * KV) * D // tp),
        "o": (H * D // tp, C),
        "gate_up": (C, 2 * I // tp),
        "down": (I // tp, C),
        "head_visual": (C, V // tp),
    }


def graph_us(fns, device, reps: int = 10) -> float:
    """Microseconds per call of the callables `fns`, run in turn inside one CUDA graph (median of `reps` replays)."""
    if device.type != "cuda":
        t = time.perf_counter()
        for f in fns:
            f()
        return 1e6 * (time.perf_counter() - t) / len(fns)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fns:
            f()
    g.replay()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(1000 * a.elapsed_time(b) / len(fns))
    del g
    return sorted(times)[len(times) // 2]


def bench_us(fns, device) -> float | None:
    """triton.testing.do_bench's median (L2 flushed before each call), cycling over `fns`."""
    if device.type != "cuda" or triton is None:
        return None
    it = iter(range(10**9))
    return 1000 * triton.testing.do_bench(lambda: fns[next(it) % len(fns)](), quantiles=(0.5, 0.2, 0.8))[0]


def skinny_mm_cvt(x, w, scale):
    """The float8 kernel with Triton's own e4m3 -> bf16 conversion instead of model/skinny_mm.py's integer recipe."""
    sk.FP8_ASM = False
    try:
        return skinny_mm(x, w, scale)
    finally:
        sk.FP8_ASM = True


def rel(y, ref) -> float:
    return float((y.float() - ref).norm() / ref.norm())


def run_shape(name, K, N, rows, device, min_bytes, bw, methods=METHODS) -> list[dict]:
    copies = max(2, math.ceil(min_bytes / (N * K)))  # the float8 copies alone exceed min_bytes
    gen = torch.Generator(device).manual_seed(0)
    ws = [torch.randn(N, K, device=device, generator=gen, dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
    fp8s = []
    for w in ws:  # quantized exactly as quantize_fp8 / use_skinny(fp8=True) do
        lin = nn.Linear(K, N, bias=False, device="meta")
        lin.weight = nn.Parameter(w, requires_grad=False)
        fp8s.append(Fp8Linear(lin))
    triton_ok = skinny_available(device), skinny_available(device, fp8=True)
    out = []
    for M in rows:
        x = torch.randn(M, K, device=device, generator=gen, dtype=torch.bfloat16)
        ref = x.float() @ ws[0].float().T
        ref_q = x.float() @ (fp8s[0].weight.float() * fp8s[0].scale.T).T
        calls = {
            "cublas_bf16": [lambda w=w, x=x: F.linear(x, w) for w in ws],
            "scaled_mm_fp8": [lambda f=f, x=x: f(x) for f in fp8s],
            "triton_bf16": [lambda w=w, x=x: skinny_mm(x, w) for w in ws],
            "triton_fp8": [lambda f=f, x=x: skinny_mm(x, f.weight, f.scale) for f in fp8s],
            "triton_fp8_cvt": [lambda f=f, x=x: skinny_mm_cvt(x, f.weight, f.scale) for f in fp8s],
        }
        for method, fns in calls.items():
            if method not in methods:
                continue
            fp8 = "fp8" in method
            if method.startswith("triton") and not triton_ok[fp8]:
                continue
            if method == "scaled_mm_fp8" and not fp8s[0].use_scaled_mm and device.type == "cuda":
                continue
            y = fns[0]()  # the first call autotunes (Triton), eagerly
            best = None
            if method.startswith("triton") and device.type == "cuda":  # the autotuner's choice for this call
                best = str(getattr(sk._tuned_kernel, "best_config", None))
            nbytes = N * K + 4 * N if fp8 else 2 * N * K
            us = graph_us(fns * 2, device)
            row = {
                "shape": name,
                "K": K,
                "N": N,
                "M": M,
                "method": method,
                "us": us,
                "us_do_bench": bench_us(fns, device),
                "weight_bytes": nbytes,
                "GBps": nbytes / us / 1e3,
                "pct_of_copy_bw": 100 * (nbytes / bw * 1e6) / us,
                "rel_err": rel(y, ref),
                "copies": copies,
            }
            if fp8:
                row["rel_err_vs_dequant"] = rel(y, ref_q)
            if best:
                row["config"] = best
            out.append(row)
            print(
                f"{name:11s} {K:6d}->{N:6d} M={M:2d} {method:14s} {us:9.1f} us"
                + (f" (do_bench {row['us_do_bench']:8.1f})" if row["us_do_bench"] else "")
                + f" {row['GBps']:7.0f} GB/s {row['pct_of_copy_bw']:5.1f}% rel_err {row['rel_err']:.2e}"
                + (f" (vs dequant {row['rel_err_vs_dequant']:.1e})" if fp8 else "")
                + (f" {best}" if best else ""),
                flush=True,
            )
    del ws, fp8s
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="small shapes (CPU smoke run)")
    ap.add_argument("--rows", default="1,2,4,8,16")
    ap.add_argument("--shapes", default=",".join(shapes(False)), help="comma list of qkv,o,gate_up,down,head_visual")
    ap.add_argument("--min-bytes", type=float, default=1e9, help="float8 bytes of weight copies per shape (L2: 50 MB)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list of " + ",".join(METHODS))
    ap.add_argument("--tensor-parallel", type=int, default=1, help="one rank's shapes of N-way tensor parallelism")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    dev = torch.device(args.device)
    tiny = args.tiny or dev.type != "cuda"
    rows = [int(r) for r in args.rows.split(",")]
    shp = {k: v for k, v in shapes(tiny, args.tensor_parallel).items() if k in args.shapes.split(",")}
    min_bytes = 1e5 if tiny else args.min_bytes
    bw = copy_bandwidth(dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    tv = getattr(triton, "__version__", None)
    print(f"{name} | torch {torch.__version__} | triton {tv} | copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    results = []
    for s, (K, N) in shp.items():
        results += run_shape(s, K, N, rows, dev, min_bytes, bw, args.methods.split(","))

    # one layer (qkv + o + gate_up + down) and 64 of them, per method and rows
    layers = emu35_34b_config().num_hidden_layers
    summary = []
    print(f"\nper layer ({' + '.join(LAYER)}), x{layers} layers; head_visual separately")
    print(f"{'method':14s} " + " ".join(f"{'M=' + str(m):>22s}" for m in rows))
    for method in METHODS:
        cells = []
        for M in rows:
            rs = [r for r in results if r["method"] == method and r["M"] == M and r["shape"] in LAYER]
            if len({r["shape"] for r in rs}) != len(LAYER):
                cells.append(f"{'-':>22s}")
                continue
            us = sum(r["us"] for r in rs)
            nbytes = sum(r["weight_bytes"] for r in rs)
            head = [r["us"] for r in results if r["method"] == method and r["M"] == M and r["shape"] == "head_visual"]
            summary.append(
                {
                    "method": method,
                    "M": M,
                    "layer_us": us,
                    "layer_GBps": nbytes / us / 1e3,
                    f"{layers}_layers_ms": layers * us / 1000,
                    "head_visual_us": head[0] if head else None,
                }
            )
            cells.append(f"{us:7.1f} us {layers * us / 1000:6.2f} ms {nbytes / us / 1e3:4.0f}")
        print(f"{method:14s} " + " ".join(cells))
    print("(cells: one layer's us, 64 layers' ms, GB/s)")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "device": name,
                    "torch": torch.__version__,
                    "triton": tv,
                    "copy_bandwidth_Bps": bw,
                    "tensor_parallel": args.tensor_parallel,
                    "results": results,
                    "layer_summary": summary,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
