"""Sampling with temperature, top-k and top-p, and the CFG combination of spec §7."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k
    top_p: float = 1.0

    def validate(self, what: str) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"{what}.temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"{what}.top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"{what}.top_p must be in (0, 1], got {self.top_p}")


TEXT_SAMPLING = SamplingParams(temperature=1.0, top_k=1024, top_p=0.9)
IMAGE_SAMPLING = SamplingParams(temperature=1.0, top_k=10240, top_p=1.0)  # t2i uses top_k 5120
T2I_IMAGE_SAMPLING = SamplingParams(temperature=1.0, top_k=5120, top_p=1.0)


def cfg_combine(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Variant "no_text": log-softmax both, then uncond + s * (cond - uncond). Shapes [..., V]."""
    cond, uncond = torch.log_softmax(cond.float(), -1), torch.log_softmax(uncond.float(), -1)
    return uncond + scale * (cond - uncond)


def sample(scores: Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> Tensor:
    """scores [N, V] (logits or log-probs, -inf where masked) -> token indices [N]."""
    if params.temperature == 0:
        return scores.argmax(-1)
    probs, idx = _kept(scores, params)
    if idx is not None:  # draw in vocabulary order, as over the whole vocabulary: in score order, two near-equal
        idx, order = idx.sort(-1)  # logits that swap places by a last-bit difference (batched vs alone) would
        probs = probs.gather(-1, order)  # move every draw between them to the other token
    pick = torch.multinomial(probs, 1, generator=generator)  # [N, 1]: among the kept candidates only
    return (pick if idx is None else idx.gather(-1, pick)).squeeze(-1)


def sampling_probs(scores: Tensor, params: SamplingParams) -> Tensor:
    """scores [N, V] -> the probabilities [N, V] that `sample` draws from (one-hot at the argmax for temperature 0)."""
    if params.temperature == 0:
        return torch.zeros_like(scores, dtype=torch.float).scatter_(-1, scores.argmax(-1, keepdim=True), 1.0)
    probs, idx = _kept(scores, params)
    return probs if idx is None else torch.zeros_like(scores, dtype=torch.float).scatter_(-1, idx, probs)


def _kept(scores: Tensor, params: SamplingParams) -> tuple[Tensor, Tensor | None]:
    """Temperature, top-k, top-p. With a top-k: (probabilities [N, k'] of the k best tokens and any tied with the k-th,
    best first, those beyond top-p at zero; their indices), so that top-p sorts and multinomial scans k' entries, not
    the 282,926-wide vocabulary (a sort and a draw per row cost milliseconds on a CPU). Without a top-k:
    (probabilities [N, V] in vocabulary order, None), or sorted with their indices when there is a top-p."""
    scores = scores.float() / params.temperature
    idx = None
    if 0 < params.top_k < scores.shape[-1]:
        vals, idx = torch.topk(scores, params.top_k, dim=-1)  # sorted, best first
        kth = vals[..., -1:]
        n = int((scores >= kth).sum(-1).max())  # top-k keeps every token tied with the k-th (bf16 logits tie often)
        if n > params.top_k:
            vals, idx = torch.topk(scores, n, dim=-1)
            vals = vals.masked_fill(vals < kth, float("-inf"))
        scores = vals
    elif params.top_p < 1.0:
        scores, idx = torch.sort(scores, dim=-1, descending=True)
    if params.top_p < 1.0:
        p = scores.softmax(-1)
        drop = p.cumsum(-1) - p > params.top_p  # keep the smallest prefix reaching top_p
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(-1), idx
