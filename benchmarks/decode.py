"""Prefill and decode speed of our engine, for any config: tiny on a CPU, the 34B shape on one GPU.

Method (the same as shared/docs/performance-baseline.md, so figures compare): meta-device init, random normal(0, 0.02)
weights with norms 1, prefill a random prompt, then time single-token decode steps after warm-up with a synchronised
wall clock. A "step" here is what the engine does per generated token: one forward for all rows (CUDA-graph replay
on GPU), the CFG combination and sampling for every stream (`engine.draw_tokens`, as the engine runs them: one
captured graph per group on GPU), the host read of the sampled tokens and the upload of the next inputs. One stream
decodes as the engine decodes an image with its lookahead (`Engine._draw_ahead`: the next forward is queued before the
token is read back), timed as the wall clock over all steps divided by their number; `ms_per_step_synced` is the same
step with a read-back between steps (several streams: the batch engine's way, which has no lookahead).

    python benchmarks/decode.py --shape tiny                       # CPU smoke run
    python benchmarks/decode.py --shape 34b --device cuda --out r.json
    python benchmarks/decode.py --shape 34b --variants fused,skinny,fp8,skinny_fp8   # the Triton skinny GEMMs

Prints a table and, with --out, writes every number as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch import Tensor  # noqa: E402

from model import decode_attention, skinny_mm  # noqa: E402
from model.config import Emu35Config, emu35_34b_config  # noqa: E402
from model.engine import Draw, Engine, StepRequest, draw_tokens  # noqa: E402
from model.random_checkpoint import config_for_tokenizer, official_size_ranks  # noqa: E402
from model.sampling import IMAGE_SAMPLING  # noqa: E402
from model.skinny_mm import drop_skinny, use_pdl  # noqa: E402
from model.text_tokenizer import TextTokenizer, vision_token_list  # noqa: E402
from model.transformer import Emu35  # noqa: E402
from model.vision_tokenizer import VisionTokenizer, tiny_vision_config  # noqa: E402

VARIANTS = (
    "eager", "graphs", "compiled", "fused", "skinny", "skinny_pdl", "skinny_attn_sep", "skinny_attn", "fp8",
    "skinny_fp8", "skinny_fp8_attn_sep", "skinny_fp8_attn",
)  # fmt: skip


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device, gib: float = 4.0) -> float:
    """Bytes per second of a device-to-device copy, counting read + write."""
    if device.type != "cuda":
        n = int(2**28)  # 512 MiB of bf16 on a CPU
    else:
        n = int(gib * 2**30 / 2)
    x = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync(device)
    reps = 20 if device.type == "cuda" else 3
    t = time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    sync(device)
    dt = (time.perf_counter() - t) / reps
    del x, y
    return 2 * n * 2 / dt


def bench_config(shape: str, tok: TextTokenizer) -> Emu35Config:
    """The release's 34B shape, or a tiny one (4 layers, hidden 256) for CPU smoke runs, on `tok`'s vocabulary."""
    if shape == "34b":
        return emu35_34b_config()
    tiny = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8)
    return config_for_tokenizer(tok, num_key_value_heads=2, head_dim=64, **tiny)


def device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"


def write_record(out: str | None, dev: torch.device, **fields) -> dict:
    """The run's JSON record (date, device, threads, torch, then `fields`), written to `out` when given."""
    res = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **fields,
    }
    if out:
        Path(out).write_text(json.dumps(res, indent=2))
    return res


def random_model(config: Emu35Config, device, dtype) -> Emu35:
    with torch.device("meta"):
        lm = Emu35(config)
    lm = lm.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0.0, 0.02)
            p.requires_grad_(False)
    lm.inv_freq = None
    return lm.eval()


