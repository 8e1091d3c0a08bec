"""Tensor parallelism for inference (Megatron style): each of N ranks holds 1/N of every block and its KV cache.

Rank r of N holds, in every block:
    q_proj    rows of its query heads [r*H/N, (r+1)*H/N)        column-parallel (split output features)
    k/v_proj  rows of its kv heads [r*K/N, (r+1)*K/N)           column-parallel
    gate/up   rows [r*I/N, (r+1)*I/N)                           column-parallel
    o_proj    the columns that read its query heads             row-parallel (split input features)
    down_proj the columns that read its I/N                     row-parallel
and replicates the rest: norms (QK-norm is per head, the same weight for every head), embeddings, final norm, lm_head.
The head is replicated but each rank multiplies only rows [r*V/N, (r+1)*V/N) of it (of the step's vocabulary slice),
and an all-gather puts the logits together (`split_head`).
Query head i reads kv head i // (H/K), so the query heads [r*H/N, (r+1)*H/N) read exactly the kv heads of rank r:
each rank runs ordinary GQA attention on its own H/N query and K/N kv heads, and its cache holds K/N kv heads.

Collectives: TWO all-reduces (sums) per block, after o_proj and after down_proj. One per block is not possible for this
model: the block is sequential pre-norm, so the MLP's input is post_attention_layernorm(x + attention), which needs
the summed attention output before the MLP can start. (One per block needs a parallel block, GPT-J style, which is a
different model.) The sums run inside `Block.forward` (`Block.reduce`), after the projection whatever its type, so
fused (`fuse_projections`) and float8 (`quantize_fp8`) projections are reduced too. `torch.distributed.all_reduce`
is captured by CUDA graphs with NCCL. `use_peer_all_reduce` swaps in sums over peer memory for decode-sized tensors
(GPUs with NVLink): by default one kernel that also does the residual add and RMSNorm after the sum
(model/lamport_all_reduce.py); timed by benchmarks/tensor_parallel.py --all-reduce lamport|peer.

Order: shard first, then fuse and quantize (what `Engine` does when given a sharded model). `shard_emu35` also
accepts a model whose projections are already fused (it splits q/k/v and gate/up, shards each and fuses again),
but not float8 projections (per-row scales of a fused qkv would have to be split too: quantize after sharding).

Loading: `shard_emu35` slices a model that is already in memory (the full model on CPU, or a meta model whose shard is
materialized afterwards, as benchmarks/tensor_parallel.py does); `load_emu35_shard` reads only this rank's slices of a
safetensors checkpoint. Inference only: the in-place all-reduce has no autograd rule.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from .config import Emu35Config
from .transformer import Emu35

COLUMN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # split dim 0 (output features)
ROW = ("o_proj", "down_proj")  # split dim 1 (input features)


def check_divisible(config: Emu35Config, world_size: int) -> None:
    """Raise ValueError naming the first config field that `world_size` ranks cannot split evenly."""
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"tensor-parallel world_size must be a positive integer, got {world_size!r}")
    for name in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        v = getattr(config, name)
        if v % world_size:
            raise ValueError(
                f"tensor parallelism over {world_size} ranks needs {name} ({v}) divisible by {world_size}: "
                f"each rank holds {name} / {world_size}"
            )


def shard_dim(name: str) -> int | None:
    """The dimension a parameter of the HF layout is split along (0 column-parallel, 1 row-parallel), or None if
    every rank holds all of it."""
    parts = name.split(".")
    if len(parts) >= 2 and parts[-1] == "weight":
        if parts[-2] in COLUMN:
            return 0
        if parts[-2] in ROW:
            return 1
    return None


def _slice(w: Tensor, dim: int, rank: int, world_size: int) -> Tensor:
    n = w.shape[dim] // world_size
    return w.narrow(dim, rank * n, n)


def _all_reduce(x: Tensor, group) -> Tensor:
    dist.all_reduce(x, group=group)
    return x


class CollectiveSums:
    """A sharded block's `reduce` through torch.distributed (NCCL on GPUs, gloo on CPUs): sums partial outputs in
    place, and gathers the logits of the output head, whose rows the ranks split (`split_head`, see Emu35.forward):
    each rank reads 1/N of the head's weights instead of all of them."""

    split_head = True

    def __init__(self, group=None):
        self.group = group

    def __call__(self, x: Tensor) -> Tensor:
        return _all_reduce(x, self.group)

    def gathers(self, rows: int, n: int) -> bool:
        return True

    def all_gather(self, t: Tensor) -> Tensor:
        """[..., n] on every rank -> [..., N * n], rank r's part at [r * n, (r + 1) * n)."""
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(parts, t.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)


