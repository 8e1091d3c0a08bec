"""Serving one model over N tensor-parallel ranks: rank 0 runs the engine, ranks 1..N-1 mirror its model calls.

Rank 0 (the leader) is an ordinary `Engine` on its shard (model/tensor_parallel.py) with `engine.mirror` set: before
each model call (`Engine.new_cache`, `Engine.forward`, `Engine._step`) it sends the call's inputs to every follower,
then runs the call; each follower runs the same call on its shard and on its part of the same cache, and the
all-reduces inside the two calls pair up. Everything else (sampling, the image grammar, CFG, continuous batching,
sessions, the vision tokenizer) runs on the leader alone, so the ranks can never disagree about what runs next.

The leader's own edits of a cache's valid-slot mask (a reset, a batch slot taken over, a session's rollback) are not
sent: each touches only slots at or after the row's write position, which causal masking hides, and every slot
before it was written by a mirrored call since; so the masks of all ranks agree wherever attention reads them
(tests/test_tp_engine.py checks batch reuse and a rolled-back session turn against an unsharded engine). Decode steps
replay captured CUDA graphs on every rank: the first step of a (batch, kv bucket, head) shape captures on all ranks
at once.

Commands travel over multiprocessing pipes, not collectives: an idle follower blocks in `recv` (no spinning NCCL
kernel and no collective timeout while the service waits for requests), and a leader that dies closes the pipes,
which ends its followers. Any error inside a mirrored call is fatal to the group (see `Mirror`): the next call is
refused with the reason, never run out of step. A follower that dies between calls is noticed at the next send; one
that dies inside a call leaves the leader's all-reduce waiting for the process group's timeout (`timeout_s`).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import shutil
import tempfile
import threading
import traceback
import weakref
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .engine import Engine
from .text_tokenizer import TextTokenizer
from .transformer import KVCache

log = logging.getLogger(__name__)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


class Mirror:
    """The leader's side: sends each model call to the followers before the leader runs it (see the module doc).

    Fail-stop: an error inside a mirrored call (out of memory on one rank, a rank that died) leaves the ranks at
    different points of their collectives, so the group cannot go on. The mirror then stops the followers, calls
    `on_broken(reason)` (the server turns its health to NOT_SERVING) and refuses every later call with that reason.
    """

    def __init__(self, conns: list[Connection], procs: list, owns_group: bool = True, tmpdir: Path | None = None):
        self.conns, self.procs, self.owns_group, self.tmpdir = conns, procs, owns_group, tmpdir
        self._lock = threading.RLock()  # one call at a time: the followers run calls in the order they are sent
        self._next_id = 0
        self._freed: list[int] = []  # ids of leader caches the garbage collector took; sent with the next call
        self.closed = False
        self.broken: str | None = None
        self.on_broken = None  # callable(reason)
        # the leader may queue image steps before it reads their tokens: such a step's ids go by a broadcast from
        # rank 0 on the device (queued like the step), not in the message (`start_tensor_parallel(tp_lookahead=)`)
        self.lookahead = False
        self.before_leave = None  # callable(): drops the leader's captured graphs before the group is destroyed

    def _send(self, msg: dict) -> None:
        if self.broken is not None:
            raise RuntimeError(f"the tensor-parallel group failed earlier ({self.broken}); restart the server")
        if self.closed:
            raise RuntimeError("the tensor-parallel group is closed")
        try:
            while self._freed:
                self._send_all(dict(op="free", id=self._freed.pop()))
            self._send_all(msg)
        except RuntimeError as e:
            self._break(str(e))
            raise

    def _send_all(self, msg: dict) -> None:
        for rank, (conn, proc) in enumerate(zip(self.conns, self.procs), start=1):
            try:
                conn.send(msg)
            except (BrokenPipeError, EOFError, OSError) as e:
                code = proc.exitcode if proc is not None else None
                raise RuntimeError(f"tensor-parallel rank {rank} is gone (exit code {code})") from e

    def alloc(self, cache: KVCache) -> None:
        with self._lock:
            cid, self._next_id = self._next_id, self._next_id + 1
            cache.tag = (cid, 0)
            self._send(dict(op="alloc", id=cid, rows=cache.valid.shape[0]))
            weakref.finalize(cache, self._freed.append, cid)  # list.append: safe from any thread

    @contextlib.contextmanager
    def call(self, op: str, cache: KVCache, ids, pos, valid, kv_len: int, cache_pos=None, **kw):
        """Send one forward/step, then hold the lock while the leader runs it (the context body)."""
        if cache.tag is None:
            raise RuntimeError("a tensor-parallel engine runs only on caches from Engine.new_cache")
        broadcast = kw.pop("broadcast_ids", False)
        with self._lock:
            msg = dict(
                op=op,
                tag=cache.tag,
                ids=None if broadcast else _np(ids),
                ids_shape=tuple(ids.shape),
                pos=_np(pos),
                valid=_np(valid),
                cache_pos=None if cache_pos is None else _np(cache_pos),
                kv_len=kv_len,
                length=cache.length,
                **kw,
            )
            self._send(msg)
            try:
                if broadcast:
                    dist.broadcast(ids.contiguous(), src=0)  # paired with the followers' in `follow`
                yield
            except BaseException as e:
                self._break(f"{type(e).__name__} on rank 0 during a {op}: {e}")
                raise

    def _break(self, reason: str) -> None:
        if self.broken is not None:
            return
        self.broken, self.closed = reason, True
        log.error("tensor-parallel group broken: %s; stopping the other ranks", reason)
        self._stop_procs(0.0)
        if self.on_broken is not None:
            self.on_broken(reason)

    def _stop_procs(self, timeout_s: float) -> None:
        for p in self.procs:
            if p is not None:
                p.join(timeout_s)
                if p.is_alive():
                    p.terminate()
                    p.join(5)
        for c in self.conns:
            c.close()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the followers and leave the process group."""
        with self._lock:
            if self.broken is not None and self.owns_group and dist.is_initialized():
                dist.destroy_process_group()  # the followers are gone: nothing left to wait for
            if self.closed:
                return
            with contextlib.suppress(RuntimeError):
                self._send_all(dict(op="stop"))
            self.closed = True
            if self.owns_group and dist.is_initialized():
                # Leave the group together with the followers, which leave as they stop: with NCCL and captured
                # graphs, leaving is collective, so waiting for the followers to exit first hangs both sides.
                if self.before_leave is not None:
                    self.before_leave()
                dist.destroy_process_group()
            self._stop_procs(timeout_s)


