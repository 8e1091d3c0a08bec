"""The Emu3.5 decoder: a Qwen3-style transformer (GQA, QK-norm, RoPE, SwiGLU), written compactly in gpt-fast style.

Why our own decoder instead of transformers' Qwen3 modules: the generation engine needs a pre-allocated KV cache that
it can index with tensors (so a decode step can be captured once in a CUDA graph), batched CFG rows whose prompts have
different lengths (per-row RoPE positions, per-row valid-slot masks over a shared slot index), and an output head that
computes only the visual-token slice of the vocabulary during image rows. All of that is a few lines here and a fight
against DynamicCache/StaticCache there; the official transformers path runs at 4.75x the bandwidth floor
(shared/docs/performance-baseline.md). Numerics are identical to transformers' Qwen3: tests/test_transformer.py loads
the same weights into `transformers.Qwen3ForCausalLM` and compares logits.

Shapes: B batch, T new tokens, S cache slots, H query heads, K kv heads, D head_dim, C hidden size, V vocab.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .config import Emu35Config


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Computed in float32, then `weight * x_normed.to(input_dtype)` exactly as the official model."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, H, T, D]; cos/sin [B, T, D]. Rotate-half: first half / second half of D."""
    cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    return F.silu(gate) * up


def qk_norm_rope(q: Tensor, k: Tensor, wq: Tensor, wk: Tensor, eps: float, cos: Tensor, sin: Tensor):
    """QK-norm then RoPE. q [B, T, H, D], k [B, T, K, D] -> q [B, H, T, D], k [B, K, T, D]."""
    q = rms_norm(q, wq, eps).transpose(1, 2)
    k = rms_norm(k, wk, eps).transpose(1, 2)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


def masked_softmax(scores: Tensor, mask: Tensor, scale: float, dtype: torch.dtype) -> Tensor:
    """float32 scores [B, K, G, S], mask [B, 1, G, S] (True = attend) -> probabilities in `dtype`."""
    return (scores * scale).masked_fill(~mask, float("-inf")).softmax(-1).to(dtype)


# model/decode_attention.py's Triton kernels when switched on (use_triton_decode_attention); None: the products below
DECODE_ATTENTION: dict[str, Callable | None] = {"triton": None, "qk_norm_rope_kv": None}


def decode_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """Attention of a few query rows per kv head (decode), as two batched matrix products.

    q [B, K, G, D], k/v [B, K, S, D], mask [B, 1, G, S] -> [B, K, G, D]. A fused attention kernel tiles over query
    rows, and with G*T = 8 rows it keeps only B*K thread blocks busy (16 of 132 SMs at CFG batch 2); the products
    tile over S instead. Scores are float32 (fp32 accumulation and output), like the fused kernels.
    """
    kernel = DECODE_ATTENTION["triton"]
    # one query token per row: every head of a row has the same mask row. 16-bit only: tl.dot would take float32
    # operands as TF32, coarser than the products below
    if kernel is not None and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        return kernel(q, k, v, mask[:, 0, 0], scale)
    B, K, G, D = q.shape
    S = k.shape[2]
    q3, k3, v3 = q.reshape(B * K, G, D), k.reshape(B * K, S, D), v.reshape(B * K, S, D)
    if q.is_cuda:
        scores = torch.bmm(q3, k3.transpose(1, 2), out_dtype=torch.float32)  # [B*K, G, S]
    else:
        scores = torch.bmm(q3.float(), k3.float().transpose(1, 2))
    p = KERNELS["masked_softmax"](scores.view(B, K, G, S), mask, scale, v.dtype)
    return torch.bmm(p.view(B * K, G, S), v3).view(B, K, G, D)


