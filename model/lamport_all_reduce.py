"""One-kernel all-reduce for decode steps, fused with the residual add and RMSNorm after it (tensor parallelism).

Why: a 34B decode step over 2 GPUs sums 128 partial outputs of 20 KB each. The one-shot peer all-reduce
(`PeerAllReduce`) costs ~16.5 us per sum: a copy into the symmetric buffer, then a kernel that first runs a barrier
with every peer (a signal round trip over NVLink) and then reads their buffers. Its result then goes through a third
kernel, the residual add + RMSNorm. Here one kernel does all of it, with no barrier (the "Lamport" scheme of
TensorRT-LLM's low-latency all-reduce):

- every rank's symmetric buffer starts filled with the bf16 bit pattern of -0.0, which marks an empty element;
- rank r *pushes* its partial row into slot [s, r] of every peer's buffer (plain stores over NVLink), with -0.0
  sent as +0.0 (the same value) so that no real element looks empty;
- each rank polls its own buffer (local, volatile loads) until no element of a peer's slot is empty, sums the
  partials in rank order in float32 (so every rank gets the same bits), marks the slot empty again, and finishes
  with the residual add and RMSNorm of `model.transformer.add_rms_norm` in the same program.

Each element is checked on its own, so no fence or flag is needed: an element is either still empty or final.
Slots rotate over 3 by an epoch counter in device memory that the last program of each call advances, so it keeps
counting inside replayed CUDA graphs and across eager calls alike; every rank makes the same calls in the same
order, so all agree on the slot. A slot is reused 3 calls later; a peer can be at most one call ahead (it needs
this rank's data to finish a call), and this rank emptied the slot before it sent the data that lets a peer get
that far.

One program per row (a decode step has 2-16 rows of 5,120 values). Tensors that do not fit (prefill) go through
NCCL and the compiled add + RMSNorm, as without this class. CUDA GPUs with peer access (NVLink) only; no NVLink
multicast. Timed by benchmarks/tensor_parallel.py --all-reduce lamport.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .skinny_mm import PDL, SkinnyLinear, pdl_available

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the class below refuses to build
    triton = None

SLOTS = 3
EMPTY = -32768  # int16 bits of bf16 -0.0
MAX_ROW = 16384  # one program holds a whole row
SPIN_LIMIT = 1 << 28  # polling rounds (each >= ~0.5 us: an L2 round trip) before a waiting rank traps: minutes
MAX_ROWS = 64  # programs of both ranks wait on each other: keep every one of them resident at once


if triton is not None:
    _EMPTY = tl.constexpr(EMPTY)  # a jit'ed function reads module globals only as constexpr

    @triton.jit
    def _wait_filled(src, m, SPIN_LIMIT: tl.constexpr):
        """Volatile loads of `src` until no element is empty. A peer that never comes (it died inside the call) would
        keep this rank spinning for good: after SPIN_LIMIT rounds it traps instead, a CUDA error, so the call fails
        and the tensor-parallel group stops (model/tp_engine.py) rather than hanging."""
        v = tl.load(src, mask=m, other=0, volatile=True)
        spins = 0
        while tl.sum((v == _EMPTY).to(tl.int32), axis=0) > 0:
            spins += 1
            if spins > SPIN_LIMIT:
                tl.inline_asm_elementwise("trap;", "=r,r", [spins], dtype=tl.int32, is_pure=False, pack=1)
            v = tl.load(src, mask=m, other=0, volatile=True)
        return v

    @triton.jit
    def _push_row(part_ptr, peers_ptr, slot, cap, offs, m, RANK: tl.constexpr, W: tl.constexpr):
        """Load this rank's values at `offs` (-0.0 sent as +0.0: the same value, never "empty") and store them into
        slot [slot, RANK] of every peer's buffer; returns them as int16 bits."""
        bits = tl.load(part_ptr.to(tl.pointer_type(tl.int16)) + offs, mask=m, other=0)
        bits = tl.where(bits == _EMPTY, tl.zeros_like(bits), bits)
        for r in tl.static_range(W):
            if r != RANK:
                peer = tl.load(peers_ptr + r).to(tl.pointer_type(tl.int16))
                tl.store(peer + (slot * W + RANK) * cap + offs, bits, mask=m)
        return bits

    @triton.jit
    def _end_call(state_ptr, epoch, programs):
        """The last program of a call to finish moves the epoch on (and resets the count for the next call)."""
        done = tl.atomic_add(state_ptr + 1, 1)
        if done == programs - 1:
            tl.store(state_ptr + 1, 0)
            tl.store(state_ptr, epoch + 1)

    @triton.jit
    def _lamport_kernel(
        part_ptr,  # [M, N] bf16: this rank's partial sum
        x_ptr,  # [M, N] bf16: the residual stream (NORM only)
        w_ptr,  # [N] bf16: the RMSNorm weight (NORM only)
        out_ptr,  # [M, N] bf16: the sum (without NORM) or x + sum (with NORM)
        h_ptr,  # [M, N] bf16: rms_norm(x + sum) (NORM only)
        peers_ptr,  # int64 [W]: address of every rank's buffer of SLOTS * W * cap int16 elements
        state_ptr,  # int32 [2]: epoch (picks the slot), programs that finished this call
        cap,
        N,
        eps,
        RANK: tl.constexpr,
        W: tl.constexpr,
        BLOCK: tl.constexpr,
        NORM: tl.constexpr,
        SPIN_LIMIT: tl.constexpr,
        USE_PDL: tl.constexpr = False,
    ):
        if USE_PDL:  # launched early (model.skinny_mm.use_pdl): wait for the product before, let the next one start
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        m = cols < N
        epoch = tl.load(state_ptr, volatile=True)
        slot = epoch % 3
        bits = _push_row(part_ptr, peers_ptr, slot, cap, row * N + cols, m, RANK, W)
        mine = tl.load(peers_ptr + RANK).to(tl.pointer_type(tl.int16))
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for r in tl.static_range(W):  # rank order: every rank adds in the same order, so all get the same sum
            if r == RANK:
                acc += bits.to(tl.bfloat16, bitcast=True).to(tl.float32)
            else:
                src = mine + (slot * W + r) * cap + row * N + cols
                v = _wait_filled(src, m, SPIN_LIMIT)
                acc += v.to(tl.bfloat16, bitcast=True).to(tl.float32)
                tl.store(src, tl.full([BLOCK], _EMPTY, tl.int16), mask=m)  # empty again for the slot's next use
        s = acc.to(tl.bfloat16)  # the all-reduced partial, rounded as NCCL's bf16 sum is
        if NORM:  # model.transformer.add_rms_norm: x + s in bf16, then rms_norm computed in float32
            x = tl.load(x_ptr + row * N + cols, mask=m, other=0.0).to(tl.float32)
            xs = (x + s.to(tl.float32)).to(tl.bfloat16)
            tl.store(out_ptr + row * N + cols, xs, mask=m)
            xf = xs.to(tl.float32)
            rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / N + eps)
            w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
            h = w * (xf * rstd).to(tl.bfloat16).to(tl.float32)
            tl.store(h_ptr + row * N + cols, h.to(tl.bfloat16), mask=m)
        else:
            tl.store(out_ptr + row * N + cols, s, mask=m)
        _end_call(state_ptr, epoch, tl.num_programs(0))

    @triton.jit
    def _lamport_gather_kernel(
        part_ptr,  # [M, n] bf16: this rank's part
        out_ptr,  # [M, W * n] bf16: every rank's part, rank r's at columns [r * n, (r + 1) * n)
        peers_ptr,
        state_ptr,
        cap,
        n,
        RANK: tl.constexpr,
        W: tl.constexpr,
        BLOCK: tl.constexpr,
        SPIN_LIMIT: tl.constexpr,
    ):
        row, chunk = tl.program_id(0), tl.program_id(1)
        cols = chunk * BLOCK + tl.arange(0, BLOCK)
        m = cols < n
        epoch = tl.load(state_ptr, volatile=True)
        slot = epoch % 3
        bits = _push_row(part_ptr, peers_ptr, slot, cap, row * n + cols, m, RANK, W)
        out = out_ptr.to(tl.pointer_type(tl.int16)) + row * W * n + cols
        tl.store(out + RANK * n, bits, mask=m)
        mine = tl.load(peers_ptr + RANK).to(tl.pointer_type(tl.int16))
        for r in tl.static_range(W):
            if r != RANK:
                src = mine + (slot * W + r) * cap + row * n + cols
                v = _wait_filled(src, m, SPIN_LIMIT)
                tl.store(out + r * n, v, mask=m)
                tl.store(src, tl.full([BLOCK], _EMPTY, tl.int16), mask=m)
        _end_call(state_ptr, epoch, tl.num_programs(0) * tl.num_programs(1))


