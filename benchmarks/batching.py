"""Aggregate decode throughput of continuous batching: N concurrent requests in one `BatchEngine`.

Each request is a CFG text request (2 rows) with EOS suppressed, so it decodes exactly --tokens tokens; all N join at
the first step. Reported: aggregate generated tokens per second over the decode (prefills excluded), and the same N
requests run one after another through `Engine.generate` for comparison. Models as in benchmarks/decode.py: random
weights, the official-size vocabulary; tiny on a CPU, the 34B shape on one GPU.

    python benchmarks/batching.py --shape tiny --threads 2
    python benchmarks/batching.py --shape 34b --device cuda --out r.json
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
from model.random_checkpoint import official_size_ranks  # noqa: E402
from model.text_tokenizer import TextTokenizer, vision_token_list  # noqa: E402
from model.vision_tokenizer import VisionTokenizer, tiny_vision_config  # noqa: E402


def request(tok: TextTokenizer, i: int, tokens: int) -> GenerationRequest:
    return GenerationRequest(
        task="story",
        question=f"robot {i} tidies desk number {i}",
        max_new_tokens=tokens,
        seed=i,
        cfg_scale=3.0,
        logit_bias={tok.eos_id: -1000.0, tok.boi_id: -1000.0},
    )


def batched(eng: Engine, n: int, tokens: int, graphs: bool = False) -> float:
    """Aggregate tokens/s of n requests decoding together."""
    batch = BatchEngine(eng, max_streams=n, cuda_graphs=graphs)
    fins = []
    for i in range(n):
        batch.add(request(eng.tok, i, tokens), lambda e: fins.append(e) if isinstance(e, Finished) else None)
    sync(eng.device)
    t = time.perf_counter()
    while batch.active:
        batch.step()
    sync(eng.device)
    dt = time.perf_counter() - t
    return sum(f.generated_tokens - 1 for f in fins) / dt  # the first token of each came from its prefill


def sequential(eng: Engine, n: int, tokens: int) -> float:
    """Tokens/s of the same n requests one after another (decode time only)."""
    fins = [list(eng.generate(request(eng.tok, i, tokens)))[-1] for i in range(n)]
    return sum(f.generated_tokens for f in fins) / sum(f.timings["decode_s"] for f in fins)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["tiny", "34b"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per request")
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--graphs", action="store_true", help="the batch's steps as CUDA graphs (BatchEngine(cuda_graphs))")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    tok = TextTokenizer(official_size_ranks(), vision_token_list(131072))
    config = bench_config(args.shape, tok)
    torch.manual_seed(0)
    lm = random_model(config, dev, dtype)
    eng = Engine(lm, tok, VisionTokenizer(tiny_vision_config()), max_len=args.max_len)
    batched(eng, 1, 8, args.graphs)  # warm-up
    rows = []
    for n in (int(s) for s in args.streams.split(",")):
        agg, seq = batched(eng, n, args.tokens, args.graphs), sequential(eng, n, args.tokens)
        rows.append({"streams": n, "batched_tokens_per_s": agg, "sequential_tokens_per_s": seq})
        print(f"{n:>3} streams: batched {agg:8.1f} tok/s, one at a time {seq:8.1f} tok/s, x{agg / seq:.2f}", flush=True)
    fields = dict(tokens_per_request=args.tokens, batch_cuda_graphs=args.graphs, results=rows)
    write_record(args.out, dev, shape=args.shape, dtype=args.dtype, **fields)


if __name__ == "__main__":
    main()