def follow(engine: Engine, conn: Connection) -> None:
    """A follower's loop: run the leader's model calls on this rank's shard until told to stop or the pipe closes."""
    dev = engine.device
    caches: dict[int, KVCache] = {}
    with torch.no_grad():
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                return
            op = msg["op"]
            if op == "stop":
                return
            if op == "alloc":
                caches[msg["id"]] = engine.lm.allocate_cache(msg["rows"], engine.max_len)
                continue
            if op == "free":
                caches.pop(msg["id"], None)
                continue
            (cid, lo), kv_len = msg["tag"], msg["kv_len"]
            base, B = caches[cid], msg["ids_shape"][0]
            cache = base if lo == 0 and B == base.valid.shape[0] else base.rows(lo, lo + B)
            cache.length = msg["length"]
            pos, valid = (torch.from_numpy(msg[k]).to(dev) for k in ("pos", "valid"))
            if msg["ids"] is None:  # a lookahead step: the leader broadcasts the ids it has not read yet
                ids = torch.empty(msg["ids_shape"], dtype=torch.long, device=dev)
                dist.broadcast(ids, src=0)
            else:
                ids = torch.from_numpy(msg["ids"]).to(dev)
            if op == "step":
                engine._step(cache, ids, pos, valid, msg["slot"], msg["visual"], msg["graphs"])
            elif op == "forward":
                cache_pos = torch.from_numpy(msg["cache_pos"]).to(dev)
                engine.forward(cache, ids, pos, cache_pos, valid, kv_len, msg["logits_to_keep"], msg["visual"])
            else:
                raise RuntimeError(f"unknown tensor-parallel command {op!r}")


