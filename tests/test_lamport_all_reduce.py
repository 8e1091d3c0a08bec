"""The one-kernel all-reduce + add + RMSNorm of tensor-parallel decode steps (model/lamport_all_reduce.py).

Its protocol (push into every peer's slot, poll the own slot until nothing is empty, empty it again, rotate slots by
an epoch in device memory) runs here in Triton's CPU interpreter with two processes as the two ranks, wherever Triton is
installed; on a machine with two CUDA GPUs that reach each other, two processes check it against NCCL, inside CUDA
graphs too. Without Triton (the CPU CI) both skip and the refusals are checked."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from model.transformer import add_rms_norm

ROOT = Path(__file__).resolve().parents[1]

try:
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False


def test_start_tensor_parallel_refuses_an_unknown_all_reduce_before_spawning():
    from model.tp_engine import start_tensor_parallel

    with pytest.raises(
        ValueError, match="all_reduce must be one of auto, nccl, lamport, lamport_nopdl, one_shot, not 'fast'"
    ):
        start_tensor_parallel(None, None, None, 2, shard_fn=lambda *a: None, all_reduce="fast")


@pytest.mark.skipif(HAVE_TRITON, reason="checks the refusal of an install without Triton")
def test_refuses_to_build_without_triton():
    from model.lamport_all_reduce import LamportAllReduce

    with pytest.raises(RuntimeError, match="needs Triton"):
        LamportAllReduce(torch.device("cpu"))


INTERPRETED = r"""
# Two processes as the two ranks (threads could not both run: some Triton versions interpret one kernel at a time).
import torch
import triton_interpreter  # noqa: F401  (tests/: the interpreter's loops under numpy >= 2.4)
import torch.multiprocessing as mp

W, M, N, cap, calls = 2, 3, 300, 1024, 7


def rank(r, bufs, states, x, w, parts, heads, out):
    from model import lamport_all_reduce as L

    peers = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.int64)  # this process's mapping of each buffer
    res = []
    for c in range(calls):
        p, o, h = parts[c][r], torch.zeros(M, N).bfloat16(), torch.zeros(M, N).bfloat16()
        L._lamport_kernel[(M,)](p, x, w, o, h, peers, states[r], cap, N, 1e-6, RANK=r, W=W, BLOCK=512, NORM=c % 2 == 0,
                                SPIN_LIMIT=L.SPIN_LIMIT)
        res.append((o, h))
    g = torch.zeros(M, W * 700).bfloat16()  # the gather: 700 values per rank, in chunks of 256 (programs (M, 3))
    L._lamport_gather_kernel[(M, 3)](
        heads[r], g, peers, states[r], cap, 700, RANK=r, W=W, BLOCK=256, SPIN_LIMIT=L.SPIN_LIMIT
    )
    res.append((g, g))
    torch.save(res, out)


