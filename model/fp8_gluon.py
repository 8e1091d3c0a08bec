"""Float8 weight-only decode products with the weights loaded straight into tensor-core registers (Gluon).

y[M, N] = x[M, K] @ (W[N, K] * scale[N])^T for M <= 16 rows, W float8 e4m3 with one float32 scale per output channel.

Why a second kernel: `model.skinny_mm` (plain Triton) stages each W tile through shared memory (cp.async, then a
shared-memory load, the float8 -> bf16 conversion and a layout change for `tl.dot`), and pads the activations to 16
rows in shared memory too. On an H200 it read float8 weights at 3.0-3.5 TB/s, where a kernel that only loads the same
tiles reads 4.0-4.2 (`benchmarks/fp8_variants.py`). Gluon (Triton's explicit-layout dialect) lets the W tile be loaded
from global memory directly in the register layout of the MMA's A operand (16-byte loads: `k_width` 16 puts 16
consecutive k of a row in one thread, the same permutation of k for W and x), converted in registers and multiplied
with `mma.sync` m16n8k16: no shared memory, no barriers in the loop.

The tile is [S, BLOCK_N, KS]: S slices of K run side by side as a batched MMA (one warp per slice and per 16 rows), so
a narrow projection (N = 5120) still gives every SM several warps; the slices' sums are added once at the end. The
conversion leaves out model.skinny_mm's multiply by 2^120 (it goes into the scale, once per output).

`fp8_mm_available()` says whether it can run: CUDA sm89+ (measured on sm_90) with a Triton that has Gluon.
Otherwise model.skinny_mm.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import mma_v2
except ImportError:  # no Triton, or one without Gluon
    gluon = None

TWO_120 = 2.0**120
MAX_ROWS = 16
# float8 e4m3 -> bf16 for four weights in one 32-bit register ($2) into two bf16x2 registers ($0, $1). Per 16-bit lane,
# prmt puts a weight's byte in the low half and copies of its sign bit in the high half; (lane << 4) & 0x87F0 is then
# sign | exponent | mantissa in bf16's places with e4m3's exponent bias (7, not 127): 2^-120 of the value, exact in
# bf16 (subnormals too). model.skinny_mm multiplies by 2^120 in the same asm; this module folds it into the scales.
E4M3_LANES_PTX = """
prmt.b32 $0, $2, $2, 0x9180;
prmt.b32 $1, $2, $2, 0xB3A2;
shl.b32 $0, $0, 4;
shl.b32 $1, $1, 4;
and.b32 $0, $0, 0x87F087F0;
and.b32 $1, $1, 0x87F087F0;
"""


@functools.cache
def fp8_mm_available(device: torch.device) -> bool:
    device = torch.device(device)
    if gluon is None or device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


if gluon is not None:
    _TWO_120 = gl.constexpr(TWO_120)

    _E4M3_LANES = gl.constexpr(E4M3_LANES_PTX)

    @gluon.jit
    def _e4m3_to_bf16_scaled(w):
        """float8 e4m3 -> bf16 times 2^-120, exactly, in integer ops (`E4M3_LANES_PTX`)."""
        return gl.inline_asm_elementwise(
            asm=_E4M3_LANES, constraints="=r,=r,r", args=[w.to(gl.uint8, bitcast=True)], dtype=gl.bfloat16,
            is_pure=True, pack=4,
        )  # fmt: skip

    @gluon.jit
    def _fp8_mm_kernel(
        x_ptr,  # [M, K] bf16
        w_ptr,  # [N, K] float8 e4m3
        s_ptr,  # [N] float32
        y_ptr,  # [M, N] bf16
        M,
        N,
        K,  # a multiple of S * KS
        BLOCK_N: gl.constexpr,  # 16 * WN * (m16 tiles per warp)
        KS: gl.constexpr,  # k per slice per iteration
        S: gl.constexpr,  # K slices, one warp each (batch dim of the MMA)
        WN: gl.constexpr,  # warps along N
        MP: gl.constexpr,  # rows padded: 8 or 16 (n of the MMA)
        KW: gl.constexpr,  # consecutive k per thread (16: 16-byte loads of W)
        PREFETCH: gl.constexpr,  # load the next W tile before multiplying this one
        GLU: gl.constexpr = False,  # W is [gate; up] [2N, K]: y = silu(x @ gate^T) * (x @ up^T), [M, N]
    ):
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[S, WN, 1], instr_shape=[1, 16, 8])
        a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=KW)
        b_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=KW)
        pid = gl.program_id(0)
        # W tile pointers [S, BLOCK_N, KS] in the A operand's layout; rows past N read row n % N (never stored)
        sa = gl.arange(0, S, layout=gl.SliceLayout(1, gl.SliceLayout(2, a_l)))
        na = pid * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, gl.SliceLayout(2, a_l)))
        ka = gl.arange(0, KS, layout=gl.SliceLayout(0, gl.SliceLayout(1, a_l)))
        w_ptrs = (
            w_ptr
            + gl.expand_dims(gl.expand_dims((na % N).to(gl.int64) * K, 0), 2)
            + gl.expand_dims(gl.expand_dims(sa * KS, 1), 2)
            + gl.expand_dims(gl.expand_dims(ka, 0), 1)
        )
        # x tile pointers [S, KS, MP] in the B operand's layout; padded rows load nothing
        sb = gl.arange(0, S, layout=gl.SliceLayout(1, gl.SliceLayout(2, b_l)))
        kb = gl.arange(0, KS, layout=gl.SliceLayout(0, gl.SliceLayout(2, b_l)))
        mb = gl.arange(0, MP, layout=gl.SliceLayout(0, gl.SliceLayout(1, b_l)))
        mb3 = gl.expand_dims(gl.expand_dims(mb, 0), 1)
        kb3 = gl.expand_dims(gl.expand_dims(kb, 0), 2)
        sb3 = gl.expand_dims(gl.expand_dims(sb, 1), 2)
        x_ptrs = x_ptr + mb3 * K + sb3 * KS + kb3
        x_mask = (mb3 < M) & (kb3 < KS) & (sb3 < S)  # [S, KS, MP]: the last two always hold, they give the shape
        acc = gl.zeros([S, BLOCK_N, MP], gl.float32, layout=mma)
        step = S * KS
        if GLU:  # a second accumulator for the up rows, N rows after the gate rows (no PREFETCH configs)
            acc_up = gl.zeros([S, BLOCK_N, MP], gl.float32, layout=mma)
            up = N.to(gl.int64) * K
        if PREFETCH:  # converted tiles are carried: a float8 tile would take a register per byte
            wb = _e4m3_to_bf16_scaled(gl.load(w_ptrs))
            for _ in range(step, K, step):
                w_ptrs += step
                w_next = gl.load(w_ptrs)
                x = gl.load(x_ptrs, mask=x_mask, other=0.0)
                acc = mma_v2(wb, x, acc)
                x_ptrs += step
                wb = _e4m3_to_bf16_scaled(w_next)
            x = gl.load(x_ptrs, mask=x_mask, other=0.0)
            acc = mma_v2(wb, x, acc)
        else:
            for _ in range(0, K, step):
                w = gl.load(w_ptrs)
                if GLU:
                    wu = gl.load(w_ptrs + up)
                x = gl.load(x_ptrs, mask=x_mask, other=0.0)
                acc = mma_v2(_e4m3_to_bf16_scaled(w), x, acc)
                if GLU:
                    acc_up = mma_v2(_e4m3_to_bf16_scaled(wu), x, acc_up)
                w_ptrs += step
                x_ptrs += step
        out = gl.sum(acc, axis=0)  # [BLOCK_N, MP]: the slices added, once
        o_l: gl.constexpr = gl.SliceLayout(0, mma)
        on = pid * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, o_l))
        om = gl.arange(0, MP, layout=gl.SliceLayout(0, o_l))
        s = gl.load(s_ptr + on % N) * _TWO_120
        y = out * gl.expand_dims(s, 1)
        if GLU:  # model.transformer.swiglu on the two products, each rounded to bf16 first as unfused
            u = gl.sum(acc_up, axis=0) * gl.expand_dims(gl.load(s_ptr + N + on % N) * _TWO_120, 1)
            g = y.to(gl.bfloat16).to(gl.float32)
            silu = (g / (1.0 + gl.exp(-g))).to(gl.bfloat16).to(gl.float32)
            y = silu * u.to(gl.bfloat16).to(gl.float32)
        y_ptrs = y_ptr + gl.expand_dims(om, 0) * N + gl.expand_dims(on, 1)
        gl.store(y_ptrs, y.to(gl.bfloat16), mask=(gl.expand_dims(om, 0) < M) & (gl.expand_dims(on, 1) < N))


# (BLOCK_N, KS, S, WN, KW, PREFETCH). Narrow projections (N = 5120) want many warps along K (S = 8-16); wide ones
# (gate_up, N = 51,200) few warps per program and many programs. Timed on an H200 (benchmarks/fp8_variants.py).
CONFIGS = [
    (16, 256, 4, 1, 16, 0),
    (16, 128, 8, 1, 16, 0),
    (16, 64, 16, 1, 16, 0),
    (16, 64, 8, 1, 16, 0),
    (16, 128, 4, 1, 16, 0),
    (16, 64, 4, 1, 16, 0),
    (16, 512, 2, 1, 16, 0),
    (16, 256, 2, 1, 16, 0),
    (16, 128, 2, 1, 16, 0),
    (16, 512, 1, 1, 16, 0),
    (16, 256, 1, 1, 16, 0),
    (16, 1024, 1, 1, 16, 0),
    (32, 128, 4, 2, 16, 0),
    (32, 64, 8, 2, 16, 0),
    (32, 256, 2, 2, 16, 0),
    (32, 128, 2, 2, 16, 0),
    (64, 256, 1, 4, 16, 0),
    (16, 256, 4, 1, 16, 1),
    (16, 128, 8, 1, 16, 1),
    (16, 128, 1, 1, 16, 0),  # small K (a multiple of 64 or 128: the shipped mini, tests)
    (16, 64, 2, 1, 16, 0),
    (16, 64, 1, 1, 16, 0),
]


def config_fits(cfg: tuple, K: int) -> bool:
    _, ks, s, _, kw, _ = cfg
    return K % (s * ks) == 0 and ks % kw == 0


@functools.cache
def k_fits(K: int) -> bool:
    """Some config divides K (any multiple of 64 does); otherwise model.skinny_mm's kernel takes the product."""
    return any(config_fits(c, K) for c in CONFIGS)


