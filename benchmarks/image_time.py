"""Time to generate one whole image, token by token and with speculative Jacobi decoding (model/jacobi.py).

A t2i request (CFG 2, the spec's image sampling: top-k 5120) whose image size is fixed, so every run decodes the same
h x (w + 1) + 1 tokens. Reported per grid and Jacobi window: wall time from the request to the finished image
(prefill, decode, and the decode of a small random vision tokenizer with the release's codebook size, not the
release's decoder), decode forwards, tokens per forward, ms per image token. Models as
in benchmarks/decode.py: random weights with the official-size vocabulary, tiny on a CPU, the 34B shape on one GPU.
Random weights make the Jacobi acceptance rate meaningless (drafts of a random model are no better or worse than a
trained model's in any way we know): its speed-up must be judged on trained weights; the token-by-token times hold.
720x720 is a 45x45 grid and 1024x1024 a 64x64 grid at the release's 16x downsampling.

    python benchmarks/image_time.py --shape tiny --grids 8x8 --windows 0,4,16
    python benchmarks/image_time.py --shape tiny --codes 1024 --grids 16x16 --windows 0,4,16   # small vocabulary
    python benchmarks/image_time.py --shape 34b --device cuda --grids 45x45,64x64 --windows 0,16 --out r.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.decode import bench_config, random_model, sync, write_record  # noqa: E402
from model.engine import Engine, Finished, GenerationRequest, ImageFinished  # noqa: E402
from model.random_checkpoint import official_size_ranks, tiny_ranks  # noqa: E402
from model.text_tokenizer import TextTokenizer, vision_token_list  # noqa: E402
from model.vision_tokenizer import VisionTokenizer, tiny_vision_config  # noqa: E402


def capture_graphs(eng: Engine, rows: int = 2) -> None:
    """Capture the decode-step CUDA graph of every KV bucket up front, so that no timed image pays for a capture."""
    if not eng.cuda_graphs:
        return
    cache, dev = eng._cache(rows), eng.device
    ids = torch.full((rows, 1), eng.tok.pad_id, device=dev)
    valid = torch.ones(rows, 1, dtype=torch.bool, device=dev)
    with torch.no_grad():
        for slot in range(0, eng.max_len, eng.graph_bucket):
            for visual in (False, True):
                eng._step(cache, ids, torch.full_like(ids, slot), valid, slot, visual)
    cache.reset()


def one_image(eng: Engine, h: int, w: int, window: int, seed: int) -> dict:
    req = GenerationRequest(
        task="t2i",
        question="a robot arm stacks a red block on a blue block, photo",
        image_size=(h, w),
        max_new_tokens=2 + len(f"{h}*{w}") + h * (w + 1),  # BOI, the size, IMG, the rows: it ends at the EOI
        seed=seed,
        logit_bias={eng.tok.boi_id: 1000.0},  # the image first: the run times exactly one image
        jacobi_window=window,
    )
    sync(eng.device)
    t = time.perf_counter()
    image_s = None
    for e in eng.generate(req):
        if isinstance(e, ImageFinished):
            sync(eng.device)
            image_s = time.perf_counter() - t
        if isinstance(e, Finished):
            fin = e
    assert image_s is not None, "no image was generated"
    tokens = h * (w + 1)  # visual tokens, EOLs and the EOI
    return {
        "grid": f"{h}x{w}",
        "window": window,
        "image_s": image_s,
        "prefill_s": fin.timings["prefill_s"],
        "decode_forwards": fin.timings["decode_forwards"],
        # the first token comes from the prefill; every other one from a decode forward (header ones included)
        "tokens_per_forward": (fin.generated_tokens - 1) / max(1, fin.timings["decode_forwards"]),
        "ms_per_image_token": 1000 * (image_s - fin.timings["prefill_s"]) / tokens,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["tiny", "34b"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--grids", default="45x45,64x64", help="token grids HxW, comma-separated")
    ap.add_argument("--windows", default="0,16", help="Jacobi windows (0: token by token)")
    ap.add_argument("--codes", type=int, default=131072, help="visual vocabulary (the release's 131072; small for CPU)")
    ap.add_argument(
        "--lookahead",
        default="1",
        help="token by token with (1) and without (0) the engine's lookahead (each step queued before its token is "
        "read back; on by default with CUDA graphs), comma-separated; Jacobi windows always run without",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    ranks = official_size_ranks() if args.codes == 131072 else tiny_ranks()
    tok = TextTokenizer(ranks, vision_token_list(args.codes))
    config = bench_config(args.shape, tok)
    torch.manual_seed(0)
    grids = [tuple(int(x) for x in g.split("x")) for g in args.grids.split(",")]
    max_len = max(h * (w + 1) for h, w in grids) + 256
    vq = VisionTokenizer(tiny_vision_config(n_embed=args.codes)).to(dev)  # decodes the official code range; small
    # as `serve` sets it up (model.engine.load_engine): compiled elementwise kernels on CUDA
    eng = Engine(random_model(config, dev, dtype), tok, vq, max_len=max_len, compile_kernels=dev.type == "cuda")
    capture_graphs(eng)
    one_image(eng, 2, 2, 0, args.seed)  # warm-up
    rows = []
    for h, w in grids:
        runs = [(int(x), bool(int(la))) for x in args.windows.split(",") for la in args.lookahead.split(",")]
        for window, lookahead in dict.fromkeys((wd, la and wd == 0 and eng.sampler is not None) for wd, la in runs):
            eng.lookahead = lookahead
            r = one_image(eng, h, w, window, args.seed) | {"lookahead": lookahead}
            rows.append(r)
            print(
                f"{r['grid']:>7} window {window:>3} lookahead {int(lookahead)}: {r['image_s']:7.2f} s per image, "
                f"{r['decode_forwards']:5d} forwards, {r['tokens_per_forward']:.2f} tokens/forward, "
                f"{r['ms_per_image_token']:.2f} ms per image token",
                flush=True,
            )
    write_record(args.out, dev, shape=args.shape, dtype=args.dtype, results=rows)


if __name__ == "__main__":
    main()
