"""Decode attention (one query token per row) as one Triton kernel pair, split over the cached slots.

The default decode attention (`transformer.decode_attention`) is three kernels per layer: scores as a batched
product, a masked softmax, and the values as a second batched product (0.74 ms of a 19 ms 34B CFG step on an H200,
benchmarks/RESULTS.md). Here one kernel does all three for a chunk of slots with an online softmax (flash-decoding),
writing a partial maximum, sum and weighted value sum per chunk, and a second kernel merges the chunks. A decode step
has few query rows (G = heads per kv head = 8 at 34B) and few (row, kv head) pairs (16 at one CFG stream), so the
slots are what gets split across the SMs: chunks are sized to give about four programs per SM.

The mask is one row per batch row ([B, S], True = attend): in decode every query head of a row sees the same slots.
Scores and the running sums are float32; the probabilities are rounded to the values' dtype for the second product,
as the default path does. Off by default until measured on a GPU: `use_triton_decode_attention()` switches it on.
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

BLOCK_S = 64  # slots per inner step (one tl.dot each for scores and values)
PROGRAMS_PER_SM = 4
MASKED = -1.0e30  # a finite "minus infinity": a chunk with no valid slot keeps finite sums (weight 0 when merged)


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


def chunking(pairs: int, S: int, sms: int) -> tuple[int, int]:
    """(chunk, n_chunks): slots per program, a multiple of BLOCK_S, so that pairs x n_chunks ~ PROGRAMS_PER_SM x sms."""
    blocks = -(-S // BLOCK_S)
    n = max(1, min(blocks, -(-PROGRAMS_PER_SM * sms // pairs)))
    chunk = -(-blocks // n) * BLOCK_S
    return chunk, -(-S // chunk)


if triton is not None:

    @triton.jit
    def _partial_kernel(
        q_ptr, k_ptr, v_ptr, valid_ptr, m_ptr, l_ptr, acc_ptr,
        s_qb, s_qk, s_qg, s_kb, s_kk, s_ks, s_vb, s_vk, s_vs, s_mb,
        K, G, S, CHUNK, N_CHUNKS, scale,
        BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr, D: tl.constexpr, MASKED: tl.constexpr,
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

    @triton.jit
    def _merge_kernel(
        m_ptr, l_ptr, acc_ptr, o_ptr, s_ob, s_ok, s_og, K, G, N_CHUNKS,
        BLOCK_G: tl.constexpr, D: tl.constexpr, MASKED: tl.constexpr,
    ):  # fmt: skip
        pair = tl.program_id(0)
        b, h = pair // K, pair % K
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, D)
        top = tl.full([BLOCK_G], MASKED, tl.float32)
        for c in range(0, N_CHUNKS):
            top = tl.maximum(top, tl.load(m_ptr + (pair * N_CHUNKS + c) * BLOCK_G + g))
        total = tl.zeros([BLOCK_G], tl.float32)
        out = tl.zeros([BLOCK_G, D], tl.float32)
        for c in range(0, N_CHUNKS):
            row = (pair * N_CHUNKS + c) * BLOCK_G + g
            w = tl.exp(tl.load(m_ptr + row) - top)
            total += w * tl.load(l_ptr + row)
            out += w[:, None] * tl.load(acc_ptr + row[:, None] * D + d[None, :])
        out = out / total[:, None]
        dst = o_ptr + b * s_ob + h * s_ok + g[:, None] * s_og + d[None, :]
        tl.store(dst, out.to(o_ptr.dtype.element_ty), mask=g[:, None] < G)


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
    chunk, n = chunking(B * K, S, _sm_count(q.device.index or 0))
    BLOCK_G = max(16, triton.next_power_of_2(G))
    m = torch.empty(B * K, n, BLOCK_G, device=q.device, dtype=torch.float32)
    l = torch.empty_like(m)  # noqa: E741
    acc = torch.empty(B * K, n, BLOCK_G, D, device=q.device, dtype=torch.float32)
    out = torch.empty(B, K, G, D, device=q.device, dtype=q.dtype)
    _partial_kernel[(B * K, n)](
        q, k, v, valid, m, l, acc,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), valid.stride(0),
        K, G, S, chunk, n, scale,
        BLOCK_G=BLOCK_G, BLOCK_S=BLOCK_S, D=D, MASKED=MASKED,
    )  # fmt: skip
    _merge_kernel[(B * K,)](
        m, l, acc, out, out.stride(0), out.stride(1), out.stride(2), K, G, n,
        BLOCK_G=BLOCK_G, D=D, MASKED=MASKED,
    )  # fmt: skip
    return out


def use_triton_decode_attention(on: bool = True) -> bool:
    """Route `transformer.decode_attention` through the Triton kernels on CUDA tensors (process-wide; before any
    CUDA graph is captured). Returns whether it is on (False where Triton is missing)."""
    from . import transformer

    transformer.DECODE_ATTENTION["triton"] = triton_decode_attention if on and triton is not None else None
    return transformer.DECODE_ATTENTION["triton"] is not None