def add_rms_norm(x: Tensor, delta: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The residual add and the next RMSNorm in one pass: (x + delta, rms_norm(x + delta))."""
    x = x + delta
    return x, rms_norm(x, weight, eps)


# The elementwise pieces of a block. `compile_kernels()` swaps in torch.compile'd versions: each becomes one fused
# kernel (RMSNorm alone is ~7 kernels eager), which is what a CUDA-graph decode step at batch 1 is made of.
KERNELS = {
    "rms_norm": rms_norm,
    "swiglu": swiglu,
    "qk_norm_rope": qk_norm_rope,
    "add_rms_norm": add_rms_norm,
    "masked_softmax": masked_softmax,
}


def compile_kernels() -> None:
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    for name, fn in list(KERNELS.items()):
        if not hasattr(fn, "_torchdynamo_orig_callable"):
            KERNELS[name] = torch.compile(fn, dynamic=False)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return KERNELS["rms_norm"](x, self.weight, self.eps)


def rope_inv_freq(config: Emu35Config, device: torch.device | str | None = None, seq_len: int = 0) -> Tensor:
    """Inverse frequencies [D/2]; dynamic NTK scaling raises the base once seq_len exceeds max_position_embeddings."""
    D, base = config.head_dim, float(config.rope_theta)
    scaling = config.rope_scaling or {}
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind == "dynamic" and seq_len > config.max_position_embeddings:
        f = float(scaling["factor"])
        base = base * ((f * seq_len / config.max_position_embeddings) - (f - 1)) ** (D / (D - 2))
    return 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.int64, device=device).float() / D))


def rope_cos_sin(config: Emu35Config, inv_freq: Tensor, position_ids: Tensor, dtype: torch.dtype):
    """cos, sin [B, T, D] for the rotate-half form; linear scaling divides positions by the factor."""
    scaling = config.rope_scaling or {}
    pos = position_ids.float()  # [B, T]
    if scaling.get("type", scaling.get("rope_type")) == "linear":
        pos = pos / float(scaling["factor"])
    freqs = pos[..., None] * inv_freq  # [B, T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, D]
    return emb.cos().to(dtype), emb.sin().to(dtype)


# Slots per cache row are allocated, and attended, in multiples of this. A decode step's attention is two batched
# products whose rows are S slots long; with S not a multiple of 8 bf16 values cuBLAS falls back to unaligned kernels
# (34B CFG step on an H200, profiled: 3.1 ms of attention at S = 1,097 against 0.55 ms at S = 1,088). Slots past a
# row's last token are masked, so attending to a few more changes nothing but the alignment.
KV_ALIGN = 64


def kv_slots(n: int) -> int:
    """n rounded up to a multiple of KV_ALIGN."""
    return -(-n // KV_ALIGN) * KV_ALIGN


@dataclass
class KVCache:
    """Pre-allocated keys/values for every layer, plus which slots of each row hold a real token.

    k, v: [L, B, K, S, D]; valid: [B, S] bool. `length` is the high-water mark of written slots; attention reads only
    slots [0, length) unless the caller passes a fixed `kv_len` (what a captured CUDA graph does). `tag`: (cache id,
    first row) when a tensor-parallel engine mirrors this cache on other ranks (model/tp_engine.py).
    """

    k: Tensor
    v: Tensor
    valid: Tensor
    length: int = 0
    tag: tuple[int, int] | None = None
    capacity: int | None = None  # the slots asked for (storage is rounded up to KV_ALIGN); None: all of them
    base: KVCache | None = field(default=None, repr=False, compare=False)  # a view keeps its cache alive

    @classmethod
    def allocate(
        cls,
        config: Emu35Config,
        batch_size: int,
        max_len: int,
        device=None,
        dtype=torch.bfloat16,
        num_kv_heads: int | None = None,
    ):
        """`num_kv_heads`: the kv heads this process holds (a tensor-parallel shard holds K / world_size)."""
        K = num_kv_heads or config.num_key_value_heads
        S = kv_slots(max_len)
        shape = (config.num_hidden_layers, batch_size, K, S, config.head_dim)
        return cls(
            k=torch.zeros(shape, device=device, dtype=dtype),
            v=torch.zeros(shape, device=device, dtype=dtype),
            valid=torch.zeros(batch_size, S, device=device, dtype=torch.bool),
            capacity=max_len,
        )

    @property
    def max_len(self) -> int:
        """Tokens this cache takes (its storage may hold a few more slots, which stay unused)."""
        return self.capacity or self.k.shape[3]

    def reset(self) -> None:
        self.valid.zero_()
        self.length = 0

    def rows(self, start: int, stop: int) -> KVCache:
        """A view of rows [start, stop): writes go to this cache's storage."""
        tag = None if self.tag is None else (self.tag[0], self.tag[1] + start)
        r = slice(start, stop)
        return KVCache(self.k[:, r], self.v[:, r], self.valid[r], tag=tag, base=self, capacity=self.capacity)


def write_cache(cache: KVCache, layer: int, cache_pos: Tensor, k: Tensor, v: Tensor) -> None:
    """k, v [B, K, T, D] into `layer` of the cache at slots `cache_pos` ([T], or [B, T]: each row its own slots)."""
    if cache_pos.dim() == 2:
        B, T = cache_pos.shape
        rows = torch.arange(B, device=k.device)[:, None].expand(B, T)
        cache.k[layer][rows, :, cache_pos] = k.transpose(1, 2)  # [B, T, K, D]
        cache.v[layer][rows, :, cache_pos] = v.transpose(1, 2)
    else:
        cache.k[layer].index_copy_(2, cache_pos, k)
        cache.v[layer].index_copy_(2, cache_pos, v)


class Attention(nn.Module):
    """`n_head`/`n_kv` are the heads this module holds: all of them, or a tensor-parallel shard's (shard_emu35)."""

    def __init__(self, config: Emu35Config):
        super().__init__()
        C, H, K, D = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.n_head, self.n_kv, self.head_dim = H, K, D
        self.q_proj = nn.Linear(C, H * D, bias=False)  # 5120 -> 8192 at the 34B shape: H*D != C
        self.k_proj = nn.Linear(C, K * D, bias=False)
        self.v_proj = nn.Linear(C, K * D, bias=False)
        self.o_proj = nn.Linear(H * D, C, bias=False)
        self.q_norm = RMSNorm(D, config.rms_norm_eps)  # QK-norm over head_dim, before RoPE
        self.k_norm = RMSNorm(D, config.rms_norm_eps)
        self.qkv_proj: nn.Linear | None = None  # set by Emu35.fuse_projections(): one GEMM instead of three

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.qkv_proj is None:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        H, K, D = self.n_head, self.n_kv, self.head_dim
        return self.qkv_proj(x).split([H * D, K * D, K * D], dim=-1)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        layer: int,
        cache: KVCache | None,
        cache_pos: Tensor | None,
        kv_len: int,
    ) -> Tensor:
        B, T, _ = x.shape
        H, K, D = self.n_head, self.n_kv, self.head_dim
        q, k, v = self.project(x)
        q, k, v = q.view(B, T, H, D), k.view(B, T, K, D), v.view(B, T, K, D)
        norms = (self.q_norm.weight, self.k_norm.weight, self.q_norm.eps, cos, sin)
        fused = DECODE_ATTENTION["qk_norm_rope_kv"] if cache is not None and mask is not None and T == 1 else None
        # a decode step on the Triton path: QK-norm, RoPE and the cache writes in one kernel (None: not applicable)
        qo = None if fused is None else fused(q, k, v, *norms, cache.k[layer], cache.v[layer], cache_pos)
        if qo is not None:  # k and v are in the cache already
            q = qo
        else:
            q, k = KERNELS["qk_norm_rope"](q, k, *norms)  # [B, H, T, D], [B, K, T, D]
            v = v.transpose(1, 2)  # [B, K, T, D]
            if cache is not None:
                write_cache(cache, layer, cache_pos, k, v)
        if cache is not None:  # attend to every slot up to kv_len
            k, v = cache.k[layer, :, :, :kv_len], cache.v[layer, :, :, :kv_len]  # [B, K, S, D]
        scale = 1.0 / math.sqrt(self.head_dim)
        if mask is None:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=T > 1, scale=scale, enable_gqa=self.n_kv != self.n_head
            )
        else:
            # GQA without repeating K/V: the G query heads of a kv head become G*T query rows of that head, so the
            # masked (memory-efficient) kernel reads each cached K/V once. q [B, K, G*T, D], mask [B, 1, G*T, S].
            qg = q.reshape(B, self.n_kv, -1, self.head_dim)
            if T == 1:
                y = decode_attention(qg, k, v, mask, scale)
            else:
                y = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)
            y = y.reshape(B, self.n_head, T, -1)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))  # never reshape to C