if __name__ == "__main__":
    import sys

    from model import lamport_all_reduce as L
    from model.transformer import add_rms_norm

    g = torch.Generator().manual_seed(0)
    bufs = [torch.full((L.SLOTS * W * cap,), L.EMPTY, dtype=torch.int16).share_memory_() for _ in range(W)]
    states = [torch.zeros(2, dtype=torch.int32).share_memory_() for _ in range(W)]
    x = torch.randn(M, N, generator=g).bfloat16()
    w = (torch.rand(N, generator=g) + 0.5).bfloat16()
    parts = [[torch.randn(M, N, generator=g).bfloat16() for _ in range(W)] for _ in range(calls)]
    parts[1][0][:] = -0.0  # a whole partial of the empty marker's value must not hang the peer
    parts[1][1][0, :5] = -0.0
    ctx = mp.get_context("spawn")
    outs = [f"{sys.argv[1]}/r{r}.pt" for r in range(W)]
    heads = [torch.randn(M, 700, generator=g).bfloat16() for _ in range(W)]
    procs = [ctx.Process(target=rank, args=(r, bufs, states, x, w, parts, heads, outs[r])) for r in range(W)]
    [p.start() for p in procs]
    [p.join(timeout=200) for p in procs]
    alive = [p.is_alive() for p in procs]
    [p.kill() for p in procs if p.is_alive()]
    assert not any(alive) and all(p.exitcode == 0 for p in procs), f"a rank hung or failed: {alive}"
    res = [torch.load(o, weights_only=True) for o in outs]
    # the interpreter rounds float32 -> bf16 toward zero: one bf16 ulp of the sum (|sum| < 8), carried into x + sum
    tol = dict(rtol=2**-7, atol=2**-5)
    for c in range(calls):
        s = (parts[c][0].float() + parts[c][1].float()).bfloat16()
        assert torch.equal(res[0][c][0], res[1][c][0]), c  # both ranks get the same bits
        out, h = res[0][c]
        if c % 2 == 0:
            assert torch.equal(h, res[1][c][1]), c
            wx, wh = add_rms_norm(x, s, w, 1e-6)
            torch.testing.assert_close(out, wx, **tol)
            torch.testing.assert_close(h, wh, rtol=2**-6, atol=2**-4)
        else:
            torch.testing.assert_close(out, s, **tol)
    assert torch.equal(res[0][1][0], parts[1][1])  # the all -0.0 partial added nothing
    assert torch.equal(res[0][calls][0], torch.cat(heads, -1)) and torch.equal(res[1][calls][0], res[0][calls][0])
    for st in states:
        assert st.tolist() == [calls + 1, 0], st  # the epoch counted every call; no program left counted
    for b in bufs:
        assert bool((b == L.EMPTY).all()), "a slot was not emptied after use"
    print("ok")
