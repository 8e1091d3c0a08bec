"""Decode speed with tensor parallelism (model/tensor_parallel.py) against one GPU, at the 34B shape.

    torchrun --nproc-per-node 2 benchmarks/tensor_parallel.py --out r.json     # 2 GPUs, NCCL
    torchrun --nproc-per-node 2 benchmarks/tensor_parallel.py --tiny           # CPU smoke run, gloo, tiny config
    python benchmarks/tensor_parallel.py --engine --world 2 --out r.json       # serve --tensor-parallel's path
    python benchmarks/tensor_parallel.py --engine --world 2 --tiny             # its CPU smoke run

Each rank builds its own shard directly on its GPU (meta-device model, `shard_emu35` on meta, then random normal(0,
0.02) weights): the full 34B is never built on one device. Replicated weights (embeddings, norms, head) get the same
seed on every rank and sharded ones a per-rank seed, so every rank computes the same logits and samples the same
tokens. The step timed is benchmarks/decode.py's: one CFG stream (2 rows), image rows (visual-slice head), one engine
decode step (a CUDA-graph replay with the two all-reduces per block inside it, then CFG combination and sampling).

Then, with --single (default), rank 0 frees its shard and times the same step on the full model alone on its GPU
(68 GB of bf16 weights at the 34B shape: needs an 80 GB+ GPU) while the other ranks wait. Rank 0 prints one JSON object.

--engine times the same step through the serving path instead, without torchrun: `model.tp_engine` spawns the other
ranks and rank 0's engine sends every model call to them over a pipe before running it (what `emu35-robot serve
--tensor-parallel N` runs), so the figure includes that protocol's cost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import bytes_read_per_step, copy_bandwidth, prefill, sync, time_steps  # noqa: E402

from model.config import Emu35Config, emu35_34b_config  # noqa: E402
from model.engine import Engine  # noqa: E402
from model.lamport_all_reduce import pdl_after_sums  # noqa: E402
from model.random_checkpoint import config_for_tokenizer, official_size_ranks, tiny_ranks  # noqa: E402
from model.skinny_mm import use_pdl  # noqa: E402
from model.tensor_parallel import shard_dim, shard_emu35, use_peer_all_reduce  # noqa: E402
from model.text_tokenizer import TextTokenizer, vision_token_list  # noqa: E402
from model.transformer import Emu35  # noqa: E402
from model.vision_tokenizer import VisionTokenizer, tiny_vision_config  # noqa: E402

KINDS = (
    "nccl", "peer", "lamport", "lamport_fullhead", "lamport_w4", "lamport_w16", "lamport_pdl", "lamport_pdl_all",
    "lamport_nopdl",
)  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny config on CPU with gloo (the same code path)")
    ap.add_argument(
        "--variant",
        choices=["eager", "graphs", "fused"],
        default=None,
        help="eager; graphs (CUDA graphs); fused (graphs + compiled elementwise kernels + fused q/k/v "
        "and gate/up weights, decode.py's best bf16 variant). Default: fused on GPU, eager on CPU",
    )
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument(
        "--single",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the unsharded model on rank 0's device alone",
    )
    ap.add_argument(
        "--all-reduce",
        default="nccl",
        help="one or more of nccl,peer,lamport (comma-separated: each timed in turn in the same processes). "
        "nccl (gloo on CPU): torch.distributed.all_reduce; peer: decode-sized sums through "
        "model.tensor_parallel.PeerAllReduce; lamport: model.lamport_all_reduce (one kernel with the add + RMSNorm "
        "after the sum; decode steps split the head's rows over the ranks); lamport_fullhead: lamport with every rank "
        "computing the whole head; lamport_w4, lamport_w16: lamport with 4 or 16 warps per row; lamport_pdl: lamport "
        "with the q/k/v and gate/up products after each sum launched early (lamport_all_reduce.pdl_after_sums); "
        "lamport_pdl_all: every product and sum so (model.skinny_mm.use_pdl; the one-GPU step is then timed with "
        "and without). "
        "peer and lamport: CUDA; --engine takes nccl, lamport (serve's pick on NVLink GPUs: with PDL after the sums) "
        "or lamport_nopdl",
    )
    ap.add_argument("--engine", action="store_true", help="the serving path (model.tp_engine), no torchrun")
    ap.add_argument(
        "--lookahead",
        action="store_true",
        help="one stream's steps queued before their tokens are read (decode.py): --engine, the leader broadcasts "
        "the queued steps' ids (start_tensor_parallel(tp_lookahead=True)); torchrun, every rank queues its own steps "
        "and draws its own tokens (not how serve runs), the one-GPU step likewise",
    )
    ap.add_argument("--world", type=int, default=2, help="ranks for --engine")
    ap.add_argument("--out", default=None, help="rank 0 writes the JSON here too")
    ap.add_argument(
        "--profile",
        default=None,
        help="rank 0 also writes a kernel table of 5 steps (torch.profiler) to PROFILE_world<N>.txt",
    )
    return ap.parse_args(argv)


def random_shard(config: Emu35Config, rank: int, world: int, device, dtype) -> Emu35:
    """This rank's shard, built on `device` without ever holding the full model."""
    with torch.device("meta"):
        lm = Emu35(config)
    shard_emu35(lm, rank, world)
    lm = lm.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for i, (name, p) in enumerate(lm.named_parameters()):
            g = torch.Generator(device).manual_seed(1000 * i + (rank if shard_dim(name) is not None else 0))
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0.0, 0.02, generator=g)
            p.requires_grad_(False)
    lm.inv_freq = None
    return lm.eval()