class MLP(nn.Module):
    def __init__(self, config: Emu35Config):
        super().__init__()
        C, I = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(C, I, bias=False)
        self.up_proj = nn.Linear(C, I, bias=False)
        self.down_proj = nn.Linear(I, C, bias=False)
        self.gate_up_proj: nn.Linear | None = None  # set by Emu35.fuse_projections()

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_up_proj is None:
            return self.down_proj(KERNELS["swiglu"](self.gate_proj(x), self.up_proj(x)))
        fused = getattr(self.gate_up_proj, "forward_swiglu", None)  # model.skinny_mm: SwiGLU in the epilogue
        h = None if fused is None else fused(x)
        if h is None:
            h = KERNELS["swiglu"](*self.gate_up_proj(x).chunk(2, dim=-1))
        return self.down_proj(h)


class Block(nn.Module):
    def __init__(self, config: Emu35Config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)
        # Tensor parallelism (model/tensor_parallel.py): sums the partial outputs of o_proj and down_proj over ranks.
        self.reduce: Callable[[Tensor], Tensor] | None = None

    def forward(self, x: Tensor, delta: Tensor | None, *args) -> tuple[Tensor, Tensor]:
        """Returns the residual stream *before* adding this block's MLP output, and that output (with tensor
        parallelism, this rank's partial sum of it): the next block (or the final norm) adds it inside its own RMSNorm
        kernel (`add_norm`), one pass over the hidden state instead of two."""
        n1, n2 = self.input_layernorm, self.post_attention_layernorm
        if delta is None:
            h = n1(x)
        else:
            x, h = self.add_norm(x, delta, n1)
        x, h = self.add_norm(x, self.self_attn(h, *args), n2)
        return x, self.mlp(h)

    def add_norm(self, x: Tensor, delta: Tensor, norm: RMSNorm) -> tuple[Tensor, Tensor]:
        """(x + delta, norm(x + delta)). With tensor parallelism `delta` is this rank's partial sum: it is summed over
        the ranks first, in the same kernel when the reduce has an `add_rms_norm` (model/lamport_all_reduce.py)."""
        if self.reduce is None:
            return KERNELS["add_rms_norm"](x, delta, norm.weight, norm.eps)
        fused = getattr(self.reduce, "add_rms_norm", None)
        if fused is not None:
            return fused(x, delta, norm.weight, norm.eps)
        return KERNELS["add_rms_norm"](x, self.reduce(delta), norm.weight, norm.eps)


