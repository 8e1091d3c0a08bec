"""Where a decode step's time goes, at the 34B shape on one GPU: kernels by total time (torch.profiler), and the
matrix products alone (every weight of the step multiplied once, in one CUDA graph) against the copy-bandwidth floor.

    python benchmarks/profile_step.py --rows 2 --out $OUT/profile.txt
    python benchmarks/profile_step.py --prefill 2048 --out $OUT/profile.txt    # and where a 2k prefill's time goes
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--prefill", type=int, default=0, help="also profile a prefill of this many tokens, one row")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    config = emu35_34b_config()
    bw = copy_bandwidth(dev)
    lm = random_model(config, dev, torch.bfloat16)
    tok = TextTokenizer(official_size_ranks(), vision_token_list(131072))
    max_len = max(args.prompt, args.prefill) + 64
    eng = Engine(lm, tok, VisionTokenizer(tiny_vision_config()), max_len=max_len, compile_kernels=True)
    B = args.rows
    lines = []

    # matrix products alone: every weight a decode step reads, multiplied by B rows
    weights = [p for n, p in lm.named_parameters() if p.ndim == 2 and "embed" not in n and "lm_head" not in n]
    weights.append(lm.lm_head.weight[eng.visual])
    x = {w.shape[1]: torch.randn(B, w.shape[1], device=dev, dtype=torch.bfloat16) for w in weights}
    gemm_bytes = sum(w.numel() * 2 for w in weights)
    ms = graph_ms(lambda: [torch.nn.functional.linear(x[w.shape[1]], w) for w in weights])
    floor = 1000 * gemm_bytes / bw
    lines.append(
        f"matrix products alone, {B} rows: {ms:.2f} ms for {gemm_bytes / 1e9:.1f} GB = {floor:.2f} ms floor "
        f"-> {ms / floor:.2f}x ({gemm_bytes / ms / 1e9:.2f} TB/s)"
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
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for i in range(5):
                eng._step(cache, t, pos, valid, args.prompt + 3 + i, True)
            torch.cuda.synchronize()
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
