"""The Triton decode attention (model/decode_attention.py): its chunking and reference anywhere, the kernels on CUDA
(skipped elsewhere), and a tiny model's cached decoding with the kernels on against off."""

import pytest
import torch
from tiny import tiny

from model.decode_attention import (
    chunking,
    decode_attention_reference,
    qk_norm_rope_kv,
    triton_decode_attention,
    triton_decode_attention_available,
    use_triton_decode_attention,
)
from model.transformer import KVCache, decode_attention, qk_norm_rope, write_cache

cuda = pytest.mark.skipif(not triton_decode_attention_available("cuda"), reason="needs CUDA and Triton")


@pytest.mark.parametrize(("pairs", "S"), [(16, 1088), (128, 1097), (16, 8192), (2, 13), (4096, 64)])
def test_chunks_cover_every_slot_once(pairs, S):
    chunk, n, block = chunking(pairs, S, sms=132)
    assert block in (64, 128) and chunk % block == 0 and (n - 1) * chunk < S <= n * chunk


def test_reference_is_the_default_decode_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 8 if i == 0 else 77, 32, generator=g) for i in range(3))
    valid = torch.rand(2, 77, generator=g) > 0.4
    mask = valid[:, None, None, :].expand(2, 1, 8, 77)
    torch.testing.assert_close(decode_attention_reference(q, k, v, valid, 0.17), decode_attention(q, k, v, mask, 0.17))


@pytest.fixture(params=[True, False], ids=["one_kernel", "merge_kernel"])
def one_kernel(request, monkeypatch):
    """The chunks merged by the last program of each pair (one kernel), or by a second kernel."""
    import model.decode_attention as da

    monkeypatch.setattr(da, "ONE_KERNEL", request.param)
    return request.param


@cuda
@pytest.mark.parametrize("S", [13, 64, 1097, 2048])
def test_kernel_matches_the_reference_on_cache_slices(S, one_kernel):
    """k/v are slices of a longer cache (strided, as in the engine); one row sees only its first few slots."""
    torch.manual_seed(0)
    B, K, G, D = 2, 8, 8, 128
    cache_k = torch.randn(B, K, S + 64, D, device="cuda", dtype=torch.bfloat16)
    cache_v = torch.randn_like(cache_k)
    k, v = cache_k[:, :, :S], cache_v[:, :, :S]
    q = torch.randn(B, K, G, D, device="cuda", dtype=torch.bfloat16)
    valid = torch.rand(B, S, device="cuda") > 0.3
    valid[1] = False
    valid[1, : min(3, S)] = True
    got = triton_decode_attention(q, k, v, valid, D**-0.5)
    want = decode_attention_reference(q, k, v, valid, D**-0.5)
    assert got.shape == want.shape and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)


@cuda
def test_cached_decoding_is_unchanged_with_the_kernels_on():
    m = tiny(seed=1).to("cuda", torch.bfloat16)
    ids = torch.randint(0, 290, (2, 40), device="cuda")

    def run():
        cache = m.allocate_cache(2, 48)
        out = [m(ids[:, :30], cache=cache).logits[:, -1]]
        out += [m(ids[:, t : t + 1], cache=cache).logits[:, -1] for t in range(30, 40)]
        return torch.stack(out, 1)

    with torch.no_grad():
        off = run()
        assert use_triton_decode_attention()
        try:
            on = run()
        finally:
            use_triton_decode_attention(False)
    torch.testing.assert_close(on, off, atol=3e-2, rtol=3e-2)


@cuda
def test_one_kernel_replays_in_a_cuda_graph(one_kernel):
    """Each replay merges afresh: the per-pair counters are back at zero after every call."""
    torch.manual_seed(0)
    B, K, G, D, S = 2, 8, 8, 128, 1088
    k = torch.randn(B, K, S, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    q = torch.randn(B, K, G, D, device="cuda", dtype=torch.bfloat16)
    valid = torch.rand(B, S, device="cuda") > 0.2
    triton_decode_attention(q, k, v, valid, D**-0.5)  # eager first (allocates the counters)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_decode_attention(q, k, v, valid, D**-0.5)
    for seed in range(3):
        q.copy_(torch.randn(q.shape, generator=torch.Generator().manual_seed(seed)).to("cuda", torch.bfloat16))
        graph.replay()
        want = decode_attention_reference(q, k, v, valid, D**-0.5)
        torch.testing.assert_close(out.float(), want.float(), atol=2e-2, rtol=2e-2)


def _decode_qkv(B, H, K, D, device, seed=0):
    """q, k, v [B, 1, heads, D] as views of one fused projection output (rows strided), norm weights, cos/sin."""
    g = torch.Generator(device=device).manual_seed(seed)
    qkv = torch.randn(B, 1, (H + 2 * K) * D, device=device, generator=g).to(torch.bfloat16)
    q, k, v = (t.view(B, 1, -1, D) for t in qkv.split([H * D, K * D, K * D], dim=-1))
    wq, wk = (torch.rand(D, device=device, generator=g).to(torch.bfloat16) + 0.5 for _ in range(2))
    pos = torch.tensor([[70], [5], [33]][:B], device=device)
    freqs = pos[..., None].float() / 10000 ** (torch.arange(0, D, 2, device=device).float() / D)  # [B, 1, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return q, k, v, wq, wk, emb.cos().bfloat16(), emb.sin().bfloat16(), pos


def test_qk_norm_rope_kv_leaves_what_it_cannot_take_to_the_ops():
    q, k, v, wq, wk, cos, sin, pos = _decode_qkv(3, 4, 2, 64, "cpu")
    cache = torch.zeros(3, 2, 96, 64, dtype=torch.bfloat16)
    assert qk_norm_rope_kv(q, k, v, wq, wk, 1e-6, cos, sin, cache, cache.clone(), pos) is None  # a CPU


@cuda
@pytest.mark.parametrize("per_row", [False, True], ids=["one_slot", "slot_per_row"])
def test_qk_norm_rope_kv_matches_the_ops_it_replaces(per_row):
    """The fused kernel against QK-norm + RoPE and the cache writes it replaces: q rotated the same, k and v at each
    row's slot (or the one slot of all rows), every other slot untouched."""
    B, H, K, D, S = 3, 16, 4, 128, 96
    q, k, v, wq, wk, cos, sin, pos = _decode_qkv(B, H, K, D, "cuda")
    cache_pos = pos if per_row else pos[0]  # [B, 1] or [1]
    ck = torch.randn(B, K, S, D, device="cuda", dtype=torch.bfloat16)
    cv = torch.randn_like(ck)
    want_q, kr = qk_norm_rope(q, k, wq, wk, 1e-6, cos, sin)
    cache = KVCache(ck.clone()[None], cv.clone()[None], torch.ones(B, S, dtype=torch.bool, device="cuda"))
    write_cache(cache, 0, cache_pos, kr, v.transpose(1, 2))
    got_q = qk_norm_rope_kv(q, k, v, wq, wk, 1e-6, cos, sin, ck, cv, cache_pos)
    assert got_q is not None and got_q.shape == want_q.shape == (B, H, 1, D)
    for got, want in ((got_q, want_q), (ck, cache.k[0])):
        torch.testing.assert_close(got, want, atol=1e-2, rtol=1.6e-2)  # within a bf16 rounding or two
    assert torch.equal(cv, cache.v[0])
    untouched = torch.ones(B, S, dtype=torch.bool, device="cuda")
    untouched[torch.arange(B), cache_pos.flatten().expand(B)] = False
    assert torch.equal(ck.transpose(1, 2)[untouched], cache.k[0].transpose(1, 2)[untouched])