class Decoder(nn.Module):
    """`model.*` of the HF layout: embeddings, blocks, final norm."""

    def __init__(self, config: Emu35Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


@dataclass
class CausalLMOutput:
    logits: Tensor  # float32 [B, T, V] (or [B, T, len(vocab_slice)])
    cache: KVCache | None = None


class Emu35(nn.Module):
    """Emu3.5 language model. `lm(input_ids).logits` is [B, T, V] float32; see `forward` for cache use."""

    def __init__(self, config: Emu35Config):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.inv_freq: Tensor | None = None if self.lm_head.weight.is_meta else rope_inv_freq(config)
        # float8 copy of the head for decode steps (model.skinny_mm.use_skinny(fp8=True)); prefill keeps lm_head
        self.head_fp8: nn.Module | None = None

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @torch.no_grad()
    def fuse_projections(self) -> None:
        """For inference: q/k/v and gate/up each become one weight, so a decode step launches 2 GEMMs instead of 5
        per block and reads the same bytes in larger, more efficient pieces. Layer by layer, so the extra memory is
        one layer's projections. The HF state-dict names are gone afterwards (save before fusing)."""

        def fused(*linears: nn.Linear) -> nn.Linear:
            w = torch.cat([lin.weight for lin in linears])
            out = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
            out.weight = nn.Parameter(w, requires_grad=False)
            return out

        for layer in self.model.layers:
            a, m = layer.self_attn, layer.mlp
            if a.qkv_proj is None:
                a.qkv_proj = fused(a.q_proj, a.k_proj, a.v_proj)
                a.q_proj = a.k_proj = a.v_proj = None
            if m.gate_up_proj is None:
                m.gate_up_proj = fused(m.gate_proj, m.up_proj)
                m.gate_proj = m.up_proj = None

    def allocate_cache(self, batch_size: int, max_len: int) -> KVCache:
        """Room for this model's own kv heads (a tensor-parallel shard's cache holds only its K / world_size)."""
        K = self.model.layers[0].self_attn.n_kv
        return KVCache.allocate(self.config, batch_size, max_len, self.device, self.dtype, num_kv_heads=K)

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
        cache_pos: Tensor | None = None,
        attention_mask: Tensor | None = None,
        kv_len: int | None = None,
        logits_to_keep: int = 0,
        vocab_slice: slice | None = None,
    ) -> CausalLMOutput:
        """Run T new tokens per row.

        input_ids [B, T]. position_ids [B, T] (RoPE positions; default: the slot indices). attention_mask [B, T] bool:
        False marks padding tokens, which no later token attends to. With `cache`, the T tokens are written at slots
        `cache_pos` [T] (default: the next T slots), or at per-row slots `cache_pos` [B, T] (rows of a continuous batch
        at different lengths), and attend to every valid slot before them. `logits_to_keep=n`
        computes the head for the last n positions only; `vocab_slice` computes it for part of the vocabulary only.
        """
        B, T = input_ids.shape
        dev = input_ids.device
        if cache is not None:
            if cache_pos is None:
                if cache.length + T > cache.max_len:
                    raise ValueError(f"KV cache full: {cache.length} + {T} tokens > max_len {cache.max_len}")
                cache_pos = torch.arange(cache.length, cache.length + T, device=dev)
                cache.length += T
            kv_len = min(kv_slots(kv_len or cache.length), cache.k.shape[3])  # aligned: see KV_ALIGN
        if position_ids is None:
            base = cache_pos if cache is not None else torch.arange(T, device=dev)
            position_ids = base.expand(B, T)

        mask = None  # [B, 1, T, S] bool, True = may attend
        if cache is not None and cache_pos.dim() == 2:
            rows = torch.arange(B, device=dev)[:, None].expand(B, T)
            cache.valid[rows, cache_pos] = True if attention_mask is None else attention_mask
            slots = torch.arange(kv_len, device=dev)
            causal = slots <= cache_pos[..., None]  # [B, T, S]
            mask = (cache.valid[:, None, :kv_len] & causal) | (slots == cache_pos[..., None])
            mask = mask[:, None]
        elif cache is not None:
            cache.valid[:, cache_pos] = True if attention_mask is None else attention_mask
            slots = torch.arange(kv_len, device=dev)
            causal = slots[None, :] <= cache_pos[:, None]  # [T, S]
            mask = (cache.valid[:, None, :kv_len] & causal[None]) | (slots[None, :] == cache_pos[:, None])[None]
            mask = mask[:, None]
        elif attention_mask is not None:
            causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
            mask = (attention_mask[:, None, :] & causal[None]) | torch.eye(T, dtype=torch.bool, device=dev)[None]
            mask = mask[:, None]
        if mask is not None:  # grouped-query layout once for all layers (see Attention): [B, 1, G*T, S]
            attn = self.model.layers[0].self_attn
            G, S = attn.n_head // attn.n_kv, mask.shape[-1]
            mask = mask.expand(B, 1, T, S)[:, :, None].expand(B, 1, G, T, S).reshape(B, 1, G * T, S)

        if self.inv_freq is None or self.inv_freq.device != dev:
            self.inv_freq = rope_inv_freq(self.config, dev)
        inv_freq = self.inv_freq
        if (self.config.rope_scaling or {}).get("type") == "dynamic":
            inv_freq = rope_inv_freq(self.config, dev, seq_len=int(position_ids.max()) + 1)
        x = self.model.embed_tokens(input_ids)  # [B, T, C]
        cos, sin = rope_cos_sin(self.config, inv_freq, position_ids, x.dtype)
        delta = None
        for i, layer in enumerate(self.model.layers):
            x, delta = layer(x, delta, cos, sin, mask, i, cache, cache_pos, kv_len)
        _, x = self.model.layers[-1].add_norm(x, delta, self.model.norm)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        sl = slice(None) if vocab_slice is None else vocab_slice
        reduce = self.model.layers[-1].reduce
        # tensor parallelism: each rank multiplies its share of the head's rows
        if getattr(reduce, "split_head", False):
            rank, world = self.tensor_parallel
            rows = range(self.config.vocab_size)[sl]
            n = len(rows) // world
            if rows.step == 1 and len(rows) % world == 0 and reduce.gathers(x.shape[0] * x.shape[1], n):
                part = self.head_logits(x, slice(rows.start + rank * n, rows.start + (rank + 1) * n))
                return CausalLMOutput(logits=reduce.all_gather(part).float(), cache=cache)
        return CausalLMOutput(logits=self.head_logits(x, sl).float(), cache=cache)

    def head_logits(self, x: Tensor, sl: slice) -> Tensor:
        """Logits of the vocabulary rows `sl` for x [B, T, C], in the weights' dtype."""
        if self.head_fp8 is not None and x.shape[0] * x.shape[1] <= 16:  # decode (skinny_mm.MAX_ROWS): half the bytes
            from .skinny_mm import skinny_mm

            wq, scale = self.head_fp8.weight[sl], self.head_fp8.scale.reshape(-1)[sl]
            return skinny_mm(x.reshape(-1, x.shape[-1]), wq, scale).reshape(*x.shape[:-1], -1)
        return F.linear(x, self.lm_head.weight[sl])

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.bfloat16, device="cpu") -> Emu35:
        """Load the official HF layout (config.json + model.safetensors or shards + index), tensor by tensor."""
        from .checkpoint import load_emu35

        return load_emu35(path, dtype=dtype, device=device)