def prefill(eng: Engine, rows: int, prompt: int):
    """The engine's cache for `rows` rows after a random `prompt`-token prefill -> (cache, seconds it took)."""
    dev = eng.device
    cache = eng._cache(rows)
    ids = torch.randint(0, eng.lm.config.vocab_size, (rows, prompt), device=dev)
    sync(dev)
    t = time.perf_counter()
    slots = torch.arange(prompt, device=dev)
    with torch.no_grad():  # through the engine, so that a tensor-parallel leader mirrors it
        eng.forward(cache, ids, slots.expand(rows, prompt), slots, torch.ones_like(ids, dtype=torch.bool), prompt, 1)
    sync(dev)
    return cache, time.perf_counter() - t


def time_steps(eng: Engine, rows: int, cfg: bool, prompt: int, warmup: int, steps: int, visual: bool):
    """ms per engine decode step for `rows` rows (rows/2 CFG streams when cfg), after a `prompt`-token prefill:
    (prefill s, ms per step as the engine runs it, forward ms, ms per step with a read-back between steps)."""
    prefill_s, synced, fwd = time_synced_steps(eng, rows, cfg, prompt, warmup, steps, visual)
    if not looks_ahead(eng, rows, cfg):
        return prefill_s, synced, fwd, synced
    return prefill_s, time_lookahead_steps(eng, rows, cfg, prompt, warmup, steps, visual), fwd, synced


def looks_ahead(eng: Engine, rows: int, cfg: bool) -> bool:
    """Whether the engine decodes these rows with its lookahead: one stream only (several: the batch engine)."""
    return rows // (2 if cfg else 1) == 1 and eng.can_look_ahead()


def time_lookahead_steps(eng: Engine, rows: int, cfg: bool, prompt: int, warmup: int, steps: int, visual: bool):
    """One stream's ms per step as `Engine._decode` runs an image: each draw queues the step that feeds its token
    before the token is read back; wall clock over `steps` steps after `warmup`, with no sync between them."""
    dev = eng.device
    cache, _ = prefill(eng, rows, prompt)
    gen = torch.Generator(device=dev).manual_seed(0)
    tok = torch.randint(eng.visual.start, eng.visual.stop, (rows, 1))
    pos = torch.full((rows, 1), prompt)
    valid = torch.ones(rows, 1, dtype=torch.bool)
    with torch.no_grad():
        logits = eng._step(cache, tok, pos, valid, prompt, visual)
        for i in range(warmup + steps):
            if i == warmup:
                sync(dev)
                t = time.perf_counter()
            scores = logits if visual else logits[:, eng.visual]  # [rows, V']
            draw = Draw(scores, IMAGE_SAMPLING, gen, 3.0) if cfg else Draw(scores, IMAGE_SAMPLING, gen)
            pos = pos + 1
            nxt = StepRequest(tok, pos, valid, prompt + i + 1, visual)
            _, logits = eng._draw_ahead(draw, cache, nxt)
        sync(dev)
    return 1000 * (time.perf_counter() - t) / steps


