"""Decode attention (one query token per row) as one Triton kernel per layer, split over the cached slots.

The fallback decode attention (`transformer.decode_attention`) is three kernels per layer: scores as a batched
product, a masked softmax, and the values as a second batched product. Here one kernel does all three for a chunk of
slots with an online softmax (flash-decoding), writing a partial maximum, sum and weighted value sum per chunk; the
last program of each (row, kv head) pair to finish merges that pair's chunks (ONE_KERNEL; else a second kernel does).
A decode step has few query rows (G = heads per kv head = 8 at 34B) and few (row, kv head) pairs (16 at one CFG
stream), so the slots are what gets split across the SMs: about one program per SM.

The mask is one row per batch row ([B, S], True = attend): in decode every query head of a row sees the same slots.
Scores and the running sums are float32; the probabilities are rounded to the values' dtype for the second product,
as the fallback does. The engine switches it on for 16-bit models on CUDA (`use_triton_decode_attention`); measured
in benchmarks/decode_attention.py and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: the default path
    triton = None

# Knobs, measured at the 34B shape on an H200 (benchmarks/decode_attention.py, 64 layers in a CUDA graph): one program
# per SM, 8 warps, the chunks merged in the same kernel; 64 slots per inner step, 128 for few (row, kv head) pairs over
# many slots. 2 rows (one CFG stream) at 1,088 slots: 11.7 us a layer against 14.1 for the default three kernels;
# 16 rows: 25.7 against 37.2 (4,096 slots: 72.4 against 92.2).
BLOCK_S: int | None = None  # slots per inner step (one tl.dot each for scores and values); None: block_s()
PROGRAMS_PER_SM = 1
NUM_WARPS = 8  # per program of the partial kernel
# The last program to finish a (row, kv head) pair merges its chunks (a counter per pair, atomically counted), instead
# of a second kernel doing it: one kernel per layer
ONE_KERNEL = True
MASKED = -1.0e30  # a finite "minus infinity": a chunk with no valid slot keeps finite sums (weight 0 when merged)
# Before the attention, one kernel also does a decode step's QK-norm, RoPE and KV-cache writes (`qk_norm_rope_kv`):
# the compiled QK-norm + RoPE is two kernels and the two index_copy_ writes two more, ~10 us a layer of latency-bound
# launches at the 34B shape on an H200 (benchmarks/results/profile_34b_*_timeline_h200_2026-12-01.txt)
FUSED_KV_WRITE = True


def decode_attention_reference(q: Tensor, k: Tensor, v: Tensor, valid: Tensor, scale: float) -> Tensor:
    """The kernel's math in torch. q [B, K, G, D], k/v [B, K, S, D], valid [B, S] bool -> [B, K, G, D] in q's dtype."""
    s = torch.einsum("bkgd,bksd->bkgs", q.float(), k.float()) * scale
    p = s.masked_fill(~valid[:, None, None, :], float("-inf")).softmax(-1)
    return torch.einsum("bkgs,bksd->bkgd", p.to(v.dtype).float(), v.float()).to(q.dtype)


def triton_decode_attention_available(device: torch.device) -> bool:
    device = torch.device(device)
    return triton is not None and device.type == "cuda" and torch.cuda.is_available()


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def block_s(pairs: int, S: int) -> int:
    """Slots per inner step: 128 where few pairs each stream many slots (2 rows at 4,096 slots: 19.6 us a layer against
    20.9 with 64), else 64 (16 rows at 4,096: 72.4 against 84.9)."""
    if BLOCK_S is not None:
        return BLOCK_S
    return 128 if pairs <= 32 and S > 2048 else 64


def chunking(pairs: int, S: int, sms: int) -> tuple[int, int, int]:
    """(chunk, n_chunks, block): slots per program, a multiple of `block` (block_s), so that pairs x n_chunks ~
    PROGRAMS_PER_SM x sms."""
    block = block_s(pairs, S)
    blocks = -(-S // block)
    n = max(1, min(blocks, -(-PROGRAMS_PER_SM * sms // pairs)))
    chunk = -(-blocks // n) * block
    return chunk, -(-S // chunk), block


if triton is not None:

    @triton.jit
    def _merge_pair(m_ptr, l_ptr, acc_ptr, pair, N_CHUNKS, g, d, BLOCK_G: tl.constexpr, MASKED: tl.constexpr):
        """The pair's output [BLOCK_G, D] from its chunks' partial maximum, sum and weighted value sum (float32).
        Loads bypass L1 (.cg): other programs wrote the partials."""
        D: tl.constexpr = d.shape[0]
        top = tl.full([BLOCK_G], MASKED, tl.float32)
        for c in range(0, N_CHUNKS):
            top = tl.maximum(top, tl.load(m_ptr + (pair * N_CHUNKS + c) * BLOCK_G + g, cache_modifier=".cg"))
        total = tl.zeros([BLOCK_G], tl.float32)
        out = tl.zeros([BLOCK_G, D], tl.float32)
        for c in range(0, N_CHUNKS):
            row = (pair * N_CHUNKS + c) * BLOCK_G + g
            w = tl.exp(tl.load(m_ptr + row, cache_modifier=".cg") - top)
            total += w * tl.load(l_ptr + row, cache_modifier=".cg")
            out += w[:, None] * tl.load(acc_ptr + row[:, None] * D + d[None, :], cache_modifier=".cg")
        return out / total[:, None]

    @triton.jit
    def _partial_kernel(
        q_ptr, k_ptr, v_ptr, valid_ptr, m_ptr, l_ptr, acc_ptr, count_ptr, o_ptr,
        s_qb, s_qk, s_qg, s_kb, s_kk, s_ks, s_vb, s_vk, s_vs, s_mb, s_ob, s_ok, s_og,
        K, G, S, CHUNK, N_CHUNKS, scale,
        BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr, D: tl.constexpr, MASKED: tl.constexpr,
        MERGE: tl.constexpr,  # the last program of a pair merges its chunks (ONE_KERNEL)
    ):  # fmt: skip
        pair = tl.program_id(0)  # (batch row, kv head)
        c = tl.program_id(1)  # chunk of slots
        b, h = pair // K, pair % K
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, D)
        j = tl.arange(0, BLOCK_S)
        q = tl.load(q_ptr + b * s_qb + h * s_qk + g[:, None] * s_qg + d[None, :], mask=g[:, None] < G, other=0.0)
        m = tl.full([BLOCK_G], MASKED, tl.float32)
        l = tl.zeros([BLOCK_G], tl.float32)  # noqa: E741
        acc = tl.zeros([BLOCK_G, D], tl.float32)
        start = c * CHUNK
        for s0 in range(start, tl.minimum(start + CHUNK, S), BLOCK_S):
            s = s0 + j
            inside = s < S
            ok = tl.load(valid_ptr + b * s_mb + s, mask=inside, other=0) != 0  # [BLOCK_S]
            kt = tl.load(k_ptr + b * s_kb + h * s_kk + s[None, :] * s_ks + d[:, None], mask=inside[None, :], other=0.0)
            scores = tl.where(ok[None, :], tl.dot(q, kt) * scale, MASKED)  # [BLOCK_G, BLOCK_S] float32
            m_new = tl.maximum(m, tl.max(scores, 1))
            alpha = tl.exp(m - m_new)
            p = tl.where(ok[None, :], tl.exp(scores - m_new[:, None]), 0.0)
            l = l * alpha + tl.sum(p, 1)  # noqa: E741
            vt = tl.load(v_ptr + b * s_vb + h * s_vk + s[:, None] * s_vs + d[None, :], mask=inside[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
            m = m_new
        row = (pair * N_CHUNKS + c) * BLOCK_G + g
        tl.store(m_ptr + row, m)
        tl.store(l_ptr + row, l)
        tl.store(acc_ptr + row[:, None] * D + d[None, :], acc)
        if MERGE:
            done = tl.atomic_add(count_ptr + pair, 1)  # acq_rel: the stores above are visible to whoever counts last
            if done == N_CHUNKS - 1:
                out = _merge_pair(m_ptr, l_ptr, acc_ptr, pair, N_CHUNKS, g, d, BLOCK_G, MASKED)
                dst = o_ptr + b * s_ob + h * s_ok + g[:, None] * s_og + d[None, :]
                tl.store(dst, out.to(o_ptr.dtype.element_ty), mask=g[:, None] < G)
                tl.store(count_ptr + pair, 0)  # ready for the next call (CUDA-graph replays included)

    @triton.jit
    def _merge_kernel(
        m_ptr, l_ptr, acc_ptr, o_ptr, s_ob, s_ok, s_og, K, G, N_CHUNKS,
        BLOCK_G: tl.constexpr, D: tl.constexpr, MASKED: tl.constexpr,
    ):  # fmt: skip
        pair = tl.program_id(0)
        b, h = pair // K, pair % K
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, D)
        out = _merge_pair(m_ptr, l_ptr, acc_ptr, pair, N_CHUNKS, g, d, BLOCK_G, MASKED)
        dst = o_ptr + b * s_ob + h * s_ok + g[:, None] * s_og + d[None, :]
        tl.store(dst, out.to(o_ptr.dtype.element_ty), mask=g[:, None] < G)


if triton is not None:

    @triton.jit
    def _qk_norm_rope_kv_kernel(
        q_ptr, k_ptr, v_ptr, s_q, s_k, s_v, wq_ptr, wk_ptr, cos_ptr, sin_ptr,
        qo_ptr, s_qob, s_qoh, s_qot, ck_ptr, cv_ptr, s_cb, s_ch, s_cs, pos_ptr, s_pb, s_pt,
        T, H, eps, HALF: tl.constexpr,
    ):  # fmt: skip
        """Program (token row r, head h): q head h normed and rotated into qo; or, for h >= H, kv head h - H: k normed
        and rotated, and v as it is, written into the cache at the row's slot. float32 math, rounded to bf16 after the
        norm, the weight product, each RoPE product and their sum, as model.transformer.qk_norm_rope's eager ops
        round; on an H200 it agrees with them to a bf16 rounding (tests/test_decode_attention.py)."""
        r = tl.program_id(0)  # b * T + t
        h = tl.program_id(1)
        b, t = r // T, r % T
        d = tl.arange(0, HALF)
        if h < H:
            src = q_ptr + r * s_q + h * 2 * HALF
            w_ptr = wq_ptr
            dst = qo_ptr + b * s_qob + h * s_qoh + t * s_qot
        else:
            kh = h - H
            src = k_ptr + r * s_k + kh * 2 * HALF
            w_ptr = wk_ptr
            slot = tl.load(pos_ptr + b * s_pb + t * s_pt).to(tl.int64)
            dst = ck_ptr + b * s_cb + kh * s_ch + slot * s_cs
            vsrc = v_ptr + r * s_v + kh * 2 * HALF
            vdst = cv_ptr + b * s_cb + kh * s_ch + slot * s_cs
            tl.store(vdst + d, tl.load(vsrc + d))
            tl.store(vdst + HALF + d, tl.load(vsrc + HALF + d))
        x1 = tl.load(src + d).to(tl.float32)
        x2 = tl.load(src + HALF + d).to(tl.float32)
        rstd = tl.rsqrt((tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0)) / (2 * HALF) + eps)
        n1 = (tl.load(w_ptr + d).to(tl.float32) * (x1 * rstd).to(tl.bfloat16).to(tl.float32)).to(tl.bfloat16)
        n2 = (tl.load(w_ptr + HALF + d).to(tl.float32) * (x2 * rstd).to(tl.bfloat16).to(tl.float32)).to(tl.bfloat16)
        n1 = n1.to(tl.float32)
        n2 = n2.to(tl.float32)
        c1 = tl.load(cos_ptr + r * 2 * HALF + d).to(tl.float32)
        c2 = tl.load(cos_ptr + r * 2 * HALF + HALF + d).to(tl.float32)
        s1 = tl.load(sin_ptr + r * 2 * HALF + d).to(tl.float32)
        s2 = tl.load(sin_ptr + r * 2 * HALF + HALF + d).to(tl.float32)
        # x * cos + cat(-x2, x1) * sin, each product rounded to bf16 as the eager ops round it
        a1 = (n1 * c1).to(tl.bfloat16).to(tl.float32)
        b1 = (-n2 * s1).to(tl.bfloat16).to(tl.float32)
        a2 = (n2 * c2).to(tl.bfloat16).to(tl.float32)
        b2 = (n1 * s2).to(tl.bfloat16).to(tl.float32)
        tl.store(dst + d, (a1 + b1).to(tl.bfloat16))
        tl.store(dst + HALF + d, (a2 + b2).to(tl.bfloat16))


def qk_norm_rope_kv(
    q: Tensor, k: Tensor, v: Tensor, wq: Tensor, wk: Tensor, eps: float, cos: Tensor, sin: Tensor,
    cache_k: Tensor, cache_v: Tensor, cache_pos: Tensor,
) -> Tensor | None:  # fmt: skip
    """model.transformer.qk_norm_rope for a decode step's q [B, 1, H, D] and k [B, 1, K, D] (views of the projections'
    output, rows strided), with k and v [B, 1, K, D] written into one layer's cache [B, K, S, D] at `cache_pos` ([1],
    or [B, 1] per row) as model.transformer.write_cache would: one kernel. Returns q [B, H, 1, D], or None where it
    does not apply (not bf16 on CUDA, more than one token or 16 rows, a layout it does not take): the caller then runs
    its ops."""
    B, T, H, D = q.shape
    K = k.shape[2]
    ok = (
        FUSED_KV_WRITE and triton is not None and q.is_cuda and T == 1 and B <= 16
        and D % 2 == 0 and (D // 2) & (D // 2 - 1) == 0
        and all(x.dtype == torch.bfloat16 for x in (q, k, v, wq, wk, cos, sin, cache_k, cache_v))
        and all(x.stride(3) == 1 and x.stride(2) == D for x in (q, k, v))
        and cache_k.stride() == cache_v.stride() and cache_k.stride(3) == 1
        and cos.is_contiguous() and sin.is_contiguous() and cos.shape == (B, T, D)
    )  # fmt: skip
    if not ok:
        return None
    qo = torch.empty(B, H, T, D, device=q.device, dtype=q.dtype)
    pos = cache_pos if cache_pos.dim() == 2 else cache_pos[None]  # [B or 1, T]
    s_pb = pos.stride(0) if pos.shape[0] > 1 else 0
    _qk_norm_rope_kv_kernel[(B * T, H + K)](  # one token a row: a row's stride is its batch stride
        q, k, v, q.stride(0), k.stride(0), v.stride(0), wq, wk, cos, sin,
        qo, qo.stride(0), qo.stride(1), qo.stride(2), cache_k, cache_v, cache_k.stride(0), cache_k.stride(1),
        cache_k.stride(2), pos, s_pb, pos.stride(1), T, H, eps, HALF=D // 2, num_warps=1,
    )  # fmt: skip
    return qo


def triton_decode_attention(q: Tensor, k: Tensor, v: Tensor, valid: Tensor, scale: float) -> Tensor:
    """q [B, K, G, D], k/v [B, K, S, D] (e.g. slices of a KV cache; last dim contiguous), valid [B, S] bool
    -> [B, K, G, D]. D must be a power of two >= 16."""
    B, K, G, D = q.shape
    S = k.shape[2]
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("k and v need a contiguous last dimension")
    if D < 16 or D & (D - 1):
        raise ValueError(f"head_dim {D}: the kernel takes a power of two >= 16")
    valid = valid if valid.stride(-1) == 1 else valid.contiguous()
    valid = valid.view(torch.uint8) if valid.dtype == torch.bool else valid
    chunk, n, block = chunking(B * K, S, _sm_count(q.device.index or 0))
    BLOCK_G = max(16, triton.next_power_of_2(G))
    m = torch.empty(B * K, n, BLOCK_G, device=q.device, dtype=torch.float32)
    l = torch.empty_like(m)  # noqa: E741
    acc = torch.empty(B * K, n, BLOCK_G, D, device=q.device, dtype=torch.float32)
    out = torch.empty(B, K, G, D, device=q.device, dtype=q.dtype)
    count = _counters(q.device, B * K) if ONE_KERNEL else m
    _partial_kernel[(B * K, n)](
        q, k, v, valid, m, l, acc, count, out,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), valid.stride(0), out.stride(0), out.stride(1), out.stride(2),
        K, G, S, chunk, n, scale,
        BLOCK_G=BLOCK_G, BLOCK_S=block, D=D, MASKED=MASKED, MERGE=ONE_KERNEL, num_warps=NUM_WARPS,
    )  # fmt: skip
    if not ONE_KERNEL:
        _merge_kernel[(B * K,)](
            m, l, acc, out, out.stride(0), out.stride(1), out.stride(2), K, G, n,
            BLOCK_G=BLOCK_G, D=D, MASKED=MASKED,
        )  # fmt: skip
    return out


_COUNTS: dict[torch.device, Tensor] = {}
_OUTGROWN: list[Tensor] = []  # counters replaced by larger ones stay alive: captured graphs may still point at them


def _counters(device: torch.device, pairs: int) -> Tensor:
    """int32 zeros, one per (row, kv head) pair, that the kernel leaves at zero after each call: allocated once per
    device, outside CUDA-graph capture (the engine runs every step eagerly before capturing it)."""
    t = _COUNTS.get(device)
    if t is None or t.numel() < pairs:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("triton_decode_attention: first call inside CUDA graph capture; call it eagerly first")
        if t is not None:
            _OUTGROWN.append(t)
        t = _COUNTS[device] = torch.zeros(max(pairs, 1024), dtype=torch.int32, device=device)
    return t


def use_triton_decode_attention(on: bool = True) -> bool:
    """Route `transformer.decode_attention` through the Triton kernels on 16-bit CUDA tensors (float32 keeps the
    products; process-wide; before any CUDA graph is captured). Returns whether it is on (False where Triton is
    missing)."""
    from . import transformer

    on = on and triton is not None
    transformer.DECODE_ATTENTION["triton"] = triton_decode_attention if on else None
    transformer.DECODE_ATTENTION["qk_norm_rope_kv"] = qk_norm_rope_kv if on else None
    return on
