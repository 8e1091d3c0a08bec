"""The decoder computes what the official (Qwen3-style) model computes, loads the official layout, and caches right."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import tiny

from model import CheckpointError, Emu35
from model.checkpoint import INDEX_NAME, save_emu35


def to_qwen3(model: Emu35):
    transformers = pytest.importorskip("transformers")
    c = model.config
    rope = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling:
        rope = {"rope_type": c.rope_scaling["type"], "factor": c.rope_scaling["factor"], "rope_theta": c.rope_theta}
    qc = transformers.Qwen3Config(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        rms_norm_eps=c.rms_norm_eps,
        max_position_embeddings=c.max_position_embeddings,
        tie_word_embeddings=c.tie_word_embeddings,
        attention_bias=False,
        rope_parameters=rope,
    )
    ref = transformers.Qwen3ForCausalLM(qc).eval()
    ref.load_state_dict(model.state_dict(), strict=True)
    return ref


@pytest.mark.parametrize("rope_scaling", [None, {"type": "linear", "factor": 2.0}])
def test_logits_equal_transformers_qwen3(rope_scaling):
    m = tiny(rope_scaling=rope_scaling)
    ref = to_qwen3(m)
    ids = torch.randint(0, 300, (2, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = m(ids).logits, ref(ids).logits.float()
    assert ours.shape == (2, 23, 300) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_sharded_load_equals_writer(tmp_path):
    m = tiny(seed=3)
    files = save_emu35(m, tmp_path, max_shard_bytes=60_000)
    assert len(files) >= 3 and (tmp_path / INDEX_NAME).is_file()
    loaded = Emu35.from_pretrained(tmp_path, dtype=torch.float32)
    ids = torch.randint(0, 300, (1, 11))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, m(ids).logits, atol=0, rtol=0)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_single_file_and_bf16_load(tmp_path):
    m = tiny()
    files = save_emu35(m, tmp_path)
    assert [f.name for f in files] == ["model.safetensors"]
    loaded = Emu35.from_pretrained(tmp_path)  # default dtype bf16
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    ids = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, m(ids).logits, atol=0.05, rtol=0.05)


def test_tied_embeddings_load(tmp_path):
    m = tiny(tie_word_embeddings=True)
    save_emu35(m, tmp_path)
    loaded = Emu35.from_pretrained(tmp_path, dtype=torch.float32)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = torch.randint(0, 300, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, m(ids).logits)


def _sharded(tmp_path):
    save_emu35(tiny(), tmp_path, max_shard_bytes=60_000)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    return index


def _rewrite_shard(tmp_path, index, name, edit):
    fname = index["weight_map"][name]
    tensors = load_file(tmp_path / fname)
    edit(tensors)
    save_file(tensors, tmp_path / fname)


def test_missing_tensor_is_named(tmp_path):
    index = _sharded(tmp_path)
    name = "model.layers.1.mlp.up_proj.weight"
    _rewrite_shard(tmp_path, index, name, lambda t: t.pop(name))
    del index["weight_map"][name]
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="missing tensors: model.layers.1.mlp.up_proj.weight"):
        Emu35.from_pretrained(tmp_path)


def test_tensor_in_index_but_not_in_shard_is_named(tmp_path):
    index = _sharded(tmp_path)
    name = "model.layers.0.self_attn.q_norm.weight"
    _rewrite_shard(tmp_path, index, name, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match="missing from shard .*q_norm"):
        Emu35.from_pretrained(tmp_path)


def test_unexpected_tensor_is_named(tmp_path):
    index = _sharded(tmp_path)
    name = "model.norm.weight"
    _rewrite_shard(tmp_path, index, name, lambda t: t.update({"model.extra_head.weight": torch.zeros(2)}))
    index["weight_map"]["model.extra_head.weight"] = index["weight_map"][name]
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="unexpected tensors: model.extra_head.weight"):
        Emu35.from_pretrained(tmp_path)


def test_misshaped_tensor_is_named(tmp_path):
    index = _sharded(tmp_path)
    name = "model.layers.2.self_attn.k_proj.weight"
    _rewrite_shard(tmp_path, index, name, lambda t: t.update({name: torch.zeros(32, 64)}))
    with pytest.raises(CheckpointError, match=r"k_proj.weight \[32, 64\] \(expected \[64, 64\]\)"):
        Emu35.from_pretrained(tmp_path)


def test_missing_shard_and_missing_files(tmp_path):
    index = _sharded(tmp_path)
    (tmp_path / index["weight_map"]["lm_head.weight"]).unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        Emu35.from_pretrained(tmp_path)
    (tmp_path / INDEX_NAME).unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        Emu35.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        Emu35.from_pretrained(tmp_path / "absent")


def test_incremental_decoding_equals_full_forward():
    m = tiny(seed=1)
    ids = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        full = m(ids).logits
        cache = m.allocate_cache(2, 32)
        parts = [m(ids[:, :7], cache=cache).logits]
        parts += [m(ids[:, t : t + 1], cache=cache).logits for t in range(7, 15)]
        parts.append(m(ids[:, 15:], cache=cache).logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 20


def test_left_padded_rows_equal_unpadded_rows():
    """Batched rows of different lengths (as CFG's cond/uncond prompts): padding changes nothing."""
    m = tiny(seed=2)
    a, b = torch.randint(0, 300, (1, 12)), torch.randint(0, 300, (1, 7))
    pad = torch.full((1, 5), 297)
    batch = torch.cat([a, torch.cat([pad, b], 1)])
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :5] = False
    pos = torch.stack([torch.arange(12), (torch.arange(12) - 5).clamp(min=0)])
    with torch.no_grad():
        ref_a, ref_b = m(a).logits, m(b).logits
        out = m(batch, position_ids=pos, attention_mask=mask).logits
        torch.testing.assert_close(out[0], ref_a[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[1, 5:], ref_b[0], atol=1e-5, rtol=1e-5)
        # the same through the cache, then one decode step per row
        cache = m.allocate_cache(2, 16)
        m(batch, position_ids=pos, attention_mask=mask, cache=cache)
        nxt = torch.tensor([[5], [6]])
        step = m(nxt, position_ids=torch.tensor([[12], [7]]), cache=cache).logits
        torch.testing.assert_close(step[0], m(torch.cat([a, nxt[:1]], 1)).logits[0, -1:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step[1], m(torch.cat([b, nxt[1:]], 1)).logits[0, -1:], atol=1e-5, rtol=1e-5)


def test_partial_head_equals_slices_of_full_logits():
    m = tiny()
    ids = torch.randint(0, 300, (2, 6))
    with torch.no_grad():
        full = m(ids).logits
        torch.testing.assert_close(m(ids, logits_to_keep=1).logits, full[:, -1:])
        torch.testing.assert_close(m(ids, vocab_slice=slice(100, 290)).logits, full[..., 100:290])


def test_cache_overflow_is_an_error():
    m = tiny()
    cache = m.allocate_cache(1, 4)
    with pytest.raises(ValueError, match="KV cache full"), torch.no_grad():
        m(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_cache_storage_and_attended_slots_are_aligned():
    """Storage rounds up to KV_ALIGN slots (aligned attention products on a GPU) while the cache still takes only the
    tokens asked for; an unaligned fixed kv_len (what a captured graph passes) attends to the rounded-up slots, which
    are masked, so the logits stay those of the full forward."""
    from model.transformer import KV_ALIGN

    m = tiny(seed=3)
    cache = m.allocate_cache(2, 13)
    assert cache.k.shape[3] == cache.valid.shape[1] == KV_ALIGN and cache.max_len == 13
    assert cache.rows(1, 2).max_len == 13
    ids = torch.randint(0, 300, (2, 13))
    with torch.no_grad():
        full = m(ids).logits
        prefill = m(ids[:, :12], cache=cache, kv_len=12).logits
        step = m(ids[:, 12:], cache=cache, cache_pos=torch.tensor([12]), kv_len=13).logits
        with pytest.raises(ValueError, match="KV cache full"):
            m(ids[:, :2], cache=cache)  # length 12 (an explicit cache_pos does not advance it) + 2 > 13
    torch.testing.assert_close(torch.cat([prefill, step], 1), full, atol=1e-5, rtol=1e-5)


def test_fused_projections_give_the_same_logits():
    m = tiny(seed=4)
    ids = torch.randint(0, 300, (2, 8))
    with torch.no_grad():
        ref = m(ids).logits
        m.fuse_projections()
        assert m.model.layers[0].self_attn.q_proj is None and m.model.layers[0].mlp.gate_up_proj is not None
        torch.testing.assert_close(m(ids).logits, ref, atol=1e-5, rtol=1e-5)
        cache = m.allocate_cache(2, 8)
        torch.testing.assert_close(m(ids, cache=cache).logits, ref, atol=1e-5, rtol=1e-5)


def test_per_row_cache_slots_equal_separate_rows():
    """Rows at different lengths in one cache (continuous batching): each decode row writes its own slot."""
    m = tiny(seed=5)
    a, b = torch.randint(0, 300, (1, 9)), torch.randint(0, 300, (1, 4))
    with torch.no_grad():
        cache = m.allocate_cache(2, 16)
        for row, ids in ((0, a), (1, b)):  # prefill each row alone, into a view of its cache row
            view = type(cache)(cache.k[:, row : row + 1], cache.v[:, row : row + 1], cache.valid[row : row + 1])
            m(ids, cache=view, cache_pos=torch.arange(ids.shape[1]), kv_len=ids.shape[1])
        nxt = torch.tensor([[5], [6]])
        for step in range(3):
            slots = torch.tensor([[9 + step], [4 + step]])
            out = m(nxt, position_ids=slots, cache=cache, cache_pos=slots, kv_len=16).logits
            a, b = torch.cat([a, nxt[:1]], 1), torch.cat([b, nxt[1:]], 1)
            torch.testing.assert_close(out[0, -1], m(a).logits[0, -1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out[1, -1], m(b).logits[0, -1], atol=1e-5, rtol=1e-5)
            nxt = out[:, -1].argmax(-1, keepdim=True)