class LamportAllReduce:
    """Sum of decode-sized bf16 tensors over `group`, alone (`__call__`) or fused with the residual add + RMSNorm
    that follows it in a block (`add_rms_norm`), and the concatenation of each rank's part of the output head's
    logits (`all_gather`); see the module doc. Larger tensors go through NCCL."""

    def __init__(self, device: torch.device, group=None, max_bytes: int = 4 << 20, dtype=torch.bfloat16):
        if triton is None:
            raise RuntimeError("LamportAllReduce needs Triton (a CUDA build of torch)")
        if dtype != torch.bfloat16:
            raise ValueError(f"LamportAllReduce sums bfloat16 only, not {dtype}")
        import torch.distributed._symmetric_memory as symm_mem

        self.group = group or dist.group.WORLD
        self.world = dist.get_world_size(self.group)
        self.cap = max_bytes // 2  # elements per (slot, rank) region: 4 MB (16 rows of half the visual logits)
        buf = symm_mem.empty(SLOTS * self.world * self.cap, dtype=torch.int16, device=device)
        buf.fill_(EMPTY)
        handle = symm_mem.rendezvous(buf, self.group.group_name)
        self.rank = handle.rank
        offset = buf.data_ptr() - handle.buffer_ptrs[self.rank]
        self.buf = buf  # keeps the mapping alive
        self.peers = torch.tensor([p + offset for p in handle.buffer_ptrs], dtype=torch.int64, device=device)
        self.state = torch.zeros(2, dtype=torch.int32, device=device)
        self.spin_limit = SPIN_LIMIT  # polling rounds before a rank gives up on its peers (traps)
        self.num_warps = None  # per program of the sum kernel; None: 8 for rows of 4096+ values, else 4
        self.pdl = False  # launch with programmatic dependent launch (pdl_after_sums)
        self.split_head = True  # Emu35.forward: decode steps split the head's rows over the ranks and all_gather
        torch.cuda.synchronize(device)
        dist.barrier(self.group)  # every buffer is marked empty before any rank pushes into it

    def fits(self, t: Tensor) -> bool:
        n = t.shape[-1]
        rows = t.numel() // max(n, 1)
        return t.is_cuda and t.dtype == torch.bfloat16 and t.numel() <= self.cap and n <= MAX_ROW and rows <= MAX_ROWS

    def gathers(self, rows: int, n: int) -> bool:
        """Whether `all_gather` takes `rows` rows of n values per rank in one kernel (decode steps)."""
        return rows <= MAX_ROWS and rows * n <= self.cap

    def all_gather(self, t: Tensor) -> Tensor:
        """[..., n] bf16 on every rank -> [..., world * n], rank r's part at [r * n, (r + 1) * n)."""
        n = t.shape[-1]
        rows = t.numel() // n
        if not (t.is_cuda and t.dtype == torch.bfloat16 and self.gathers(rows, n)):
            parts = [torch.empty_like(t) for _ in range(self.world)]
            dist.all_gather(parts, t.contiguous(), group=self.group)
            return torch.cat(parts, dim=-1)
        p2 = t.reshape(rows, n).contiguous()
        out = torch.empty(rows, self.world * n, dtype=t.dtype, device=t.device)
        block = min(2048, triton.next_power_of_2(n))
        _lamport_gather_kernel[(rows, triton.cdiv(n, block))](
            p2, out, self.peers, self.state, self.cap, n, RANK=self.rank, W=self.world, BLOCK=block,
            SPIN_LIMIT=self.spin_limit, num_warps=4,
        )  # fmt: skip
        return out.view(*t.shape[:-1], self.world * n)

    def _launch(self, part: Tensor, x: Tensor | None, w: Tensor | None, eps: float) -> tuple[Tensor, Tensor | None]:
        N = part.shape[-1]
        p2 = part.reshape(-1, N).contiguous()  # [M, N]
        M = p2.shape[0]
        out = torch.empty_like(p2)
        h = torch.empty_like(p2) if x is not None else None
        x2 = x.reshape(-1, N).contiguous() if x is not None else p2
        w2 = w if w is not None else p2
        block = triton.next_power_of_2(N)
        pdl = dict(USE_PDL=True, launch_pdl=True) if PDL["on"] or self.pdl else {}
        _lamport_kernel[(M,)](
            p2, x2, w2, out, h if h is not None else out, self.peers, self.state, self.cap, N, eps,
            RANK=self.rank, W=self.world, BLOCK=block, NORM=x is not None, SPIN_LIMIT=self.spin_limit,
            num_warps=self.num_warps or (8 if block >= 4096 else 4), **pdl,
        )  # fmt: skip
        return out.view_as(part), None if h is None else h.view_as(part)

    def __call__(self, x: Tensor) -> Tensor:
        """The sum of `x` over the ranks (in place for NCCL-sized tensors, as `dist.all_reduce`)."""
        if not self.fits(x):
            dist.all_reduce(x, group=self.group)
            return x
        return self._launch(x, None, None, 0.0)[0]

    def add_rms_norm(self, x: Tensor, delta: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        """`model.transformer.add_rms_norm(x, sum of delta over the ranks, weight, eps)` in one kernel."""
        from .transformer import KERNELS

        if not (self.fits(delta) and x.dtype == delta.dtype and weight.dtype == delta.dtype):
            dist.all_reduce(delta, group=self.group)
            return KERNELS["add_rms_norm"](x, delta, weight, eps)
        return self._launch(delta, x, weight, eps)


def pdl_after_sums(lm) -> int:
    """Let the products that read a fused sum start while it runs: the sums and the projections right after them (each
    block's q/k/v and gate/up, as SkinnyLinear: call after the engine fused and wrapped them) are launched with
    programmatic dependent launch, so those products pull their first weight tiles toward L2 while the sum waits for
    its peers. Only there: a product after an ordinary kernel gains nothing and lost time on one H200. Returns how
    many projections were marked (0 where it cannot run)."""
    reduce = lm.model.layers[0].reduce
    if not isinstance(reduce, LamportAllReduce) or not pdl_available():
        return 0
    reduce.pdl = True
    n = 0
    for layer in lm.model.layers:
        a, m = layer.self_attn, layer.mlp
        for lin in (a.qkv_proj, a.q_proj, m.gate_up_proj, m.gate_proj, m.up_proj):
            if isinstance(lin, SkinnyLinear):
                lin.pdl = True
                n += 1
    return n
