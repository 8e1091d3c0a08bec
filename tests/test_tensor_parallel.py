"""Tensor parallelism: two CPU processes (gloo), each holding half of every block, give the unsharded logits."""

import os

import pytest
import torch
import torch.multiprocessing as mp
from tiny import tiny as tiny_lm

from model.checkpoint import save_emu35
from model.tensor_parallel import check_divisible, shard_emu35

TOL = dict(atol=1e-5, rtol=1e-5)


def tiny(**kw):
    return tiny_lm(seed=1, **kw)


def decode(lm, ids, valid, steps):
    """Engine-style: left-padded prefill with per-row positions, then one token per step; logits of every step."""
    B, L = ids.shape
    cache = lm.allocate_cache(B, L + steps.shape[1])
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)
    out = [lm(ids, position_ids=pos, cache=cache, attention_mask=valid, logits_to_keep=1).logits[:, -1]]
    nxt = pos[:, -1:] + 1
    for t in range(steps.shape[1]):
        ones = torch.ones(B, 1, dtype=torch.bool)
        out.append(lm(steps[:, t : t + 1], position_ids=nxt + t, cache=cache, attention_mask=ones).logits[:, -1])
    return torch.stack(out, 1), cache


def _worker(rank: int, world: int, store: str, ckpt: str) -> None:
    import torch.distributed as dist

    from model.tensor_parallel import load_emu35_shard

    # A file store, not TCP: rank 0 hosting a TCPStore could exit while rank 1 still talked to it, and the store's
    # server thread then aborted rank 0 in teardown (SIGABRT, seen in CI). A file also needs no free port.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 290, (2, 9), generator=g)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, :3] = False  # row 1 left-padded
    steps = torch.randint(0, 290, (2, 4), generator=g)
    ref = tiny()
    with torch.no_grad():
        full_ref = ref(ids).logits
        dec_ref, _ = decode(ref, ids, valid, steps)

    shard = shard_emu35(tiny(), rank, world)
    a = shard.model.layers[0].self_attn
    assert (a.n_head, a.n_kv, a.q_proj.weight.shape[0], a.o_proj.weight.shape[1]) == (2, 1, 64, 64)
    assert shard.model.layers[0].mlp.down_proj.weight.shape == (64, 48)
    with torch.no_grad():
        torch.testing.assert_close(shard(ids).logits, full_ref, **TOL)
        # each rank multiplies half of the head's rows (of the vocabulary slice) and the halves are gathered;
        # a slice the ranks cannot split evenly is multiplied whole on every rank
        assert shard.model.layers[-1].reduce.split_head
        torch.testing.assert_close(shard(ids, vocab_slice=slice(10, 250)).logits, full_ref[..., 10:250], **TOL)
        torch.testing.assert_close(shard(ids, vocab_slice=slice(10, 251)).logits, full_ref[..., 10:251], **TOL)
        dec, cache = decode(shard, ids, valid, steps)
        assert cache.k.shape == (3, 2, 1, 64, 32) and cache.max_len == 13  # this rank's kv head; slots aligned
        torch.testing.assert_close(dec, dec_ref, **TOL)

        shard.fuse_projections()  # fuse the shards
        torch.testing.assert_close(decode(shard, ids, valid, steps)[0], dec_ref, **TOL)
        fused = tiny()
        fused.fuse_projections()
        shard_emu35(fused, rank, world)  # shard the fused model
        torch.testing.assert_close(decode(fused, ids, valid, steps)[0], dec_ref, **TOL)

        loaded = load_emu35_shard(ckpt, rank, world, dtype=torch.float32)  # only this rank's slices
        own = shard_emu35(tiny(), rank, world).state_dict()
        assert all(torch.equal(v, own[k]) for k, v in loaded.state_dict().items())
        torch.testing.assert_close(loaded(ids).logits, full_ref, **TOL)
    dist.barrier()  # a rank that leaves first can abort the other in gloo's teardown
    dist.destroy_process_group()
    # and skip the interpreter's teardown: gloo's threads can still abort it there ("terminate called without an
    # active exception", SIGABRT, seen in CI on 2026-11-30 after the file store and the barrier); all is checked
    os._exit(0)


def test_two_ranks_equal_unsharded_forward_and_cached_decoding(tmp_path):
    save_emu35(tiny(), tmp_path / "ckpt", max_shard_bytes=60_000)
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "ckpt")), nprocs=2)


@pytest.mark.parametrize(
    "kw, world, field",
    [
        (dict(), 3, "num_attention_heads"),
        (dict(num_attention_heads=8, num_key_value_heads=2), 4, "num_key_value_heads"),
        (dict(intermediate_size=97), 2, "intermediate_size"),
    ],
)
def test_indivisible_shapes_are_named(kw, world, field):
    m = tiny(**kw)
    with pytest.raises(ValueError, match=f"needs {field} .* divisible by {world}"):
        shard_emu35(m, 0, world)
    assert m.model.layers[0].self_attn.n_head == m.config.num_attention_heads  # untouched
    check_divisible(m.config, 1)


def test_peer_all_reduce_needs_a_sharded_model():
    from model.tensor_parallel import use_peer_all_reduce

    with pytest.raises(ValueError, match="sharded over 2"):
        use_peer_all_reduce(tiny_lm())
