"""Skinny GEMMs for decoding: y[M, N] = x[M, K] @ W[N, K]^T for M <= 16 rows, streaming W at HBM bandwidth.

A decode step at batch 1-8 (2-16 rows with CFG) reads every weight once and does almost no arithmetic, so what counts
is how close the products come to the memory bandwidth. One Triton kernel does it for bf16 weights and for float8
e4m3 weights with one float32 scale per output channel (weight-only FP8: the activations stay bf16, each W tile is
converted to bf16 in registers, products accumulate in float32 and are scaled by scale[n] at the end).

The kernel: one program per BLOCK_N output channels, looping over K in BLOCK_K steps; no split-K across programs (the
34B shapes have N >= 5120: BLOCK_N 16-128 gives 40-8192 programs, and the autotuner picks). Inside a program the W
tile is one batched `tl.dot` of SLICES K slices, so each warp streams and converts its own slice (a plain 2-D dot at
BLOCK_N = 16 makes all warps load, and for float8 convert, the same W tile); the slices' sums are added once at the
end (a fixed order: deterministic). The rows are padded to 16 (tl.dot's minimum) by masking the loads of x; W rows past
N are clamped (read again, never stored). Float8 weights become bf16 with integer ops (`_e4m3_to_bf16`), not Triton's
conversion (see there). Configurations are autotuned per (N, K, power-of-two row bucket, scaled or not) the first time
a shape is seen; **that must not happen inside CUDA graph capture**: the engine runs every step eagerly twice before
capturing it (model/engine.py `capture_graph`), and `tune(model)` tunes ahead of time. A first call while capturing
raises instead of breaking the capture.

Float8 products of at most `GLUON_ROWS` (8) rows go to `model.fp8_gluon` instead where it runs (sm89+, a Triton with
Gluon): it loads W straight into tensor-core registers and reads float8 15-20 % faster (benchmarks/RESULTS.md).

Where Triton cannot run (no Triton, CPU, float32 activations) `skinny_mm` computes the same math in torch. Set
TRITON_INTERPRET=1 before importing this module to run the kernel with Triton's CPU interpreter (tests).
"""

from __future__ import annotations

import functools
import inspect
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .fp8 import PROJECTIONS, Fp8Linear
from .fp8_gluon import E4M3_LANES_PTX, fp8_mm, fp8_mm_available, k_fits

try:
    import triton
    import triton.language as tl
except ImportError:  # CI and CPU installs: the torch fallback below
    triton = None

MAX_ROWS = 16  # the kernel pads rows to 16; more rows (prefill, Jacobi windows) take cuBLAS
# float8 products of at most this many rows go through model.fp8_gluon's kernel where it runs (W loaded straight into
# tensor-core registers: 1.1-1.2x faster than this module's kernel at 2 rows on an H200, slower at 16)
GLUON_ROWS = 8
# SkinnyLinear.forward_swiglu: decode steps' SwiGLU in the fused gate_up product's epilogue, not a kernel of its own
FUSE_SWIGLU = True
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
FP8_ASM = True  # float8 -> bf16 by integer ops (_e4m3_to_bf16); False: Triton's conversion (slower, see there)
FP8 = torch.float8_e4m3fn
# Programmatic dependent launch (Hopper+; `use_pdl`): a product may start while the kernel before it finishes, pulling
# its first weight tiles toward L2, and waits for that kernel only before it reads x. Set before graphs are captured.
PDL = {"on": False}


def pdl_available() -> bool:
    """Programmatic dependent launch runs here: CUDA sm90+, a Triton with grid dependency control, no interpreter."""
    ok = triton is not None and not INTERPRET and torch.cuda.is_available()
    return bool(ok and torch.cuda.get_device_capability() >= (9, 0) and hasattr(tl.extra.cuda, "gdc_wait"))


def use_pdl(on: bool = True) -> bool:
    """Launch every skinny product (and model.lamport_all_reduce's sums) with programmatic dependent launch,
    process-wide, where it runs. Returns whether it is on. (Measured on one H200: slower on one GPU, where the kernel
    before a product never lets it start early; see model.lamport_all_reduce.pdl_after_sums for where it pays.)"""
    PDL["on"] = bool(on and pdl_available())
    return PDL["on"]


