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