def serving_path(config, tok, args, cuda: bool, dtype) -> dict:
    """ms per CFG decode step of a `start_tensor_parallel` leader whose ranks build random shards."""
    import functools
    import tempfile

    from model.tp_engine import start_tensor_parallel
    from model.vision_tokenizer import write_random_vision_tokenizer

    d = Path(tempfile.mkdtemp(prefix="tp-bench-"))
    tok.save_pretrained(d / "tokenizer")
    write_random_vision_tokenizer(d / "vq", tiny_vision_config(), seed=0)
    t = time.perf_counter()
    eng = start_tensor_parallel(
        None,
        d / "tokenizer",
        d / "vq",
        args.world,
        device="cuda" if cuda else "cpu",
        dtype=dtype,
        max_len=args.prompt + args.warmup + args.steps + 1,
        shard_fn=functools.partial(random_shard, config),
        all_reduce=args.all_reduce,
        tp_lookahead=args.lookahead,
        lookahead=args.lookahead or None,  # None: the engine's default (on with graphs)
        cuda_graphs=args.variant != "eager",
        compile_kernels=args.variant == "fused",
        fuse_projections=args.variant == "fused",
    )
    init_s = time.perf_counter() - t
    try:
        torch.manual_seed(0)
        prefill_s, ms, fwd_ms, synced_ms = time_steps(eng, 2, True, args.prompt, args.warmup, args.steps, True)
        moved = bytes_read_per_step(eng.lm, eng.visual)
    finally:
        eng.mirror.close()
    return {
        "world_size": args.world,
        "path": "model.tp_engine (serve --tensor-parallel)",
        "all_reduce": args.all_reduce,
        "init_s": init_s,
        "bytes_read_per_rank": moved,
        "ms_per_step": ms,
        "ms_per_step_synced": synced_ms,
        "lookahead": args.lookahead,
        "forward_ms": fwd_ms,
        "prefill_prompt_s": prefill_s,
    }


def profile_steps(eng: Engine, prompt: int, steps: int = 5) -> str:
    """Kernels by total GPU time over `steps` decode steps of one CFG image stream (every rank runs it: the
    all-reduces inside the steps need all of them); the same step as time_steps, after its own short prefill."""
    dev = eng.device
    torch.manual_seed(1)
    cache, _ = prefill(eng, 2, prompt)
    tok = torch.full((2, 1), eng.visual.start, device=dev)
    pos = torch.full((2, 1), prompt, device=dev)
    valid = torch.ones(2, 1, dtype=torch.bool, device=dev)
    with torch.no_grad():
        for i in range(3):
            eng._step(cache, tok, pos + i, valid, prompt + i, True)
        sync(dev)
        cuda = dev.type == "cuda"
        act = torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU
        with torch.profiler.profile(activities=[act]) as prof:
            for i in range(steps):
                eng._step(cache, tok, pos + 3 + i, valid, prompt + 3 + i, True)
            sync(dev)
    avg = prof.key_averages()
    head = f"{'kernels' if cuda else 'ops'} per step: {sum(e.count for e in avg) / steps:.0f}"
    sort = "cuda_time_total" if cuda else "cpu_time_total"
    return head + "\n" + avg.table(sort_by=sort, row_limit=30, max_name_column_width=90)