@functools.cache
def skinny_available(device: torch.device, fp8: bool = False) -> bool:
    """Can the Triton kernel run on `device`: CUDA (sm80+, sm89+ for float8) with Triton importable, or any device
    under TRITON_INTERPRET=1."""
    device = torch.device(device)
    if triton is None:
        return False
    if INTERPRET:
        return True
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    cap = torch.cuda.get_device_capability(device)
    return cap >= ((8, 9) if fp8 else (8, 0))


def skinny_mm_reference(x: Tensor, w: Tensor, scale: Tensor | None = None) -> Tensor:
    """The kernel's math in torch: float32 products of x and W (times its per-channel scales), rounded once to
    x's dtype. x [M, K], w [N, K] (bf16 or float8), scale [N] (or [1, N]) float32 -> [M, N]."""
    wf = w.float() if scale is None else w.float() * scale.reshape(-1, 1).float()
    return (x.float() @ wf.T).to(x.dtype)


if triton is not None:
    # (BLOCK_N, BLOCK_K, warps, stages, SLICES). No W element is loaded or converted by two warps: each warp has its
    # own K slice (SLICES = warps), or its own 16-32 rows of the tile (the two configs with fewer slices than warps).
    # BLOCK_N 16-32 gives N = 5120 (o, down) 160-320 programs for 132 SMs; 64-128 suit the wide gate_up and head.
    # Shared memory: at most 144 KiB (bf16). A model of the compiled sm_90 loops (instructions per weight byte
    # against one SM's share of 4.4 TB/s) puts every config under half the issue, integer and shared-memory rates.
    _CONFIGS = [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SLICES": sl}, num_warps=w, num_stages=st)
        for bn, bk, w, st, sl in [
            (16, 256, 4, 4, 4),
            (16, 256, 4, 6, 4),
            (16, 512, 4, 3, 4),
            (16, 512, 4, 4, 4),
            (16, 512, 8, 3, 8),
            (16, 256, 2, 5, 2),
            (32, 128, 4, 6, 4),
            (32, 256, 4, 4, 4),
            (32, 256, 8, 4, 8),
            (32, 512, 4, 3, 4),
            (32, 512, 8, 3, 8),
            (64, 128, 4, 5, 2),
            (64, 128, 4, 5, 4),
            (64, 256, 4, 3, 4),
            (64, 256, 8, 4, 8),
            (64, 256, 4, 4, 1),
            (128, 128, 8, 4, 4),
            (128, 256, 8, 3, 8),
        ]
    ]

    _E4M3_TO_BF16 = tl.constexpr(
        "{ .reg .b32 bias, nz; mov.b32 bias, 0x7B807B80; mov.b32 nz, 0x80008000;\n"
        + E4M3_LANES_PTX
        + "fma.rn.bf16x2 $0, $0, bias, nz; fma.rn.bf16x2 $1, $1, bias, nz; }"
    )
    _E4M3_TO_BF16_SCALED = tl.constexpr(E4M3_LANES_PTX)

    @triton.jit
    def _e4m3_to_bf16(w, SCALED: tl.constexpr = False):
        """float8 e4m3 -> bf16, exactly (subnormals too), in integer ops: model.fp8_gluon.E4M3_LANES_PTX gives 2^-120 of
        each value, and one bf16x2 multiply by 2^120 fixes it (left out with SCALED: the caller scales the products).
        Two weights per 32-bit register: 4 instructions per 2 weights, half of them off the integer pipe. Triton's own
        conversion (cvt e4m3x2 -> f16x2, then f16 -> bf16 one at a time) runs on the conversion units, too slow to
        keep up with a float8 weight stream at HBM speed."""
        if SCALED:
            asm: tl.constexpr = _E4M3_TO_BF16_SCALED
        else:
            asm: tl.constexpr = _E4M3_TO_BF16
        return tl.inline_asm_elementwise(
            asm=asm, constraints="=r,=r,r", args=[w.to(tl.uint8, bitcast=True)], dtype=tl.bfloat16, is_pure=True,
            pack=4,
        )  # fmt: skip

    @triton.jit
    def _dot(w, x, F32_DOT: tl.constexpr, FP8_ASM: tl.constexpr):
        """w [S, BLOCK_N, k] (bf16 or float8) @ x [S, k, BLOCK_M] bf16, float32 accumulation."""
        if F32_DOT:
            return tl.dot(w.to(tl.float32), x.to(tl.float32))
        elif FP8_ASM and w.dtype == tl.float8e4nv:
            return tl.dot(_e4m3_to_bf16(w), x)
        else:
            return tl.dot(w.to(tl.bfloat16), x)

    @triton.jit
    def silu_mul(gate, up):
        """silu(gate) * up for bf16 gate and up, rounded to bf16 after the silu and after the product, as the eager
        ops round (model.transformer.swiglu)."""
        g = gate.to(tl.float32)
        s = (g / (1.0 + tl.exp(-g))).to(tl.bfloat16).to(tl.float32)
        return (s * up.to(tl.float32)).to(tl.bfloat16)

    @triton.jit(do_not_specialize=["M", "M_BUCKET"])
    def _skinny_kernel(
        x_ptr,  # [M, K] bf16, rows contiguous
        w_ptr,  # [N, K] bf16 or float8 e4m3, rows contiguous
        s_ptr,  # [N] float32 per-channel scales (read only when HAS_SCALE)
        y_ptr,  # [M, N] bf16
        M,
        N,
        K,
        M_BUCKET,  # rows rounded up to a power of two: only part of the autotuning key
        HAS_SCALE: tl.constexpr,
        BLOCK_M: tl.constexpr,  # 16: the rows padded for tl.dot
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        SLICES: tl.constexpr,  # the K tile as SLICES batched products: warps split K instead of sharing W
        EVEN_K: tl.constexpr,
        F32_DOT: tl.constexpr,  # Triton's CPU interpreter multiplies bf16 operands wrongly (3.9): float32 there
        FP8_ASM: tl.constexpr,  # float8 weights: convert with _e4m3_to_bf16 (else Triton's cvt)
        USE_PDL: tl.constexpr = False,  # launched with programmatic dependent launch (use_pdl)
        W_LINE: tl.constexpr = 64,  # weights per 128-byte line (64 bf16, 128 float8)
        GLU: tl.constexpr = False,  # W is [gate; up] [2N, K]: y = silu(x @ gate^T) * (x @ up^T), [M, N]
    ):
        # A W tile [BLOCK_N, BLOCK_K] is read as [SLICES, BLOCK_N, BLOCK_K / SLICES]: one batched tl.dot with the
        # matching x slices [SLICES, BLOCK_K / SLICES, BLOCK_M] gives each warp its own K slice (a plain 2-D dot with
        # BLOCK_N = 16 makes every warp load and convert the whole W tile); the slices are summed once at the end.
        pid = tl.program_id(0)
        offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rows_n = offs_n % N  # W rows past N read row n % N again: no mask on the weight stream
        if USE_PDL:
            # Started before the previous kernel is done: the weights do not depend on it, so pull this program's
            # first two K tiles toward L2 meanwhile; x is its output, so wait for it before the loop.
            tl.extra.cuda.gdc_launch_dependents()
            lines = tl.minimum(tl.arange(0, 2 * BLOCK_K // W_LINE) * W_LINE, K - 1)
            first = w_ptr + rows_n.to(tl.int64)[:, None] * K + lines[None, :]
            tl.inline_asm_elementwise(
                "prefetch.global.L2 [$1];", "=r,l", [first], dtype=tl.int32, is_pure=False, pack=1
            )
            tl.extra.cuda.gdc_wait()
        offs_m = tl.arange(0, BLOCK_M)
        k3 = tl.arange(0, SLICES)[:, None, None] * (BLOCK_K // SLICES)  # [S, 1, 1]
        kw = k3 + tl.arange(0, BLOCK_K // SLICES)[None, None, :]  # [S, 1, BLOCK_K / S]: k of the W tile
        kx = k3 + tl.arange(0, BLOCK_K // SLICES)[None, :, None]  # [S, BLOCK_K / S, 1]: k of the x tile
        m_mask = offs_m[None, None, :] < M  # padded rows load nothing
        w_ptrs = w_ptr + rows_n.to(tl.int64)[None, :, None] * K + kw  # [S, BLOCK_N, BLOCK_K / S]
        x_ptrs = x_ptr + offs_m[None, None, :] * K + kx  # [S, BLOCK_K / S, BLOCK_M]
        acc = tl.zeros((SLICES, BLOCK_N, BLOCK_M), dtype=tl.float32)
        if GLU:
            acc_up = tl.zeros((SLICES, BLOCK_N, BLOCK_M), dtype=tl.float32)
            up = N.to(tl.int64) * K  # the up rows start N rows after the gate rows
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN_K:
                w = tl.load(w_ptrs)
                x = tl.load(x_ptrs, mask=m_mask, other=0.0)
                if GLU:
                    wu = tl.load(w_ptrs + up)
            else:
                left = K - k * BLOCK_K
                w = tl.load(w_ptrs, mask=kw < left, other=0.0)
                x = tl.load(x_ptrs, mask=m_mask & (kx < left), other=0.0)
                if GLU:
                    wu = tl.load(w_ptrs + up, mask=kw < left, other=0.0)
            if GLU:
                acc_up += _dot(wu, x, F32_DOT, FP8_ASM)
            acc += _dot(w, x, F32_DOT, FP8_ASM)
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
        y = tl.sum(acc, axis=0)  # [BLOCK_N, BLOCK_M]
        if HAS_SCALE:
            y = y * tl.load(s_ptr + rows_n)[:, None]
        if GLU:
            u = tl.sum(acc_up, axis=0)
            if HAS_SCALE:
                u = u * tl.load(s_ptr + N + rows_n)[:, None]
            y = silu_mul(y.to(tl.bfloat16), u.to(tl.bfloat16))
        y_ptrs = y_ptr + offs_m[None, :] * N + offs_n[:, None]
        tl.store(y_ptrs, y.to(tl.bfloat16), mask=(offs_m[None, :] < M) & (offs_n[:, None] < N))

    _kernel = triton.heuristics({"EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0})(_skinny_kernel)
    _bench = {}  # shorter timing runs than Triton's default (25 + 100 ms a config), where this Triton takes them
    if "do_bench" in inspect.signature(triton.autotune).parameters:
        import triton.testing

        _bench["do_bench"] = lambda fn, quantiles: triton.testing.do_bench(fn, warmup=5, rep=25, quantiles=quantiles)
    _key = ["N", "K", "M_BUCKET", "HAS_SCALE", "FP8_ASM", "GLU"]
    _tuned_kernel = triton.autotune(_CONFIGS, key=_key, **_bench)(_kernel)

# (N, K, row bucket, weight dtype, scaled, FP8_ASM, glu) seen eagerly: a first call while a CUDA graph is being captured
# would autotune (synchronise) inside the capture
_TUNED: set[tuple] = set()
INTERPRET_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 128, "SLICES": 2}  # the interpreter does not autotune


def _use_kernel(x: Tensor, w: Tensor, scale: Tensor | None) -> bool:
    return (
        1 <= x.shape[0] <= MAX_ROWS
        and x.dtype == torch.bfloat16
        and w.dtype in (torch.bfloat16, FP8)
        and w.is_contiguous()
        and (scale is None or (scale.dtype == torch.float32 and scale.is_contiguous()))
        and skinny_available(x.device, w.dtype == FP8)
    )


def skinny_mm(
    x: Tensor,
    w: Tensor,
    scale: Tensor | None = None,
    out: Tensor | None = None,
    config=None,
    pdl: bool | None = None,
    glu: bool = False,
) -> Tensor:
    """x [M, K] @ w[N, K]^T (* scale [N] per output channel) -> [M, N] in x's dtype. With `glu`, w is a fused
    [gate; up] projection [2N', K] and the result is model.transformer.swiglu(gate, up) [M, N'], made in the kernel's
    epilogue from the two halves' products (each rounded to bf16 first, as the unfused path rounds them).

    The Triton kernel where it can run (bf16 x, 1 <= M <= 16, bf16 or float8 e4m3 w), else `skinny_mm_reference`.
    `out`: a contiguous [M, N] bf16 tensor to write (kernel path only). `config`: {"BLOCK_N", "BLOCK_K", "SLICES"}
    and optionally num_warps/num_stages, to run one configuration instead of the autotuned one (tests). `pdl`: launch
    with programmatic dependent launch (default: `use_pdl`'s process-wide choice)."""
    M, K = x.shape
    N = w.shape[0]
    if w.shape[1] != K or (scale is not None and scale.numel() != N) or (glu and N % 2):
        raise ValueError(f"skinny_mm: x {tuple(x.shape)}, w {tuple(w.shape)}, scale {None if scale is None else N}")
    if not _use_kernel(x, w, scale):
        y = skinny_mm_reference(x, w, scale)
        if glu:
            from .transformer import swiglu

            y = swiglu(*y.chunk(2, dim=-1))
        return y if out is None else out.copy_(y)
    x = x.contiguous()
    if scale is not None and M <= GLUON_ROWS and config is None and fp8_mm_available(x.device) and k_fits(K):
        return fp8_mm(x, w, scale, out, glu=glu)
    N = N // 2 if glu else N  # output columns
    y = torch.empty(M, N, dtype=torch.bfloat16, device=x.device) if out is None else out
    bucket = 1 << (M - 1).bit_length()  # 1, 2, 4, 8, 16
    s = scale.reshape(-1) if scale is not None else x  # unscaled: HAS_SCALE=False compiles the read of s_ptr away
    args = (x, w, s, y, M, N, K, bucket)
    kw = {"HAS_SCALE": scale is not None, "BLOCK_M": MAX_ROWS, "F32_DOT": INTERPRET, "FP8_ASM": FP8_ASM, "GLU": glu}
    if (PDL["on"] if pdl is None else pdl) and x.is_cuda and not INTERPRET:
        kw.update(USE_PDL=True, W_LINE=128 // w.element_size(), launch_pdl=True)
    if config is None and INTERPRET:
        config = INTERPRET_CONFIG
    if config is not None:
        bn = config["BLOCK_N"]
        _kernel[(triton.cdiv(N, bn),)](*args, **kw, **config)
        return y
    key = (N, K, bucket, w.dtype, scale is not None, FP8_ASM, glu)
    if key not in _TUNED:
        if x.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"skinny_mm: first call for (N, K, rows bucket) = {key[:3]} inside CUDA graph capture, where Triton "
                "cannot autotune; run the model eagerly once with these rows first (see model.skinny_mm.tune)"
            )
        _TUNED.add(key)
    _tuned_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)](*args, **kw)
    return y


class SkinnyLinear(nn.Module):
    """A frozen projection (no bias) whose small-batch products go through `skinny_mm`.

    bf16: holds the nn.Linear's own weight (no copy). float8 (`fp8=True`, or built from an `Fp8Linear`): weight
    float8 e4m3 [N, K] and scale float32 [1, N] exactly as `Fp8Linear` (per-channel absmax / 448), so the state-dict
    names and values are Fp8Linear's. Where the kernel does not run (rows > 16: prefill, Jacobi windows; no Triton):
    bf16 through F.linear, float8 through Fp8Linear's `torch._scaled_mm` path (activations quantized per row) where
    that runs, else (CPU) the dequantized product `skinny_mm_reference`."""

    def __init__(self, linear: nn.Linear | Fp8Linear, fp8: bool = False):
        super().__init__()
        if isinstance(linear, nn.Linear) and linear.bias is not None:
            raise ValueError("SkinnyLinear: projections have no bias")
        if isinstance(linear, nn.Linear) and fp8:
            linear = Fp8Linear(linear)  # the same quantization as quantize_fp8
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if isinstance(linear, Fp8Linear):
            self.register_buffer("weight", linear.weight)
            self.register_buffer("scale", linear.scale)
            self.use_scaled_mm = linear.use_scaled_mm  # read by Fp8Linear.forward
        else:
            self.weight = linear.weight
            self.weight.requires_grad_(False)
            self.scale = None
        self.pdl: bool | None = None  # skinny_mm's pdl (lamport_all_reduce.pdl_after_sums sets it)

    @property
    def fp8(self) -> bool:
        return self.scale is not None

    def to_linear(self) -> nn.Linear:
        """A bf16 SkinnyLinear as the nn.Linear it wraps (the same weight, no copy)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=False, device="meta")
        lin.weight = self.weight
        return lin

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8={self.fp8}"

    def forward(self, x: Tensor) -> Tensor:
        lead, K = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, K)
        if _use_kernel(x2, self.weight, self.scale):
            y = skinny_mm(x2, self.weight, self.scale, pdl=self.pdl)
        elif not self.fp8:
            return F.linear(x, self.weight)
        elif self.use_scaled_mm:
            return Fp8Linear.forward(self, x)  # same buffers and attributes: its W8A8 path
        else:  # CPU (tests): the kernel's weight-only numbers
            y = skinny_mm_reference(x2, self.weight, self.scale)
        return y.reshape(*lead, self.out_features)

    def forward_swiglu(self, x: Tensor) -> Tensor | None:
        """model.transformer.swiglu(*self(x).chunk(2, dim=-1)) for a fused [gate; up] projection, the SwiGLU made in
        the product's epilogue: one kernel a layer fewer in decode steps. None where the kernel does not take x (or
        FUSE_SWIGLU is off): the caller runs the product and the SwiGLU."""
        lead, K = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, K)
        if not FUSE_SWIGLU or self.out_features % 2 or not _use_kernel(x2, self.weight, self.scale):
            return None
        return skinny_mm(x2, self.weight, self.scale, pdl=self.pdl, glu=True).reshape(*lead, self.out_features // 2)


@torch.no_grad()
def use_skinny(model: nn.Module, fp8: bool = False, names: tuple[str, ...] = PROJECTIONS, head: bool = True) -> int:
    """Replace every projection named in `names` (nn.Linear, or Fp8Linear from quantize_fp8) by a SkinnyLinear, in
    place, one at a time (with fp8 the extra memory is one projection's float copy while it is quantized). bf16
    SkinnyLinears become float8 ones when fp8 is set. With fp8 and `head`, an Emu35 also gets a float8 copy of its
    output head (`head_fp8`, per-row scales as Fp8Linear) that decode steps multiply (Emu35.forward: at most 16 rows;
    prefill keeps the bf16 `lm_head`): at the 34B shape the visual slice a CFG step reads drops from 1.34 GB to 0.67
    GB. Returns how many projections were replaced (the head not counted)."""
    if fp8 and head and isinstance(getattr(model, "lm_head", None), nn.Linear) and model.head_fp8 is None:
        model.head_fp8 = Fp8Linear(model.lm_head)
    n = 0
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if child_name not in names:
                continue
            if isinstance(child, SkinnyLinear):
                if not fp8 or child.fp8:
                    continue
                child = child.to_linear()
            if isinstance(child, (nn.Linear, Fp8Linear)):
                setattr(mod, child_name, SkinnyLinear(child, fp8=fp8))
                n += 1
    return n


def drop_skinny(model: nn.Module) -> int:
    """Undo `use_skinny` for bf16 projections (they become nn.Linear again, same weights); float8 ones stay.
    Returns how many were restored."""
    n = 0
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, SkinnyLinear) and not child.fp8:
                setattr(mod, child_name, child.to_linear())
                n += 1
    return n


@torch.no_grad()
def tune(model: nn.Module, rows: tuple[int, ...] = (1, 2, 4, 8, 16)) -> int:
    """Autotune the kernel for every SkinnyLinear shape of `model` at each row count (one per power-of-two bucket is
    enough), eagerly, so that CUDA graph capture later finds every configuration chosen. Returns the calls made."""
    n = 0
    for m in model.modules():
        if isinstance(m, SkinnyLinear) and skinny_available(m.weight.device, m.fp8):
            for r in rows:
                m(torch.randn(r, m.in_features, device=m.weight.device, dtype=torch.bfloat16))
                n += 1
    return n
