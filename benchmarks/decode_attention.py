"""Decode attention at the 34B shape, alone: microseconds per layer for the default path (scores product, compiled
masked softmax, values product: `model.transformer.decode_attention`) and the Triton flash-decoding kernels of
`model/decode_attention.py` over a grid of their knobs (slots per inner step, programs per SM, warps, chunks merged
in the same kernel or by a second one).

Timed the engine's way: one CUDA graph of 64 layers, each reading its own layer of a KV cache (no L2 reuse between
layers), replayed (median of 20 replays); a layer's K and V bytes over the measured copy bandwidth give the floor.
Each variant is checked against the float32 reference first.

    python benchmarks/decode_attention.py --out decode_attention.json    # one GPU, about a minute
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import copy_bandwidth  # noqa: E402
from skinny_mm import graph_us  # noqa: E402

import model.decode_attention as da  # noqa: E402
from model.transformer import compile_kernels, decode_attention  # noqa: E402

LAYERS, K, G, D = 64, 8, 8, 128  # 34B: 8 kv heads, 64 query heads, head_dim 128


def layers_us(fn, dev: torch.device) -> float:
    """Microseconds per layer of one CUDA graph that calls fn(layer) for every layer (skinny_mm.py's graph_us)."""
    return graph_us([functools.partial(fn, i) for i in range(LAYERS)], dev, reps=20)


def time_shape(B: int, S: int, bw: float, knobs, dev) -> dict:
    """Every variant at B rows and S slots: microseconds per layer, max abs error against the reference."""
    scale = 1 / math.sqrt(D)
    g = torch.Generator(dev).manual_seed(0)
    kc = torch.randn(LAYERS, B, K, S, D, device=dev, generator=g).bfloat16()
    vc = torch.randn(LAYERS, B, K, S, D, device=dev, generator=g).bfloat16()
    q = torch.randn(B, K, G, D, device=dev, generator=g).bfloat16()
    valid = torch.ones(B, S, dtype=torch.bool, device=dev)
    valid[:, S - 40 :] = False  # the last slots of the bucket are still empty
    valid[0, :7] = False  # a padded prompt
    mask = valid[:, None, None, :].expand(B, 1, G, S)
    ref = da.decode_attention_reference(q, kc[0], vc[0], valid, scale).float()
    row = {"rows": B, "slots": S, "floor_us": 2 * B * K * S * D * 2 / bw * 1e6, "variants": {}}

    def products(i):
        return decode_attention(q, kc[i], vc[i], mask, scale)

    def flash(i):
        return da.triton_decode_attention(q, kc[i], vc[i], valid, scale)

    err = float((products(0).float() - ref).abs().max())
    row["variants"]["products"] = {"us": layers_us(products, dev), "max_abs_err": err}
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    for bs, pps, nw, one in knobs:
        da.BLOCK_S, da.PROGRAMS_PER_SM, da.NUM_WARPS, da.ONE_KERNEL = bs, pps, nw, one
        err = float((flash(0).float() - ref).abs().max())
        n = da.chunking(B * K, S, sms)[1]
        name = f"triton_{'one' if one else 'two'}_s{bs}_p{pps}_w{nw}"
        row["variants"][name] = {"us": layers_us(flash, dev), "max_abs_err": err, "chunks": n}
    da.BLOCK_S = None  # back to the module's choice (block_s)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="2,16", help="batch rows (2: one CFG stream)")
    ap.add_argument("--slots", default="1088,4096", help="cached slots attended (a multiple of 64)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    compile_kernels()
    bw = copy_bandwidth(dev)
    res = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(dev),
        "torch": torch.__version__,
        "copy_bandwidth_Bps": bw,
        "shape": {"layers": LAYERS, "kv_heads": K, "group": G, "head_dim": D},
        "runs": [],
    }
    # BLOCK_S, PROGRAMS_PER_SM, NUM_WARPS, ONE_KERNEL
    knobs = list(itertools.product((32, 64, 128), (1, 2, 4), (4, 8), (True, False)))
    for B, S in itertools.product(map(int, args.rows.split(",")), map(int, args.slots.split(","))):
        row = time_shape(B, S, bw, knobs, dev)
        v = row["variants"]
        head = f"rows {B:2d} slots {S:5d}: floor {row['floor_us']:5.2f} us"
        print(f"{head}, products {v['products']['us']:6.2f} us", flush=True)
        for name, r in sorted(v.items(), key=lambda kv: kv[1]["us"])[:6]:
            print(f"    {name:22s} {r['us']:7.2f} us  err {r['max_abs_err']:.4f}", flush=True)
        res["runs"].append(row)
        torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