def rank_device(device: str, rank: int) -> torch.device:
    """cuda[:K] -> cuda:K+rank (one GPU per rank); cpu stays cpu (gloo, for tests)."""
    d = torch.device(device)
    return torch.device("cuda", (d.index or 0) + rank) if d.type == "cuda" else d


def _rank_engine(
    rank: int, world: int, model_dir, tok_dir, vq_dir, device, dtype, max_len, engine_kw, shard_fn=None
) -> Engine:
    from .tensor_parallel import load_emu35_shard
    from .vision_tokenizer import VisionTokenizer

    dev = rank_device(device, rank)
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    if shard_fn is not None:
        lm = shard_fn(rank, world, dev, dtype)
    else:
        lm = load_emu35_shard(model_dir, rank, world, dtype=dtype, device=dev)
    vq = VisionTokenizer.from_pretrained(vq_dir, device=dev) if vq_dir is not None else None  # the leader's only
    if model_dir is not None and "image_sampling" not in engine_kw:
        from .sampling import checkpoint_image_sampling

        engine_kw = {**engine_kw, "image_sampling": checkpoint_image_sampling(model_dir)}
    return Engine(lm, TextTokenizer.from_pretrained(tok_dir), vq, max_len=max_len, **engine_kw)


def _join(rank: int, world: int, init: str, device: str, timeout_s: float) -> None:
    dev = rank_device(device, rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=world, timeout=timeout)


# how decode steps sum partial outputs (peer_sums); lamport_nopdl: lamport without pdl_after_sums (for A/B timing)
ALL_REDUCE = ("auto", "nccl", "lamport", "lamport_nopdl", "one_shot")


def _check_all_reduce(all_reduce: str) -> None:
    if all_reduce not in ALL_REDUCE:
        raise ValueError(f"all_reduce must be one of {', '.join(ALL_REDUCE)}, not {all_reduce!r}")


def peer_sums(engine: Engine, world: int, all_reduce: str) -> str:
    """After joining the group, on every rank: sum decode-sized partials over peer memory instead of NCCL
    (`model.tensor_parallel.use_peer_all_reduce`). "auto" picks "lamport" when the ranks are CUDA GPUs with peer access
    to each other and Triton is there (the same answer on every rank of one machine), else "nccl". Returns the kind."""
    _check_all_reduce(all_reduce)
    dev = engine.device
    if all_reduce == "auto":
        import importlib.util

        peer = dev.type == "cuda"
        if peer:  # rank r runs on GPU base + r (rank_device)
            gpus = range(dev.index - dist.get_rank(), dev.index - dist.get_rank() + world)
            peer = all(torch.cuda.can_device_access_peer(a, b) for a in gpus for b in gpus if a != b)
        all_reduce = "lamport" if peer and importlib.util.find_spec("triton") is not None else "nccl"
    if all_reduce != "nccl" and world > 1:
        from .tensor_parallel import use_peer_all_reduce

        use_peer_all_reduce(engine.lm, kind="lamport" if all_reduce.startswith("lamport") else all_reduce)
        if all_reduce == "lamport":
            from .lamport_all_reduce import pdl_after_sums

            pdl_after_sums(engine.lm)  # the products after each sum start while it waits for its peers
    return all_reduce


def _follower_main(
    rank, world, init, conn, model_dir, tok_dir, device, dtype, max_len, engine_kw, timeout_s, threads, shard_fn,
    all_reduce,
):  # fmt: skip
    try:
        if threads:
            torch.set_num_threads(threads)
        engine = _rank_engine(rank, world, model_dir, tok_dir, None, device, dtype, max_len, engine_kw, shard_fn)
        conn.send(("loaded", None))  # before joining: a rank that fails to load must not leave rank 0 in the rendezvous
        _join(rank, world, init, device, timeout_s)
        peer_sums(engine, world, all_reduce)
    except Exception:
        conn.send(("error", traceback.format_exc()))
        raise
    try:
        follow(engine, conn)
    finally:
        engine.release_graphs()  # graphs hold NCCL work: drop them before leaving the group
        if dist.is_initialized():
            dist.destroy_process_group()