"""


@pytest.mark.skipif(not HAVE_TRITON, reason="needs Triton (its CPU interpreter runs the kernel)")
def test_protocol_in_the_triton_interpreter(tmp_path):
    script = tmp_path / "lamport_interpreted.py"
    script.write_text(INTERPRETED)
    path = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    r = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


def two_peer_gpus() -> bool:
    return (
        HAVE_TRITON
        and torch.cuda.is_available()
        and torch.cuda.device_count() >= 2
        and torch.cuda.can_device_access_peer(0, 1)
    )


def _gpu_rank(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from model.lamport_all_reduce import LamportAllReduce

    dev = torch.device("cuda", rank)
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl", init_method=f"file://{store}", rank=rank, world_size=2, device_id=dev)
    try:
        g = torch.Generator(dev).manual_seed(10 + rank)
        N = 5120  # the 34B hidden size
        x = torch.randn(4, 1, N, device=dev, dtype=torch.bfloat16, generator=torch.Generator(dev).manual_seed(1))
        w = torch.rand(N, device=dev, generator=torch.Generator(dev).manual_seed(2)).bfloat16() + 0.5
        parts = [torch.randn(4, 1, N, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(5)]
        parts[2][:, :, :7] = -0.0
        want = []
        for p in parts:
            s = p.clone()
            dist.all_reduce(s)
            want.append(s)
        ar = LamportAllReduce(dev)
        got = [ar(p) for p in parts]
        fused = [ar.add_rms_norm(x, p, w, 1e-6) for p in parts]
        head = torch.randn(16, 1, 65536, device=dev, dtype=torch.bfloat16, generator=g)  # 8 CFG streams' half
        gathered = ar.all_gather(head)
        big = torch.randn(300, N, device=dev, dtype=torch.bfloat16, generator=g)  # more than one slot: NCCL
        big_sum = ar(big.clone())
        ref_big = big.clone()
        dist.all_reduce(ref_big)
        # inside a CUDA graph: the epoch advances on every replay, so the slots keep rotating
        static = parts[0].clone()
        ar.add_rms_norm(x, static, w, 1e-6)  # warm (compiled already; one more call keeps ranks in step)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            gx, gh = ar.add_rms_norm(x, static, w, 1e-6)
            gs = ar(static)
        replays = []
        for p in parts:
            static.copy_(p)
            graph.replay()
            replays.append((gx.clone(), gh.clone(), gs.clone()))
        torch.cuda.synchronize()
        torch.save(
            dict(
                want=want, got=got, fused=fused, x=x, w=w, replays=replays, big=(big_sum, ref_big),
                head=head, gathered=gathered,
                state=ar.state.cpu(), empty=bool((ar.buf == -32768).all()),
            ),
            out,
        )  # fmt: skip
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not two_peer_gpus(), reason="needs 2 CUDA GPUs with peer access and Triton")
def test_matches_nccl_on_two_gpus(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_gpu_rank, args=(r, str(tmp_path / "store"), str(tmp_path / f"r{r}.pt"))) for r in (0, 1)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=120)
            assert p.exitcode == 0, f"rank exited with {p.exitcode}"  # None: still waiting for its peer
    finally:
        for p in procs:  # a rank that failed leaves the other one waiting in a collective
            if p.is_alive():
                p.kill()
    r0, r1 = (torch.load(tmp_path / f"r{r}.pt", map_location="cpu", weights_only=True) for r in (0, 1))
    for a, b in zip(r0["got"], r0["want"]):
        assert torch.equal(a, b)  # two bf16 partials: float32 sum rounded once, as NCCL
    for (gx, gh), s in zip(r0["fused"], r0["want"]):
        wx, wh = add_rms_norm(r0["x"], s, r0["w"], 1e-6)
        assert torch.equal(gx, wx)
        torch.testing.assert_close(gh, wh, rtol=2**-7, atol=1e-6)
    for (gx, gh, gs), s, (fx, fh) in zip(r0["replays"], r0["want"], r0["fused"]):
        assert torch.equal(gs, s) and torch.equal(gx, fx) and torch.equal(gh, fh)
    torch.testing.assert_close(r0["big"][0], r0["big"][1], rtol=0, atol=0)
    for k in ("got", "fused", "replays"):  # every rank gets the same bits
        flat = [t for item in r0[k] for t in (item if isinstance(item, tuple) else (item,))]
        flat1 = [t for item in r1[k] for t in (item if isinstance(item, tuple) else (item,))]
        assert all(torch.equal(a, b) for a, b in zip(flat, flat1)), k
    assert torch.equal(r0["gathered"], torch.cat([r0["head"], r1["head"]], -1))
    assert torch.equal(r0["gathered"], r1["gathered"])
    assert r0["state"].tolist() == [2 * 5 + 1 + 1 + 2 * 5, 0] and r0["empty"] and r1["empty"]


NO_PEER = r"""
import torch
from model import lamport_all_reduce as L

# rank 0 of 2 whose peer never pushes: both "ranks'" buffers are local, and nothing fills slot [0, 1]
bufs = [torch.full((L.SLOTS * 2 * 4096,), L.EMPTY, dtype=torch.int16, device="cuda") for _ in range(2)]
peers = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.int64, device="cuda")
state = torch.zeros(2, dtype=torch.int32, device="cuda")
p = torch.randn(2, 1024, device="cuda").bfloat16()
out = torch.empty_like(p)
L._lamport_kernel[(2,)](p, p, p, out, out, peers, state, 4096, 1024, 1e-6, RANK=0, W=2, BLOCK=1024, NORM=False,
                        SPIN_LIMIT=1000)
torch.cuda.synchronize()
print("returned")
"""


@pytest.mark.skipif(not (HAVE_TRITON and torch.cuda.is_available()), reason="needs a CUDA GPU and Triton")
def test_a_peer_that_never_comes_fails_the_call_instead_of_hanging():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", NO_PEER], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "returned" not in r.stdout, r.stdout + r.stderr
    assert "CUDA" in r.stderr or "cuda" in r.stderr, r.stderr[-2000:]


def test_pdl_after_sums_leaves_a_model_without_fused_sums_alone():
    from tiny import tiny

    from model.lamport_all_reduce import pdl_after_sums

    lm = tiny(seed=0)
    assert pdl_after_sums(lm) == 0 and lm.model.layers[0].reduce is None