def check_peer_sums(lm: Emu35, kind: str, hidden: int, device, dtype) -> dict:
    """Largest differences of the peer sums from NCCL's on decode-sized partials (several calls, so every buffer slot
    is used), and whether every rank got the same bits."""
    from model.transformer import add_rms_norm

    layer, norm = lm.model.layers[0], lm.model.layers[0].post_attention_layernorm
    g = torch.Generator(device).manual_seed(7 + dist.get_rank())
    parts = [torch.randn(2, 1, hidden, device=device, dtype=dtype, generator=g) for _ in range(4)]
    x = torch.randn(2, 1, hidden, device=device, dtype=dtype, generator=torch.Generator(device).manual_seed(3))
    want = [layer.reduce(p.clone()) for p in parts]  # NCCL
    want_norm = [add_rms_norm(x, w, norm.weight, norm.eps) for w in want]
    use_peer_all_reduce(lm, kind="one_shot" if kind == "peer" else "lamport")
    got = [layer.reduce(p.clone()) for p in parts]
    res = {"sum_max_abs_diff": max(float((a.float() - b.float()).abs().max()) for a, b in zip(got, want))}
    if hasattr(layer.reduce, "add_rms_norm"):
        fused = [layer.add_norm(x, p.clone(), norm) for p in parts]
        for i, name in enumerate(("add", "norm")):
            res[f"{name}_max_abs_diff"] = max(
                float((a[i].float() - b[i].float()).abs().max()) for a, b in zip(fused, want_norm)
            )
        got = got + [t for pair in fused for t in pair]
        head = torch.randn(2, 1, 65536, device=device, dtype=dtype, generator=g)  # a rank's half of visual logits
        want_head = [torch.empty_like(head) for _ in range(dist.get_world_size())]
        dist.all_gather(want_head, head)
        gathered = layer.reduce.all_gather(head)
        res["gather_equal"] = bool(torch.equal(gathered, torch.cat(want_head, -1)))
        got.append(gathered)
        layer.reduce.split_head = kind != "lamport_fullhead"
        layer.reduce.num_warps = {"lamport_w4": 4, "lamport_w16": 16}.get(kind)
    mine = torch.cat([t.reshape(-1) for t in got])
    rank0 = mine.clone()
    dist.broadcast(rank0, 0)
    res["ranks_identical"] = bool(torch.equal(mine, rank0))
    return res


