"""Float8 skinny-GEMM variants at the 34B decode shapes: where does the float8 kernel lose to its bandwidth floor?

The float8 kernel of model/skinny_mm.py reads weights at 3.0-3.4 TB/s where the same kernel on bf16 weights reaches
4.0-4.2 (H200, 2026-11-29). Per loop iteration it issues 2.2x the instructions per weight byte of the bf16 kernel
(compiled for sm_90 and counted: 245 against 111 instructions for the same 8,192 weights), mostly the float8 -> bf16
conversion. This script times, on the same random weights and at the same rows:

- `cur`: the kernel as shipped (autotuned over its own configurations);
- `fold`: the conversion without its bf16x2 multiply by 2^120 (the factor moves into the per-channel scale, applied
  once per output), over the shipped and some larger configurations;
- `cur_wide`: the shipped kernel over the larger configurations (so a gain can be told apart from the tiles');
- `read`: the same tiles loaded and xor-ed, no arithmetic: what this access pattern reads at, the ceiling;
- `torch_sum`: torch reading the same bytes as int64 words (a plain streaming reduction).

Each variant's output is checked against the float32 product of the dequantized weights (relative error), and the
fastest config per shape is printed. Run on one GPU:

    python benchmarks/fp8_variants.py --out fp8_variants.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from skinny_mm import copy_bandwidth, graph_us, shapes  # noqa: E402

import model.skinny_mm as sk  # noqa: E402
from model.fp8 import Fp8Linear  # noqa: E402
from model.fp8_gluon import CONFIGS as GLUON_CONFIGS  # noqa: E402
from model.fp8_gluon import config_fits, fp8_mm  # noqa: E402
from model.transformer import swiglu  # noqa: E402

TWO_120 = tl.constexpr(2.0**120)

WIDE = [  # (BLOCK_N, BLOCK_K, warps, stages, SLICES): larger K tiles and more bytes in flight than the shipped list
    (16, 1024, 8, 3, 8),
    (16, 1024, 8, 4, 8),
    (16, 512, 4, 6, 4),
    (16, 512, 8, 4, 8),
    (32, 512, 4, 4, 4),
    (32, 512, 8, 4, 8),
    (32, 1024, 8, 3, 8),
    (64, 512, 8, 3, 8),
    (64, 256, 4, 6, 4),
    (128, 256, 8, 4, 8),
]


def configs(rows):
    return [triton.Config({"BLOCK_N": n, "BLOCK_K": k, "SLICES": s}, num_warps=w, num_stages=t)
            for n, k, w, t, s in rows]  # fmt: skip


SHIPPED = [(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages, c.kwargs["SLICES"])
           for c in sk._CONFIGS]  # fmt: skip


@triton.jit
def _variant_kernel(
    x_ptr, w_ptr, s_ptr, y_ptr, M, N, K,
    MODE: tl.constexpr,  # 0: shipped conversion, 1: fold 2^120 into the scale, 2: read only
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SLICES: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_n = offs_n % N
    offs_m = tl.arange(0, BLOCK_M)
    k3 = tl.arange(0, SLICES)[:, None, None] * (BLOCK_K // SLICES)
    kw = k3 + tl.arange(0, BLOCK_K // SLICES)[None, None, :]
    kx = k3 + tl.arange(0, BLOCK_K // SLICES)[None, :, None]
    m_mask = offs_m[None, None, :] < M
    w_ptrs = w_ptr + rows_n.to(tl.int64)[None, :, None] * K + kw
    x_ptrs = x_ptr + offs_m[None, None, :] * K + kx
    acc = tl.zeros((SLICES, BLOCK_N, BLOCK_M), dtype=tl.float32)
    bits = tl.zeros((SLICES, BLOCK_N, BLOCK_K // SLICES), dtype=tl.int8)
    for _ in range(0, tl.cdiv(K, BLOCK_K)):
        w = tl.load(w_ptrs)
        if MODE == 2:
            bits = bits ^ w.to(tl.int8, bitcast=True)
        else:
            x = tl.load(x_ptrs, mask=m_mask, other=0.0)
            if MODE == 0:
                acc += tl.dot(sk._e4m3_to_bf16(w), x)
            else:
                acc += tl.dot(sk._e4m3_to_bf16(w, True), x)
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    if MODE == 2:
        y = tl.sum(tl.sum(bits.to(tl.float32), axis=0), axis=1)[:, None] + tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    else:
        y = tl.sum(acc, axis=0)
    s = tl.load(s_ptr + rows_n)[:, None]
    if MODE == 1:
        y = (y * TWO_120) * s
    else:
        y = y * s
    y_ptrs = y_ptr + offs_m[None, :] * N + offs_n[:, None]
    tl.store(y_ptrs, y.to(tl.bfloat16), mask=(offs_m[None, :] < M) & (offs_n[:, None] < N))


def tuned(rows):
    return triton.autotune(configs(rows), key=["N", "K", "M", "MODE"])(_variant_kernel)


KERNELS = {"shipped": tuned(SHIPPED), "wide": tuned(WIDE), "all": tuned(SHIPPED + WIDE)}


def run(kernel, mode, x, w, s, y):
    M, K = x.shape
    N = w.shape[0]
    kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)](x, w, s, y, M, N, K, MODE=mode, BLOCK_M=16)
    return y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="2,16")
    ap.add_argument("--shapes", default="gate_up,down,qkv,o")
    ap.add_argument("--min-bytes", type=float, default=1e9)
    ap.add_argument(
        "--variants", default="skinny_mm,cur,cur_wide,fold,read,gluon", help="... and gluon_glu: SwiGLU in the epilogue"
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    bw = copy_bandwidth(dev)
    print(f"{torch.cuda.get_device_name(dev)} | torch {torch.__version__} | triton {triton.__version__} | "
          f"copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)  # fmt: skip
    shp = shapes(False)
    results = []
    for name in args.shapes.split(","):
        K, N = shp[name]
        copies = max(2, math.ceil(args.min_bytes / (N * K)))
        gen = torch.Generator(dev).manual_seed(0)
        fp8s = []
        for _ in range(copies):
            lin = nn.Linear(K, N, bias=False, device="meta")
            lin.weight = nn.Parameter(torch.randn(N, K, device=dev, generator=gen, dtype=torch.bfloat16) * 0.02)
            fp8s.append(Fp8Linear(lin))
            del lin
        nbytes = N * K + 4 * N
        for M in [int(r) for r in args.rows.split(",")]:
            x = torch.randn(M, K, device=dev, generator=gen, dtype=torch.bfloat16)
            ref = x.float() @ (fp8s[0].weight.float() * fp8s[0].scale.T).T
            ys = [torch.empty(M, N, device=dev, dtype=torch.bfloat16) for _ in fp8s]
            halves = [torch.empty(M, N // 2, device=dev, dtype=torch.bfloat16) for _ in fp8s]
            ref_glu = swiglu(*ref.bfloat16().chunk(2, dim=-1)).float()  # the SwiGLU of the fused [gate; up] product
            variants = {
                "skinny_mm": (None, None),
                **{f"gluon{c}": ("gluon", c) for c in GLUON_CONFIGS if config_fits(c, K)},
                **{f"gluon_glu{c}": ("gluon_glu", c) for c in GLUON_CONFIGS if config_fits(c, K) and not c[5]},
                "cur": (KERNELS["shipped"], 0),
                "cur_wide": (KERNELS["wide"], 0),
                "fold": (KERNELS["all"], 1),
                "read": (KERNELS["all"], 2),
            }
            wanted = args.variants.split(",")
            for vname, (kern, mode) in variants.items():
                if vname.split("(")[0] not in wanted:
                    continue
                if kern == "gluon":
                    fns = [
                        lambda f=f, y=y, x=x, c=mode: fp8_mm(x, f.weight, f.scale, out=y, config=c)
                        for f, y in zip(fp8s, ys)
                    ]
                elif kern == "gluon_glu":  # the same weights as a fused [gate; up], SwiGLU in the epilogue
                    fns = [
                        lambda f=f, y=y, x=x, c=mode: fp8_mm(x, f.weight, f.scale, out=y, config=c, glu=True)
                        for f, y in zip(fp8s, halves)
                    ]
                elif kern is None:
                    fns = [lambda f=f, y=y, x=x: sk.skinny_mm(x, f.weight, f.scale, out=y) for f, y in zip(fp8s, ys)]
                else:
                    fns = [
                        lambda f=f, y=y, x=x, kern=kern, mode=mode: run(kern, mode, x, f.weight, f.scale.reshape(-1), y)
                        for f, y in zip(fp8s, ys)
                    ]
                try:
                    out = fns[0]().clone()
                    torch.cuda.synchronize()
                    us = graph_us(fns * 2, dev)
                except Exception as e:  # a variant that does not compile must not end the run
                    print(f"{name} M={M} {vname}: {type(e).__name__}: {e}"[:300], flush=True)
                    continue
                want = ref_glu if kern == "gluon_glu" else ref
                err = float((out.float() - want).norm() / want.norm()) if mode != 2 else None
                best = str(getattr(kern, "best_config", "")) if kern not in (None, "gluon", "gluon_glu") else ""
                row = {"shape": name, "K": K, "N": N, "M": M, "variant": vname, "us": us,
                       "TBps": nbytes / us / 1e6, "pct_copy_bw": 100 * nbytes / us / 1e6 / (bw / 1e12),
                       "rel_err_vs_dequant": err, "config": best}  # fmt: skip
                results.append(row)
                e = "-" if err is None else f"{err:.1e}"
                print(f"{name:8s} M={M:2d} {vname:10s} {us:8.1f} us {row['TBps']:5.2f} TB/s "
                      f"{row['pct_copy_bw']:5.1f}%  err {e}  {best}", flush=True)  # fmt: skip
        del fp8s
        torch.cuda.empty_cache()
    print("\nsummary (us; TB/s)")
    for name in args.shapes.split(","):
        for M in [int(r) for r in args.rows.split(",")]:
            rs = [r for r in results if r["shape"] == name and r["M"] == M]
            best = {}  # the fastest Gluon config of each kind (plain, SwiGLU epilogue)
            for r in (r for r in rs if r["variant"].startswith("gluon")):
                kind = r["variant"].split("(")[0]
                best[kind] = min(best.get(kind, r), r, key=lambda r: r["us"])
            rs = [r for r in rs if not r["variant"].startswith("gluon")] + list(best.values())
            cells = [f"{r['variant']} {r['us']:.1f} ({r['TBps']:.2f})" for r in rs]
            print(f"{name:8s} M={M:2d}  " + " | ".join(cells))
    if args.out:
        Path(args.out).write_text(json.dumps({
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": torch.cuda.get_device_name(dev),
            "torch": torch.__version__, "triton": triton.__version__, "copy_bandwidth_Bps": bw, "results": results,
        }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
