"""Fine-tune the shipped decoder on the device tool's GPU: episodes recorded there, plus an optional carried replay.

A collection's frames do not fit beside the repository in one device call (64 MiB in all), so both engines' episodes
are recorded on the device's 16 cores (`eval_on_device.sh with python3 -m emu35_robot train collect ...`; PyBullet
from the slim cp312 wheel `eval_on_device.sh prepare` builds). `run` builds their sequences on the GPU, adds the
replay if one is given, fine-tunes with the shipped recipe (`pipeline.stage_lm`), packages the bundle and writes the
decoder (float16 safetensors split under the 16 MiB file cap), its result and its loss log to OUT. `pack` builds a
replay here: the token sequences of a collection that cannot be recorded there, LZMA-compressed.

    python benchmarks/lm_on_device.py pack --data .data/vqf --engine pybullet --out .data/lmpack        # here
    python3 benchmarks/lm_on_device.py run --data /tmp/mj,/tmp/pb --steps 2000 --out $OUT             # there
    python benchmarks/lm_on_device.py join DIR BUNDLE    # here: the parts back into BUNDLE/model/model.safetensors

Building the sequences is most of a call (14,380 episodes x augment 2: 247 s on the device), and only the training
resumes (checkpoints every 500 steps): give `--until` so the first call ends on a checkpoint, and keep the total
`--steps` the same in the second call (the learning-rate schedule follows it).
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emu35_robot.training import pipeline  # noqa: E402
from model.vision_tokenizer import VisionTokenizer  # noqa: E402

SHIPPED = Path("emu35_robot/weights/emu35-mini")
PART = 14 * 2**20  # bytes per returned part of the decoder's weights (the device tool returns files of <= 16 MiB)


def pack(data: list[str], engine: str, augment: int, out: Path) -> None:
    keep = lambda eps: [e for e in eps if engine in e[0].env_id]  # noqa: E731
    split = tuple(keep(eps) for eps in pipeline.episodes([Path(d) for d in data]))
    vq = VisionTokenizer.from_pretrained(SHIPPED / "vision_tokenizer", dtype=torch.float32)
    t = time.perf_counter()
    seqs = pipeline.build_sequences(split, pipeline.recipe_tokenizer(), vq, augment)
    out.mkdir(parents=True, exist_ok=True)
    pipeline.save_sequences(out / "replay.npz", seqs)
    (out / "replay.npz.xz").write_bytes(lzma.compress((out / "replay.npz").read_bytes(), preset=6))
    (out / "replay.npz").unlink()
    meta = {"data": data, "engine": engine, "augment": augment, "episodes": pipeline.episode_counts(split)}
    meta |= {"train_sequences": len(seqs["train"]), "held_out_sequences": len(seqs["held_out"])}
    (out / "replay.json").write_text(json.dumps(meta, indent=1))
    size = (out / "replay.npz.xz").stat().st_size / 2**20
    print(f"{meta}: {size:.1f} MiB in {time.perf_counter() - t:.0f} s")


def run(args: argparse.Namespace) -> None:
    out, run_dir, data = Path(args.out), Path(args.run), [Path(d) for d in args.data.split(",")]
    shutil.copytree(SHIPPED / "vision_tokenizer", run_dir / "vq" / "vision_tokenizer", dirs_exist_ok=True)
    seq_file = run_dir / "sequences.npz"
    if args.replay and not seq_file.exists():  # with a replay, built here; without one, stage_lm builds them
        t = time.perf_counter()
        vq = VisionTokenizer.from_pretrained(run_dir / "vq" / "vision_tokenizer", device=args.device)
        seqs = pipeline.build_sequences(pipeline.episodes(data), pipeline.recipe_tokenizer(), vq, args.augment)
        n_own = len(seqs["train"])
        tmp = run_dir / "replay.npz"
        tmp.write_bytes(lzma.decompress((Path(args.replay) / "replay.npz.xz").read_bytes()))
        replay = pipeline.load_sequences(tmp)
        seqs["train"] += replay["train"]
        seqs["held_out"] += replay["held_out"]
        pipeline.save_sequences(seq_file, seqs)
        print(f"sequences: {n_own} own + {len(seqs['train']) - n_own} replay in {time.perf_counter() - t:.0f} s")
    recipe = dict(init=SHIPPED / "model", lr=args.lr, change_weight=args.change_weight, probe_n=args.probe_n)
    pipeline.stage_lm(data, run_dir, args.steps, args.batch, args.device, args.until, args.augment, **recipe)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("lm_result.json", "loss.jsonl", "loss.png"):
        if (run_dir / "lm" / name).exists():
            shutil.copy(run_dir / "lm" / name, out / name)
    if not (run_dir / "lm" / "lm_result.json").exists():
        return  # stopped at --until: the next call resumes
    bundle = pipeline.package(run_dir, run_dir / "bundle")
    blob = (bundle / "model" / "model.safetensors").read_bytes()
    for i in range(0, len(blob), PART):
        (out / f"model.safetensors.part{i // PART}").write_bytes(blob[i : i + PART])
    if args.replay:
        shutil.copy(Path(args.replay) / "replay.json", out / "replay.json")


def join(parts: Path, bundle: Path) -> None:
    """The decoder's parts from `run` back into `bundle`/model/model.safetensors (the shipped config beside it)."""
    files = sorted(parts.glob("model.safetensors.part*"), key=lambda p: int(p.suffix[5:]))
    target = bundle / "model" / "model.safetensors"
    target.write_bytes(b"".join(p.read_bytes() for p in files))
    print(f"{target}: {target.stat().st_size} bytes from {len(files)} parts")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--data", required=True, help="collection dirs, comma-separated")
    p.add_argument("--engine", default="pybullet", help="keep the episodes of env ids containing this")
    p.add_argument("--augment", type=int, default=0)
    p.add_argument("--out", default=".data/lmpack")
    r = sub.add_parser("run")
    r.add_argument("--data", required=True, help="collection dirs recorded there, comma-separated")
    r.add_argument("--replay", default="", help="a pack's directory (default: none)")
    r.add_argument("--run", default="/tmp/lmrun")
    r.add_argument("--steps", type=int, default=2400)
    r.add_argument("--until", type=int, default=None)
    r.add_argument("--batch", type=int, default=64)
    r.add_argument("--lr", type=float, default=3e-4)
    r.add_argument("--change-weight", type=float, default=2.0)
    r.add_argument("--augment", type=int, default=3)
    r.add_argument("--probe-n", type=int, default=0, help="free-running probe episodes (minutes; 0: none)")
    r.add_argument("--device", default="cuda", help="cpu: a smoke test of the whole path on a few steps")
    r.add_argument("--out", required=True)
    j = sub.add_parser("join")
    j.add_argument("parts")
    j.add_argument("bundle")
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(args.data.split(","), args.engine, args.augment, Path(args.out))
    elif args.cmd == "run":
        run(args)
    else:
        join(Path(args.parts), Path(args.bundle))


if __name__ == "__main__":
    main()
