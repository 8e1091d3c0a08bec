"""Sampling: temperature, top-k and top-p give the distribution their definitions say, and `sample` draws from it."""

import pytest
import torch

from model.sampling import SamplingParams, sample, sampling_probs


def reference(scores, p: SamplingParams):
    """The definitions over the whole vocabulary: mask below the k-th score, then outside the smallest prefix of
    the sorted distribution that reaches top_p, softmax."""
    scores = scores.float() / p.temperature
    if 0 < p.top_k < scores.shape[-1]:
        scores = scores.masked_fill(scores < torch.topk(scores, p.top_k).values[..., -1:], float("-inf"))
    if p.top_p < 1.0:
        ss, idx = torch.sort(scores, descending=True)
        q = ss.softmax(-1)
        ss = ss.masked_fill(q.cumsum(-1) - q > p.top_p, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, idx, ss)
    return scores.softmax(-1)


PARAMS = [SamplingParams(1.0, 10, 0.9), SamplingParams(0.7, 0, 0.8), SamplingParams(1.3, 50, 1.0),
          SamplingParams(1.0, 0, 1.0), SamplingParams(1.0, 1024, 0.9)]  # fmt: skip


@pytest.mark.parametrize("params", PARAMS, ids=str)
def test_probs_follow_the_definitions(params):
    scores = torch.randn(3, 2000, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(sampling_probs(scores, params), reference(scores, params), atol=1e-6, rtol=0)


@pytest.mark.parametrize("params", [SamplingParams(1.3, 50, 1.0), SamplingParams(1.0, 1024, 1.0)], ids=str)
def test_ties_at_the_kth_score_are_kept(params):
    """bf16 logits tie often; top-k keeps every token tied with the k-th, as the definition (and HF) does. (Where
    ties straddle the top-p cut, which of them a sort puts first is arbitrary in both: top-p is left out here.)"""
    scores = (torch.randn(4, 2000, generator=torch.Generator().manual_seed(2)) * 3).bfloat16().float()
    torch.testing.assert_close(sampling_probs(scores, params), reference(scores, params), atol=1e-6, rtol=0)


def test_sample_draws_from_those_probs():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(1, 40, generator=g) * 2
    params = SamplingParams(1.0, 8, 0.95)
    draws = torch.stack([sample(scores, params, g) for _ in range(20000)])[:, 0]
    freq = torch.bincount(draws, minlength=40).float() / len(draws)
    want = sampling_probs(scores, params)[0]
    assert set(draws.tolist()) <= set(want.nonzero()[:, 0].tolist())  # never outside top-k / top-p
    assert (freq - want).abs().sum() / 2 < 0.02  # total variation
    assert sample(scores, SamplingParams(temperature=0.0)).item() == scores.argmax().item()


@pytest.mark.parametrize("params", PARAMS + [SamplingParams(1.3, 50, 0.9), SamplingParams(0.0)], ids=str)
def test_a_row_of_a_batch_draws_what_it_draws_alone(params):
    """With one generator per row, a batch of rows (continuous batching's draw) gives each row exactly the tokens it
    draws alone, draw after draw: bf16 ties, and a row with fewer candidates than top-k (the rest masked)."""
    scores = (torch.randn(4, 2000, generator=torch.Generator().manual_seed(3)) * 3).bfloat16().float()
    scores[1, 30:] = float("-inf")
    batch, alone = ([torch.Generator().manual_seed(s) for s in (5, 6, 7, 8)] for _ in range(2))
    for _ in range(20):
        together = sample(scores, params, batch)
        assert together.tolist() == [int(sample(scores[i : i + 1], params, [g])[0]) for i, g in enumerate(alone)]


def test_a_checkpoint_ships_its_image_sampling_default(tmp_path, bundle):
    """model_dir/sampling.json sets the default for the images of every task but t2i (Emu3.5-mini: greedy); the
    release has no such file and keeps the spec's; a malformed file is a clear error, not a silent default."""
    import json
    import shutil

    from model.engine import GenerationRequest, load_engine
    from model.sampling import IMAGE_SAMPLING, T2I_IMAGE_SAMPLING, checkpoint_image_sampling

    assert checkpoint_image_sampling(bundle.model) is None
    model = tmp_path / "model"
    shutil.copytree(bundle.model, model)
    (model / "sampling.json").write_text(json.dumps({"image_sampling": {"temperature": 0.0, "top_k": 0}}))
    eng = load_engine(model, bundle.tokenizer, bundle.vision_tokenizer, max_len=256)
    assert eng.image_sampling == SamplingParams(0.0, 0, 1.0)
    assert eng._resolve(GenerationRequest(task="vla", question="x"))[0] == SamplingParams(0.0, 0, 1.0)
    assert eng._resolve(GenerationRequest(task="t2i", question="x"))[0] == T2I_IMAGE_SAMPLING
    own = SamplingParams(0.7, 5, 0.9)
    assert eng._resolve(GenerationRequest(task="vla", question="x", image_sampling=own))[0] == own
    assert load_engine(bundle.model, bundle.tokenizer, bundle.vision_tokenizer, max_len=256).image_sampling == (
        IMAGE_SAMPLING
    )
    for bad in ([1], {"image_sampling": {"temperature": -1}}, {"image_sampling": {"topk": 3}}, "{greedy"):
        (model / "sampling.json").write_text(bad if isinstance(bad, str) else json.dumps(bad))
        with pytest.raises(ValueError, match="sampling.json"):
            checkpoint_image_sampling(model)


@pytest.mark.parametrize("params", [SamplingParams(1.0, 50, 1.0), SamplingParams(1.0, 10, 0.9), SamplingParams(0.0)],
                         ids=str)  # fmt: skip
def test_draw_tokens_combines_cfg_then_samples(params):
    """A draw carries the raw (conditional, unconditional) rows and the CFG scale; `draw_tokens` combines them
    (spec §7) and samples: the tokens `sample(cfg_combine(...))` gives, row by row, groups of any size."""
    from model.engine import Draw, draw_tokens
    from model.sampling import cfg_combine

    logits = torch.randn(6, 2000, generator=torch.Generator().manual_seed(4)) * 3  # 3 streams x (cond, uncond)
    gens, refs = ([torch.Generator().manual_seed(s) for s in range(3)] for _ in range(2))
    text = Draw(logits[:1], SamplingParams(0.0), torch.Generator())  # another group: no CFG, greedy
    for _ in range(10):
        draws = [Draw(logits[2 * s : 2 * s + 2], params, g, 3.0) for s, g in enumerate(gens)]
        got = draw_tokens([draws[0], text, *draws[1:]])
        want = [int(sample(cfg_combine(logits[2 * s], logits[2 * s + 1], 3.0)[None], params, [g])[0])
                for s, g in enumerate(refs)]  # fmt: skip
        assert got == [want[0], int(logits[0].argmax()), *want[1:]]


def test_top_k_alone_keeps_every_tie_with_the_kth():
    """Top-k without top-p masks below the k-th score over the whole vocabulary: 30 tokens tied at the top all stay
    in a top-5 (no cap at 2k candidates), and a draw only ever lands on them."""
    scores = torch.zeros(1, 100)
    scores[0, 40:70] = 2.0
    params = SamplingParams(1.0, 5, 1.0)
    probs = sampling_probs(scores, params)[0]
    assert (probs[40:70] - 1 / 30).abs().max() < 1e-6 and probs.sum().item() == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    draws = {int(sample(scores, params, g)[0]) for _ in range(300)}
    assert draws <= set(range(40, 70)) and len(draws) > 20