def time_synced_steps(eng: Engine, rows: int, cfg: bool, prompt: int, warmup: int, steps: int, visual: bool):
    """ms per decode step for `rows` rows with the sampled tokens read back before the next step is queued (the
    median step), and the forward alone."""
    dev = eng.device
    cache, prefill_s = prefill(eng, rows, prompt)
    streams = rows // 2 if cfg else rows
    gens = [torch.Generator(device=dev).manual_seed(i) for i in range(streams)]
    tok = torch.randint(eng.visual.start, eng.visual.stop, (rows, 1), device=dev)
    pos = torch.full((rows, 1), prompt, device=dev)
    valid = torch.ones(rows, 1, dtype=torch.bool, device=dev)
    times = []
    with torch.no_grad():
        for i in range(warmup + steps):
            sync(dev)
            t = time.perf_counter()
            logits = eng._step(cache, tok, pos, valid, prompt + i, visual)  # [rows, V']
            scores = logits if visual else logits[:, eng.visual]  # [rows, V']
            R, scale = (2, 3.0) if cfg else (1, None)
            draws = [Draw(scores[R * j : R * j + R], IMAGE_SAMPLING, g, scale) for j, g in enumerate(gens)]
            nxt = draw_tokens(draws, eng.sampler)  # as the engine draws: CFG + top-k, one graph on CUDA; host ints
            tok = torch.tensor(nxt).repeat_interleave(R)[:, None] + eng.visual.start  # CPU, as the engine's
            pos = pos + 1
            times.append(time.perf_counter() - t)
            assert len(nxt) == streams
        # the forward alone (graph replay on GPU), to split the step into model time and sampling/host time
        fwd = []
        for i in range(steps):
            sync(dev)
            t = time.perf_counter()
            eng._step(cache, tok, pos, valid, prompt + warmup + i, visual)
            sync(dev)
            fwd.append(time.perf_counter() - t)
    med = lambda xs: 1000 * sorted(xs)[len(xs) // 2]  # noqa: E731
    return prefill_s, med(times[warmup:]), med(fwd)


def bytes_read_per_step(lm: Emu35, visual: slice | None) -> int:
    """Weight bytes one decode step must read: every projection, norm and the head (only its visual slice on
    image rows) once; not the embedding table, of which a step reads one row per token."""
    n = 0
    # tensor parallelism with a peer gather (model.lamport_all_reduce): each rank reads its share of the head's rows
    split = lm.tensor_parallel[1] if getattr(lm.model.layers[-1].reduce, "split_head", False) else 1
    for name, t in list(lm.named_parameters()) + list(lm.named_buffers()):
        if name.startswith("model.embed_tokens") or name == "inv_freq":
            continue
        rows = t.shape[0]
        if name == "lm_head.weight":
            rows = ((visual.stop - visual.start) if visual is not None else rows) // split
        n += t[:rows].numel() * t.element_size() if t.ndim else t.element_size()
    return n


@torch.no_grad()
def chunk_logits(lm: Emu35, ids: Tensor) -> Tensor:
    """Logits [n * T, V] of n independent sequences ids [n, T], one forward each: T <= 16 rows per product, so a
    skinny variant's float8 kernel computes them (more rows take the _scaled_mm / cuBLAS path)."""
    return torch.cat([lm(row[None]).logits[0] for row in ids])


@torch.no_grad()
def fp8_accuracy(lm: Emu35, ref: Tensor, ids: Tensor) -> dict:
    """Relative logit error and top-k agreement of the quantized model against bf16 logits `ref` [n * T, V]."""
    out = chunk_logits(lm, ids)
    top10 = lambda x: x.topk(10, dim=-1).indices  # noqa: E731
    overlap = (top10(out)[:, :, None] == top10(ref)[:, None, :]).any(-1).float().mean()
    return {
        "relative_logit_error": float((out - ref).norm() / ref.norm()),
        "top1_agreement": float((out.argmax(-1) == ref.argmax(-1)).float().mean()),
        "top10_overlap": float(overlap),
    }


def time_prefill(eng: Engine, rows: int, tokens: int, reps: int = 3) -> float:
    lm, dev = eng.lm, eng.device
    cache = eng._cache(rows)
    ids = torch.randint(0, lm.config.vocab_size, (rows, tokens), device=dev)
    best = float("inf")
    with torch.no_grad():
        for _ in range(reps):
            cache.reset()
            sync(dev)
            t = time.perf_counter()
            lm(ids, cache=cache, cache_pos=torch.arange(tokens, device=dev), kv_len=tokens, logits_to_keep=1)
            sync(dev)
            best = min(best, time.perf_counter() - t)
    return best


def record_prefill(eng: Engine, tokens: int, res: dict, label: str, fields: dict) -> None:
    """Time a `tokens`-token prefill of 1 and 2 rows on `eng`; append each to res["prefill"] (with `fields`), print."""
    for rows in (1, 2):
        s = time_prefill(eng, rows, tokens)
        res["prefill"].append({"rows": rows, "tokens": tokens, "s": s, **fields})
        print(f"prefill {tokens} tokens x {rows} row(s), {label}: {1000 * s:.0f} ms", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["tiny", "34b"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--prefill", type=int, default=2048, help="prompt length of the prefill measurement")
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--streams", default="1,1cfg,4cfg,8cfg", help="comma list: N (no CFG) or Ncfg (2N rows)")
    ap.add_argument(
        "--variants",
        default="graphs,compiled,fused,fp8",
        help="eager; graphs; compiled (graphs + fused elementwise kernels); fused (compiled + fused "
        "q/k/v and gate/up weights); skinny (fused + Triton skinny GEMMs, model/skinny_mm.py); skinny_pdl (skinny "
        "launched with programmatic dependent launch, model.skinny_mm.use_pdl); skinny_attn (skinny + "
        "the Triton decode attention, model/decode_attention.py); fp8 (fused + float8 "
        "weights through torch._scaled_mm); skinny_fp8 (fused + float8 weights through the Triton kernel); "
        "skinny_fp8_attn (skinny_fp8 + the Triton decode attention); *_attn_sep: the same with the decode fusions "
        "off (QK-norm + RoPE compiled and the KV writes as index_copy_, not decode_attention.qk_norm_rope_kv; SwiGLU "
        "a kernel of its own, not gate_up's epilogue: model.skinny_mm.FUSE_SWIGLU; results before 2026-12-01 evening "
        "call the first alone _sepkv). They "
        f"change the model in place: keep the order {','.join(VARIANTS)}",
    )
    ap.add_argument("--graph-bucket", type=int, default=None, help="the engine's KV bucket (default: the engine's)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    # The official-size vocabulary (151,643 ranks + 131,072 visual tokens): every special id is the official one.
    tok = TextTokenizer(official_size_ranks(), vision_token_list(131072))
    config = bench_config(args.shape, tok)
    vq = VisionTokenizer(tiny_vision_config())  # the engine encodes no images here; only its factor is read
    config.max_position_embeddings = max(config.max_position_embeddings, 8192)
    torch.manual_seed(0)
    bw = copy_bandwidth(dev)
    t = time.perf_counter()
    lm = random_model(config, dev, dtype)
    sync(dev)
    init_s = time.perf_counter() - t
    elt = torch.finfo(dtype).bits // 8
    weight_bytes = sum(p.numel() for p in lm.parameters()) * elt
    gpu = device_name(dev)
    res = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": gpu,
        "dtype": args.dtype,
        "shape": {
            k: getattr(config, k)
            for k in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
            )
        },
        "params": sum(p.numel() for p in lm.parameters()),
        "weight_bytes": weight_bytes,
        "copy_bandwidth_Bps": bw,
        "torch": torch.__version__,
        "init_s": init_s,
        "decode": [],
        "prefill": [],
    }
    print(
        f"{gpu} | {args.dtype} | {res['params'] / 1e9:.2f} B params, {weight_bytes / 1e9:.1f} GB | copy bandwidth "
        f"{bw / 1e12:.2f} TB/s | all-weights floor {1000 * weight_bytes / bw:.2f} ms/step",
        flush=True,
    )

    # prefill first, eagerly on the bf16 weights as loaded (the fp8 variants convert them in place); the variants
    # below time it again as they serve it (fused projections, compiled kernels; float8 above 16 rows: _scaled_mm)
    eng = Engine(lm, tok, vq, max_len=args.prefill + 8, cuda_graphs=False, fuse_projections=False)
    record_prefill(eng, args.prefill, res, args.dtype, {"weights": args.dtype, "variant": "eager"})
    del eng

    specs = []
    for s in args.streams.split(","):
        cfg = s.endswith("cfg")
        n = int(s[:-3] if cfg else s)
        specs.append((n * (2 if cfg else 1), cfg, s))
    variants = args.variants.split(",")
    if any(v not in VARIANTS for v in variants) or variants != sorted(variants, key=VARIANTS.index):
        ap.error(f"--variants: some of {','.join(VARIANTS)}, in that order")
    variants = variants if dev.type == "cuda" else ["eager"]
    max_len = args.prompt + args.warmup + args.steps + 1
    ref = None
    for variant in variants:
        fp8 = variant in ("fp8", "skinny_fp8", "skinny_fp8_attn_sep", "skinny_fp8_attn")
        if fp8 and ref is None:  # bf16 logits of the same weights, to measure what FP8 costs
            acc_ids = torch.randint(
                0, config.vocab_size, (16, 16), device=dev, generator=torch.Generator(dev).manual_seed(1)
            )
            ref = chunk_logits(lm, acc_ids)
        if variant == "fp8":  # a previous skinny variant's bf16 projections back to nn.Linear for quantize_fp8
            drop_skinny(lm)
        attn = "_attn" in variant
        decode_attention.FUSED_KV_WRITE = skinny_mm.FUSE_SWIGLU = not variant.endswith("_sep")
        use_pdl(variant == "skinny_pdl")
        eng = Engine(
            lm,
            tok,
            vq,
            max_len=max(max_len, args.prefill + 1),
            cuda_graphs=variant != "eager",
            compile_kernels=variant not in ("eager", "graphs"),
            fuse_projections=variant not in ("eager", "graphs", "compiled"),
            fp8=fp8,
            skinny=variant.startswith("skinny"),
            triton_attention=attn,
            **({"graph_bucket": args.graph_bucket} if args.graph_bucket else {}),
        )
        if variant in ("fused", "skinny", "skinny_pdl", "skinny_fp8"):  # prefill as this engine serves it
            record_prefill(eng, args.prefill, res, variant, {"variant": variant})
        if fp8:
            key = f"{variant}_accuracy"
            res[key] = fp8_accuracy(lm, ref, acc_ids)
            print(f"{variant} against bf16 on the same weights: {res[key]}", flush=True)
        for rows, cfg, label in specs:
            visual = cfg  # CFG steps are image rows: the head computes only the visual slice
            try:
                prefill_s, ms, fwd_ms, synced_ms = time_steps(
                    eng, rows, cfg, args.prompt, args.warmup, args.steps, visual
                )
            except torch.OutOfMemoryError as e:  # noqa: PERF203
                print(f"{variant:9s} {label:6s} out of memory: {e}", flush=True)
                continue
            # bytes a step must read: the weights (the visual slice of the head on image rows) + every row's KV
            # cache up to the attended length (the engine's KV bucket of the last step's slot)
            kv_len = eng.kv_bucket(args.prompt + args.warmup + args.steps)
            kv_bytes = rows * kv_len * 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * elt
            moved = bytes_read_per_step(lm, eng.visual if visual else None)
            floor_ms = 1000 * moved / bw
            floor_kv_ms = 1000 * (moved + kv_bytes) / bw
            row = {
                "variant": variant,
                "streams": label,
                "rows": rows,
                "ms_per_step": ms,
                "ms_per_step_synced": synced_ms,
                "lookahead": looks_ahead(eng, rows, cfg),
                "forward_ms": fwd_ms,
                "bytes_read": moved,
                "floor_ms": floor_ms,
                "floor_with_kv_ms": floor_kv_ms,
                "x_all_weights_floor": ms / (1000 * weight_bytes / bw),
                "x_floor_with_kv": ms / floor_kv_ms,
                "x_floor": ms / floor_ms,
                "pct_of_bandwidth": 100 * floor_ms / ms,
                "tokens_per_s_per_stream": 1000 / ms,
                "prefill_prompt_s": prefill_s,
                "aggregate_tokens_per_s": (rows // (2 if cfg else 1)) * 1000 / ms,
            }
            res["decode"].append(row)
            print(
                f"{variant:9s} {label:6s} rows {rows:2d}: {ms:8.2f} ms/step (synced {synced_ms:.2f}, forward "
                f"{fwd_ms:.2f}) = "
                f"{row['x_all_weights_floor']:.3f}x all-weights floor (the issue's); against the bytes it reads "
                f"{row['x_floor']:.2f}x, {row['x_floor_with_kv']:.2f}x with KV "
                f"({row['pct_of_bandwidth']:.0f}% of copy bandwidth), {row['aggregate_tokens_per_s']:.1f} tok/s",
                flush=True,
            )
        eng._graphs.clear()
        eng._caches.clear()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