def start_tensor_parallel(
    model_dir: str | Path,
    tokenizer_dir: str | Path,
    vision_tokenizer_dir: str | Path,
    world_size: int,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    max_len: int = 8192,
    timeout_s: float = 600.0,
    threads: int | None = None,
    shard_fn=None,
    all_reduce: str = "auto",
    tp_lookahead: bool = False,
    **engine_kw,
) -> Engine:
    """Start ranks 1..world_size-1 (spawned processes, one GPU each on CUDA), join them as rank 0 and return the
    leader's engine; `engine.mirror.close()` stops them. Each rank reads only its slices of the checkpoint, or, with
    `shard_fn(rank, world_size, device, dtype) -> Emu35` (a module-level function: it is sent to the other processes),
    builds its shard with it instead (benchmarks: random weights at the 34B shape, no checkpoint on disk). On a CPU
    every rank, this one included, gets `threads` torch threads (default: this process's threads / world_size).
    `all_reduce` picks how decode steps sum partial outputs (`peer_sums`: one of ALL_REDUCE). `tp_lookahead`: the
    leader's image steps may be queued before their tokens are read (`Engine.can_look_ahead`), their ids sent to the
    other ranks by a broadcast; off until measured on GPUs."""
    from .config import Emu35Config
    from .tensor_parallel import check_divisible

    _check_all_reduce(all_reduce)
    if shard_fn is None:
        check_divisible(Emu35Config.from_pretrained(model_dir), world_size)  # fail before starting anything
    if dist.is_initialized():
        raise RuntimeError("this process is already in a process group: one tensor-parallel engine per process")
    if torch.device(device).type == "cuda":
        first, last = rank_device(device, 0).index, rank_device(device, world_size - 1).index
        have = torch.cuda.device_count()
        if last >= have:
            raise ValueError(f"tensor parallelism over {world_size} ranks needs cuda:{first}..{last}; {have} GPUs here")
    if torch.device(device).type == "cpu":  # N ranks share the cores: oversubscribed gloo crawls
        threads = threads or max(1, torch.get_num_threads() // world_size)
        torch.set_num_threads(threads)
    ctx = mp.get_context("spawn")
    tmpdir = Path(tempfile.mkdtemp(prefix="emu35-tp-"))
    init = f"file://{tmpdir / 'store'}"
    conns, procs = [], []
    args = (
        str(model_dir), str(tokenizer_dir), device, dtype, max_len, engine_kw, timeout_s, threads, shard_fn, all_reduce,
    )  # fmt: skip
    for rank in range(1, world_size):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_follower_main, args=(rank, world_size, init, child, *args), daemon=True)
        p.start()
        child.close()
        conns.append(parent)
        procs.append(p)
    mirror = Mirror(conns, procs, tmpdir=tmpdir)
    try:
        engine = _rank_engine(
            0, world_size, model_dir, tokenizer_dir, vision_tokenizer_dir, device, dtype, max_len, engine_kw, shard_fn
        )
        for rank, (conn, proc) in enumerate(zip(conns, procs), start=1):
            while not conn.poll(0.5):
                if not proc.is_alive():
                    raise RuntimeError(f"tensor-parallel rank {rank} exited while loading (exit code {proc.exitcode})")
            status, detail = conn.recv()
            if status != "loaded":
                raise RuntimeError(f"tensor-parallel rank {rank} failed to load:\n{detail}")
        _join(0, world_size, init, device, timeout_s)
        kind = peer_sums(engine, world_size, all_reduce)
        log.info("tensor parallel over %d ranks: decode sums by %s", world_size, kind)
    except BaseException:
        mirror.close(timeout_s=5.0)
        raise
    engine.mirror = mirror
    mirror.lookahead = tp_lookahead
    mirror.before_leave = engine.release_graphs
    return engine