class PeerAllReduce:
    """Sum of a small tensor over the ranks of `group` through CUDA peer memory, for decode steps.

    Why: a decode step's all-reduce moves 10-160 KB, where NCCL's fixed cost dominates (~55 us each, 128 per 34B
    step). Here every rank copies its tensor into a symmetric buffer (PyTorch symmetric memory) and one kernel reads
    every peer's buffer over NVLink and sums (`torch.ops.symm_mem.one_shot_all_reduce`): peer-to-peer loads only, no
    NVLink multicast. Tensors larger than the buffer (prefill) or of another dtype go through NCCL.
    """

    def __init__(self, device: torch.device, group=None, max_bytes: int = 1 << 20, dtype=torch.bfloat16):
        import torch.distributed._symmetric_memory as symm_mem

        if not hasattr(torch.ops.symm_mem, "one_shot_all_reduce"):
            raise RuntimeError(f"torch {torch.__version__} has no torch.ops.symm_mem.one_shot_all_reduce")
        self.group = group or dist.group.WORLD
        self.group_name = self.group.group_name
        self.buf = symm_mem.empty(2, max_bytes // dtype.itemsize, dtype=dtype, device=device)  # [2, n]
        self.handle = symm_mem.rendezvous(self.buf, self.group_name)
        self.calls = 0

    def __call__(self, x: Tensor) -> Tensor:
        n = x.numel()
        if x.dtype != self.buf.dtype or n > self.buf.shape[1] or not x.is_cuda:
            return _all_reduce(x, self.group)
        # Two halves, used in turn: a rank that is done with one sum may fill the other half for the next one while
        # a slower peer still reads this one (the next sum's barrier keeps it from coming back to this half).
        half = self.buf[self.calls % 2, :n]
        self.calls += 1
        half.copy_(x.reshape(-1))
        return torch.ops.symm_mem.one_shot_all_reduce(half, "sum", self.group_name).view_as(x)


def use_peer_all_reduce(lm: Emu35, group=None, max_bytes: int | None = None, kind: str = "lamport") -> Emu35:
    """Sum a sharded model's small partial outputs over peer memory (one buffer for every block), in place.

    kind "lamport" (`model.lamport_all_reduce.LamportAllReduce`): one kernel per sum, fused with the residual add and
    RMSNorm after it, and decode steps split the output head's rows over the ranks (each computes its part of the
    logits; `all_gather` puts them together); "one_shot" (`PeerAllReduce`): PyTorch's symmetric-memory one-shot
    all-reduce. `max_bytes`: the largest tensor summed over peer memory (default: the class's)."""
    if getattr(lm, "tensor_parallel", (0, 1))[1] < 2:
        raise ValueError("use_peer_all_reduce needs a model sharded over 2+ ranks (shard_emu35)")
    if kind == "lamport":
        from .lamport_all_reduce import LamportAllReduce as cls
    elif kind == "one_shot":
        cls = PeerAllReduce
    else:
        raise ValueError(f"peer all-reduce kind must be 'lamport' or 'one_shot', not {kind!r}")
    sizes = {} if max_bytes is None else {"max_bytes": max_bytes}
    reduce = cls(lm.device, group, dtype=lm.dtype, **sizes)
    for layer in lm.model.layers:
        layer.reduce = reduce
    return lm


def _param(w: Tensor) -> nn.Parameter:
    return nn.Parameter(w.contiguous().clone(), requires_grad=False)  # own storage: the full weight can be freed


@torch.no_grad()
def shard_emu35(lm: Emu35, rank: int, world_size: int, group=None) -> Emu35:
    """Turn the full model `lm` into rank `rank`'s shard of `world_size`, in place; returns `lm`.

    Sets each Attention's n_head/n_kv to the local counts (so `allocate_cache` allocates K / world_size kv heads) and
    each Block's `reduce` to sums over `group` (default: the default process group; `CollectiveSums`, which also
    splits the output head's rows). world_size 1 is a no-op apart from marking the model.
    """
    c = lm.config
    check_divisible(c, world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    if getattr(lm, "tensor_parallel", None) is not None:
        raise ValueError(f"model is already sharded (rank, world_size) = {lm.tensor_parallel}")
    H, K, D, N = c.num_attention_heads, c.num_key_value_heads, c.head_dim, world_size
    for layer in lm.model.layers:
        a, m = layer.self_attn, layer.mlp
        for mod in (a, m):
            for n in COLUMN + ROW + ("qkv_proj", "gate_up_proj"):
                p = getattr(mod, n, None)
                if p is not None and not isinstance(p, nn.Linear):
                    raise ValueError(f"cannot shard {type(p).__name__} {n}: shard before quantize_fp8()")
        if world_size > 1:
            if a.qkv_proj is None:
                for n in ("q_proj", "k_proj", "v_proj"):
                    getattr(a, n).weight = _param(_slice(getattr(a, n).weight, 0, rank, N))
            else:
                parts = a.qkv_proj.weight.split([H * D, K * D, K * D])
                a.qkv_proj.weight = _param(torch.cat([_slice(w, 0, rank, N) for w in parts]))
            a.o_proj.weight = _param(_slice(a.o_proj.weight, 1, rank, N))
            if m.gate_up_proj is None:
                for n in ("gate_proj", "up_proj"):
                    getattr(m, n).weight = _param(_slice(getattr(m, n).weight, 0, rank, N))
            else:
                parts = m.gate_up_proj.weight.chunk(2)
                m.gate_up_proj.weight = _param(torch.cat([_slice(w, 0, rank, N) for w in parts]))
            m.down_proj.weight = _param(_slice(m.down_proj.weight, 1, rank, N))
            layer.reduce = CollectiveSums(group)
        a.n_head, a.n_kv = H // N, K // N
        for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, a.qkv_proj, m.gate_proj, m.up_proj, m.down_proj):
            if lin is not None:  # keep nn.Linear's bookkeeping true to the new shapes
                lin.out_features, lin.in_features = lin.weight.shape
    lm.tensor_parallel = (rank, world_size)
    return lm


@torch.no_grad()
def load_emu35_shard(
    path: str | Path, rank: int, world_size: int, group=None, dtype: torch.dtype = torch.bfloat16, device="cpu"
) -> Emu35:
    """Read only rank `rank`'s slices of an HF-layout safetensors checkpoint (config.json + shards): each rank's
    host and device hold 1/world_size of the blocks plus the replicated embeddings and head."""
    from safetensors import safe_open

    from .checkpoint import CheckpointError, checkpoint_files, read_headers
    from .transformer import rope_inv_freq

    path = Path(path)
    config = Emu35Config.from_pretrained(path)
    check_divisible(config, world_size)
    with torch.device("meta"):
        lm = shard_emu35(Emu35(config), rank, world_size, group)  # meta: only shapes and the local head counts
    expected = dict(lm.state_dict())
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    headers = read_headers(checkpoint_files(path))
    missing = [k for k in expected if k not in headers]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing tensors: {missing[:8]}")
    device = torch.device(device)
    by_file: dict[Path, list[str]] = {}
    for name in expected:
        by_file.setdefault(headers[name][0], []).append(name)
    for f, names in by_file.items():
        with safe_open(f, framework="pt", device="cpu") as sf:
            for name in names:
                sl, dim, want = sf.get_slice(name), shard_dim(name), tuple(expected[name].shape)
                if dim is None:
                    t = sl[:]
                else:
                    full = sl.get_shape()
                    n = full[dim] // world_size
                    t = sl[rank * n : (rank + 1) * n] if dim == 0 else sl[:, rank * n : (rank + 1) * n]
                if tuple(t.shape) != want:
                    raise CheckpointError(f"checkpoint {path}: {name} slice {list(t.shape)}, expected {list(want)}")
                mod_name, _, attr = name.rpartition(".")
                setattr(lm.get_submodule(mod_name), attr, nn.Parameter(t.to(device, dtype), requires_grad=False))
    if config.tie_word_embeddings:
        lm.lm_head.weight = lm.model.embed_tokens.weight
    lm.inv_freq = rope_inv_freq(config, device)
    return lm.eval()
