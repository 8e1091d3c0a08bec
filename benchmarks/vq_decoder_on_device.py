"""Fine-tune the shipped tokenizer's pixel decoder on the device tool's GPU (`train_vq(..., decoder_only=True)`).

The collection does not fit beside the repository in one device call (64 MiB in all), so `pack` stores its frames as
frame-to-frame differences, LZMA-compressed (about 2.3 KB a frame), and keeps a share of the training episodes; the
held-out episodes (the pipeline's per-scene split) are kept whole. `run` trains one variant for a time budget (the
step count comes from the speed measured on the spot, so several variants can share the GPU) and writes the result
and the tokenizer in float16 (as `train package` ships it) to OUT.

    python benchmarks/vq_decoder_on_device.py pack --data data/vqf --out .data/vqpack     # here
    python3 benchmarks/vq_decoder_on_device.py run B5 --colour-weight 5 --out $OUT         # there, .data/vqpack carried
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.train_vq import VQTrainConfig, psnr, train_vq  # noqa: E402
from model.vision_tokenizer import VisionTokenizer  # noqa: E402

SHIPPED = "emu35_robot/weights/emu35-mini/vision_tokenizer"


def pack(data: list[str], out: Path, keep_every: int) -> None:
    from emu35_robot.training import pipeline

    train, held, e_train, e_held = pipeline.episodes([Path(d) for d in data])
    keep = [f for eps in (train, e_train) for i, (_, f) in enumerate(eps) if i % keep_every]  # drop every Nth
    tr, hd = np.concatenate(keep), np.concatenate([f for _, f in held + e_held])
    a = np.concatenate([tr, hd])
    diff = np.concatenate([a[:1], a[1:] - a[:-1]])  # uint8, mod 256: mostly zeros within an episode
    out.mkdir(parents=True, exist_ok=True)
    (out / "frames.xz").write_bytes(lzma.compress(diff.tobytes(), preset=6))
    (out / "frames.json").write_text(json.dumps({"train": len(tr), "held": len(hd), "shape": list(a.shape[1:])}))
    print(f"{len(tr)} training frames, {len(hd)} held out: {(out / 'frames.xz').stat().st_size / 2**20:.1f} MiB")


def unpack(d: Path) -> tuple[np.ndarray, np.ndarray]:
    meta = json.loads((d / "frames.json").read_text())
    a = np.frombuffer(lzma.decompress((d / "frames.xz").read_bytes()), np.uint8).reshape(-1, *meta["shape"])
    a = np.cumsum(a, axis=0, dtype=np.uint8)  # undo the differences (mod 256)
    return a[: meta["train"]], a[meta["train"] :]


def run(args: argparse.Namespace) -> None:
    tr, held = unpack(Path(args.frames))
    vq = VisionTokenizer.from_pretrained(args.init).cuda()
    p0 = psnr(vq, held)
    cfg = VQTrainConfig(steps=10**6, batch_size=args.batch, lr=args.lr, warmup=100, log_every=100,
                        ckpt_every=10**6, colour_weight=args.colour_weight, decoder_only=True)  # fmt: skip
    probe = f"/tmp/probe_{args.name}"
    train_vq(vq, tr, held[:64], probe, cfg, progress=False, until=50)  # warm-up
    t = time.time()
    train_vq(vq, tr, held[:64], probe, cfg, progress=False, until=150)  # speed, with whatever else shares the GPU
    per = (time.time() - t) / 100
    vq = VisionTokenizer.from_pretrained(args.init).cuda()
    cfg = replace(cfg, steps=int(args.budget_s / per), ckpt_every=1000)
    run_dir = Path(f"/tmp/run_{args.name}")
    res = train_vq(vq, tr, held, run_dir, cfg, progress=False)
    half = VisionTokenizer.from_pretrained(run_dir / "vision_tokenizer", dtype=torch.float16)
    half.save_pretrained(f"/tmp/half_{args.name}")
    res.update(name=args.name, colour_weight=args.colour_weight, lr=args.lr, batch=args.batch, psnr_init=p0,
               s_per_step=per, device=torch.cuda.get_device_name(), psnr_fp16=psnr(half.cuda(), held),
               decoder_only=True, init=args.init)  # fmt: skip
    res["log"] = [json.loads(x) for x in (run_dir / "vq_loss.jsonl").read_text().splitlines()][-10:]
    out = Path(args.out)
    (out / f"{args.name}.json").write_text(json.dumps(res, indent=1))
    shutil.copy(f"/tmp/half_{args.name}/model.ckpt", out / f"{args.name}.ckpt")  # float16: under the 16 MiB file cap
    print(args.name, f"held-out PSNR {p0:.2f} -> {res['psnr']:.2f} dB in {cfg.steps} steps ({per:.3f} s/step)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--data", required=True, help="collection dirs, comma-separated")
    p.add_argument("--out", default=".data/vqpack")
    p.add_argument("--keep-every", type=int, default=5, help="drop every Nth training episode (to fit the carry)")
    r = sub.add_parser("run")
    r.add_argument("name")
    r.add_argument("--frames", default=".data/vqpack")
    r.add_argument("--init", default=SHIPPED, help="the tokenizer whose codes to keep (a vision_tokenizer dir)")
    r.add_argument("--colour-weight", type=float, default=5.0)
    r.add_argument("--lr", type=float, default=3e-4)
    r.add_argument("--batch", type=int, default=128)
    r.add_argument("--budget-s", type=float, default=360.0, help="training seconds (steps = budget / measured speed)")
    r.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(args.data.split(","), Path(args.out), args.keep_every)
    else:
        run(args)


if __name__ == "__main__":
    main()