def measure(config, tok, vq, rank: int, world: int, device, dtype, args, kind: str = "nccl") -> dict:
    t = time.perf_counter()
    lm = random_shard(config, rank, world, device, dtype)
    sync(device)
    init_s = time.perf_counter() - t
    check = None
    if world > 1 and kind != "nccl":
        check = check_peer_sums(lm, kind, config.hidden_size, device, dtype)
    use_pdl(kind.endswith("pdl_all"))
    eng = Engine(
        lm,
        tok,
        vq,
        max_len=args.prompt + max(args.warmup + args.steps, 8 if args.profile else 0) + 1,
        cuda_graphs=args.variant != "eager",
        compile_kernels=args.variant == "fused",
        fuse_projections=args.variant == "fused",
        lookahead=args.lookahead,
    )
    if kind == "lamport_pdl":
        pdl_after_sums(lm)
    torch.manual_seed(0)  # the same prompt and tokens on every rank
    prefill_s, ms, fwd_ms, synced_ms = time_steps(eng, 2, True, args.prompt, args.warmup, args.steps, visual=True)
    moved = bytes_read_per_step(lm, eng.visual)
    if args.profile:
        table = profile_steps(eng, args.prompt)
        if rank == 0:
            Path(f"{args.profile}_world{world}.txt").write_text(table + "\n")
    res = {
        "world_size": world,
        "init_s": init_s,
        "params_per_rank": sum(p.numel() for p in lm.parameters()),
        "bytes_read_per_rank": moved,
        "ms_per_step": ms,
        "ms_per_step_synced": synced_ms,
        "lookahead": args.lookahead,
        "forward_ms": fwd_ms,
        "prefill_prompt_s": prefill_s,
        "all_reduces_per_step": 2 * config.num_hidden_layers if world > 1 else 0,
        "all_reduce": (kind if kind != "nccl" else dist.get_backend()) if world > 1 else None,
        "peer_vs_nccl": check,
    }
    del eng, lm
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def main(argv=None) -> None:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.tiny
    args.variant = args.variant or ("fused" if cuda else "eager")
    if args.variant != "eager" and not cuda:
        raise SystemExit(f"--variant {args.variant} needs CUDA")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if args.engine and world > 1:
        raise SystemExit("--engine starts its own ranks: run it with python, not torchrun")
    kinds = args.all_reduce.split(",")
    if any(k not in KINDS for k in kinds):
        raise SystemExit(f"--all-reduce: some of {','.join(KINDS)}, comma-separated; got {args.all_reduce!r}")
    if kinds != ["nccl"] and not cuda:
        raise SystemExit(f"--all-reduce {args.all_reduce}: CUDA GPUs only")
    if args.engine and len(kinds) > 1:
        raise SystemExit("--engine times one --all-reduce at a time")
    if args.engine and kinds[0] not in ("nccl", "lamport", "lamport_nopdl"):
        raise SystemExit("--engine: --all-reduce nccl, lamport (with PDL after the sums) or lamport_nopdl")
    if not args.engine and "lamport_nopdl" in kinds:
        raise SystemExit("lamport_nopdl is an --engine kind (torchrun: lamport has no PDL; lamport_pdl adds it)")
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    dtype = torch.bfloat16 if cuda else torch.float32
    if args.tiny:
        tok = TextTokenizer(tiny_ranks(), vision_token_list(1024))
        config = config_for_tokenizer(tok, num_attention_heads=8, num_key_value_heads=2, head_dim=32)
        args.prompt, args.warmup, args.steps = min(args.prompt, 32), min(args.warmup, 2), min(args.steps, 4)
    else:
        tok = TextTokenizer(official_size_ranks(), vision_token_list(131072))  # official ids and vocabulary
        config = emu35_34b_config()
    config.max_position_embeddings = max(config.max_position_embeddings, args.prompt + args.warmup + args.steps + 1)
    vq = VisionTokenizer(tiny_vision_config())  # no images are encoded; only its factor is read

    bw = copy_bandwidth(device) if cuda else None  # the floor means little on a CPU smoke run
    out = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "variant": args.variant,
        "rows": 2,
        "what": "one CFG image-row decode step (2 rows, visual-slice head), median ms",
        "prompt": args.prompt,
        "shape": {
            k: getattr(config, k)
            for k in (
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "intermediate_size",
                "vocab_size",
            )
        },
        "copy_bandwidth_Bps_rank0": bw,
    }
    if args.engine:
        tp = serving_path(config, tok, args, cuda, dtype)
        tp["floor_ms"] = 1000 * tp["bytes_read_per_rank"] / bw if bw else None
        out["tensor_parallel"] = tp
        print(json.dumps(out, indent=2), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        return
    runs = []
    for kind in kinds:
        tp = measure(config, tok, vq, rank, world, device, dtype, args, kind)
        tp["floor_ms"] = 1000 * tp["bytes_read_per_rank"] / bw if bw else None
        runs.append(tp)
    out["tensor_parallel"] = runs[0] if len(runs) == 1 else runs
    tp = min(runs, key=lambda r: r["ms_per_step"])
    if world > 1:
        dist.barrier()
    if args.single and world > 1:
        if rank == 0:
            for single in ("nccl", "single_pdl_all") if any(k.endswith("pdl_all") for k in kinds) else ("nccl",):
                one = measure(config, tok, vq, 0, 1, device, dtype, args, single)
                one["floor_ms"] = 1000 * one["bytes_read_per_rank"] / bw if bw else None
                one["pdl"] = single == "single_pdl_all"
                out["single" if single == "nccl" else single] = one
            best = min(out["single"]["ms_per_step"], out.get("single_pdl_all", out["single"])["ms_per_step"])
            out["speedup"] = best / tp["ms_per_step"]
        dist.barrier()
    if rank == 0:
        print(json.dumps(out, indent=2), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    if world > 1:
        dist.barrier()  # leaving one at a time can abort a peer in gloo's teardown
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
