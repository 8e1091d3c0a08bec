"""Aggregate decode throughput of continuous batching: N concurrent requests in one `BatchEngine`.

Each request is a CFG text request (2 rows) with EOS suppressed, so it decodes exactly --tokens tokens; with --image
each is a text-to-image request (CFG 2, the spec's t2i image sampling, the visual head) whose fixed-size image starts
at once (--tokens should stay within the image's BOI, size, IMG and 32 x 33 rows: 1063 tokens). All N join at the
first step. Before the timed round the same BatchEngine runs a short untimed one with the same N, so every graph shape
the timed round replays (rows, KV bucket, head) is captured already (with the default --max-len every step is in one
KV bucket). Reported: aggregate generated tokens per second over the decode (prefills excluded), ms per batched step,
and the same N requests run one after another through `Engine.generate` for comparison (after one untimed request).
--overhead also times each step's forward with the device synchronized around it: the rest of a step (sampling, the
per-request logic, assembling the inputs) is what batching adds per step; the synchronization itself costs the overlap
of that work with the forward on a GPU, so read it as an upper bound there. Models as in benchmarks/decode.py: random
weights, the official-size vocabulary (--codes: a small one instead); tiny on a CPU, the 34B shape on one GPU.

    python benchmarks/batching.py --shape tiny --threads 2
    python benchmarks/batching.py --shape tiny --threads 1 --codes 1024 --overhead   # host cost, a cheap forward
    python benchmarks/batching.py --shape 34b --device cuda --graphs --image --out r.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.decode import bench_config, random_model, sync, write_record  # noqa: E402
from model.batching import BatchEngine  # noqa: E402
from model.engine import Engine, Finished, GenerationRequest  # noqa: E402
from model.random_checkpoint import official_size_ranks, tiny_ranks  # noqa: E402
from model.text_tokenizer import TextTokenizer, vision_token_list  # noqa: E402
from model.vision_tokenizer import VisionTokenizer, tiny_vision_config  # noqa: E402

IMAGE_GRID = (32, 32)  # token grid of --image requests
WARMUP_TOKENS = 16  # the untimed round: past an image's 7 header tokens, so both heads' graphs are captured


def request(tok: TextTokenizer, i: int, tokens: int, image: bool) -> GenerationRequest:
    if image:
        return GenerationRequest(
            task="t2i",
            question=f"robot {i} stacks block {i} on the desk",
            image_size=IMAGE_GRID,
            max_new_tokens=tokens,
            seed=i,
            logit_bias={tok.boi_id: 1000.0},  # the image first
        )
    return GenerationRequest(
        task="story",
        question=f"robot {i} tidies desk number {i}",
        max_new_tokens=tokens,
        seed=i,
        cfg_scale=3.0,
        logit_bias={tok.eos_id: -1000.0, tok.boi_id: -1000.0},
    )


class TimedBatch(BatchEngine):
    """A BatchEngine that times its forwards, the device synchronized before and after each."""

    forward_s = 0.0

    def _forward(self, *args, **kw):
        sync(self.engine.device)
        t = time.perf_counter()
        out = super()._forward(*args, **kw)
        sync(self.engine.device)
        self.forward_s += time.perf_counter() - t
        return out


def run(batch: BatchEngine, n: int, tokens: int, image: bool) -> tuple[int, float, int]:
    """n requests decoding together in `batch` -> (tokens decoded, seconds, batched steps)."""
    fins = []
    for i in range(n):
        batch.add(
            request(batch.engine.tok, i, tokens, image), lambda e: fins.append(e) if isinstance(e, Finished) else None
        )
    steps = batch.steps
    sync(batch.engine.device)
    t = time.perf_counter()
    while batch.active:
        batch.step()
    sync(batch.engine.device)
    dt = time.perf_counter() - t
    return sum(f.generated_tokens - 1 for f in fins), dt, batch.steps - steps  # the first token came from the prefill


def batched(eng: Engine, n: int, tokens: int, graphs: bool, image: bool, overhead: bool, lookahead: bool) -> dict:
    """Aggregate tokens/s of n requests decoding together, after an untimed round at the same n."""
    batch = (TimedBatch if overhead else BatchEngine)(eng, max_streams=n, cuda_graphs=graphs, lookahead=lookahead)
    run(batch, n, min(tokens, WARMUP_TOKENS), image)
    batch.forward_s = 0.0
    decoded, dt, steps = run(batch, n, tokens, image)
    res = {"batched_tokens_per_s": decoded / dt, "ms_per_batched_step": 1000 * dt / steps}
    if overhead:
        res["forward_ms_per_step"] = 1000 * batch.forward_s / steps
    return res


def sequential(eng: Engine, n: int, tokens: int, image: bool) -> float:
    """Tokens/s of the same n requests one after another (decode time only)."""
    list(eng.generate(request(eng.tok, n, min(tokens, WARMUP_TOKENS), image)))  # captures the solo graphs
    fins = [list(eng.generate(request(eng.tok, i, tokens, image)))[-1] for i in range(n)]
    return sum(f.generated_tokens for f in fins) / sum(f.timings["decode_s"] for f in fins)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["tiny", "34b"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--tokens", type=int, default=128, help="tokens per request")
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--codes", type=int, default=131072, help="visual vocabulary (the release's; tiny shape: any)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--graphs", action="store_true", help="the batch's steps as CUDA graphs (BatchEngine(cuda_graphs))")
    ap.add_argument("--image", action="store_true", help=f"text-to-image requests ({IMAGE_GRID[0]}x{IMAGE_GRID[1]})")
    ap.add_argument("--overhead", action="store_true", help="also time each batched step's forward alone")
    ap.add_argument(
        "--lookahead",
        nargs="?",
        const="1",
        default="1",
        help="1: BatchEngine(lookahead=True), the next step queued before the tokens are read back inside images (as "
        "serve runs it on a GPU); 0: off; a comma list (e.g. 1,0) runs each stream count once per value, an A/B in "
        "one process",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    ranks = official_size_ranks() if args.codes == 131072 else tiny_ranks()
    tok = TextTokenizer(ranks, vision_token_list(args.codes))
    config = bench_config(args.shape, tok)
    torch.manual_seed(0)
    lm = random_model(config, dev, dtype)
    vq = VisionTokenizer(tiny_vision_config(n_embed=args.codes)).to(dev)  # decodes the whole code range; small
    eng = Engine(lm, tok, vq, max_len=args.max_len, compile_kernels=dev.type == "cuda")  # as load_engine serves
    lookaheads = [bool(int(v)) for v in args.lookahead.split(",")]
    rows = []
    for n in (int(s) for s in args.streams.split(",")):
        seq = sequential(eng, n, args.tokens, args.image)
        for la in lookaheads:
            res = batched(eng, n, args.tokens, args.graphs, args.image, args.overhead, la)
            rows.append({"streams": n, "lookahead": la, **res, "sequential_tokens_per_s": seq})
            agg, ms = res["batched_tokens_per_s"], res["ms_per_batched_step"]
            fwd = f" (forward {res['forward_ms_per_step']:6.2f})" if args.overhead else ""
            print(
                f"{n:>3} streams, lookahead {int(la)}: batched {agg:8.1f} tok/s, {ms:7.2f} ms/step{fwd}, one at a "
                f"time {seq:8.1f} tok/s, x{agg / seq:.2f}",
                flush=True,
            )
    fields = dict(
        tokens_per_request=args.tokens,
        batch_cuda_graphs=args.graphs,
        image_requests=args.image,
        lookahead=lookaheads if len(lookaheads) > 1 else lookaheads[0],
    )
    write_record(args.out, dev, shape=args.shape, dtype=args.dtype, codes=args.codes, **fields, results=rows)


if __name__ == "__main__":
    main()