def fp8_mm(
    x: Tensor, w: Tensor, scale: Tensor, out: Tensor | None = None, config: tuple | None = None, glu: bool = False
) -> Tensor:
    """x [M, K] bf16 (M <= 16) @ (w [N, K] float8 e4m3 * scale [N])^T -> [M, N] bf16. `config`: one of `CONFIGS`;
    default the one `tune` chose for (N, K, padded rows, glu), tuned eagerly at the first call. `glu`: w is a fused
    [gate; up] projection [2N', K] and the result is silu(gate product) * (up product) [M, N'] (model.skinny_mm)."""
    M, K = x.shape
    N = w.shape[0] // 2 if glu else w.shape[0]  # output columns
    if not 1 <= M <= MAX_ROWS or w.shape[1] != K or (glu and w.shape[0] % 2):
        raise ValueError(f"fp8_mm: x {tuple(x.shape)}, w {tuple(w.shape)} (1-{MAX_ROWS} rows)")
    mp = padded_rows(M)
    cfg = config or _BEST.get((N, K, mp, glu)) or tune(x, w, scale, glu)
    if not config_fits(cfg, K) or (glu and cfg[5]):
        raise ValueError(f"fp8_mm: config {cfg} does not divide K = {K} (or prefetches with glu)")
    bn, ks, s, wn, kw, pf = cfg
    y = torch.empty(M, N, dtype=torch.bfloat16, device=x.device) if out is None else out
    _fp8_mm_kernel[(-(-N // bn),)](
        x.contiguous(), w, scale.reshape(-1), y, M, N, K,
        BLOCK_N=bn, KS=ks, S=s, WN=wn, MP=mp, KW=kw, PREFETCH=pf, GLU=glu, num_warps=s * wn,
    )  # fmt: skip
    return y


def padded_rows(M: int) -> int:
    """Rows as the kernel's MMA takes them (its n): 8, or 16 for 9-16 rows; part of the tuning key."""
    return 8 if M <= 8 else 16


_BEST: dict[tuple[int, int, int, bool], tuple] = {}  # (N, K, padded rows, glu) -> the fastest config (tune)


def tune(x: Tensor, w: Tensor, scale: Tensor, glu: bool = False) -> tuple:
    """Time every config that fits on these operands (median of `triton.testing.do_bench`, which clears L2 between
    calls, as a decode step finds it) and keep the fastest for (N, K, padded rows, glu). Eagerly only: raises inside
    CUDA graph capture, where nothing can be timed."""
    import triton.testing

    M, (N, K) = x.shape[0], w.shape
    N = N // 2 if glu else N
    key = (N, K, padded_rows(M), glu)
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            f"fp8_mm: first call for (N, K, rows) = {key} inside CUDA graph capture; run it eagerly first"
        )
    y = torch.empty(M, N, dtype=torch.bfloat16, device=x.device)
    times, failed = {}, {}
    for cfg in (c for c in CONFIGS if config_fits(c, K) and not (glu and c[5])):
        try:
            fp8_mm(x, w, scale, y, cfg, glu)  # compiles
        except Exception as e:  # a config this Triton cannot compile is left out, not fatal  # noqa: PERF203
            failed[cfg] = e
            continue
        times[cfg] = triton.testing.do_bench(lambda c=cfg: fp8_mm(x, w, scale, y, c, glu), warmup=5, rep=20)
    if not times:
        raise RuntimeError(f"fp8_mm: no config compiled for (N, K, rows) = {key}: {failed}")
    _BEST[key] = min(times, key=times.get)
    return _BEST[key]
