"""Sampling with temperature, top-k and top-p, and the CFG combination of spec §7."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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

# A checkpoint may ship its own default for the images of every task but t2i, in its model directory:
# {"image_sampling": {"temperature": 0.0, "top_k": 0, "top_p": 1.0}}. The release has none and uses IMAGE_SAMPLING;
# Emu3.5-mini ships greedy key-frames, which its evaluation preferred (README, Training).
SAMPLING_FILE = "sampling.json"
MAX_SAMPLING_FILE_BYTES = 4096


def checkpoint_image_sampling(model_dir: str | Path) -> SamplingParams | None:
    """The image sampling default in `model_dir`/sampling.json, or None when there is no such file."""
    path = Path(model_dir) / SAMPLING_FILE
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_SAMPLING_FILE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_SAMPLING_FILE_BYTES} bytes")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    spec = data.get("image_sampling") if isinstance(data, dict) else None
    if not isinstance(spec, dict) or set(spec) - {"temperature", "top_k", "top_p"}:
        raise ValueError(f"{path}: want {{'image_sampling': {{'temperature', 'top_k', 'top_p'}}}}, got {spec!r}")
    params = SamplingParams(
        float(spec.get("temperature", 1.0)), int(spec.get("top_k", 0)), float(spec.get("top_p", 1.0))
    )
    params.validate(f"{path} image_sampling")
    return params


def cfg_combine(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Variant "no_text": log-softmax both, then uncond + s * (cond - uncond). Shapes [..., V]."""
    return cfg_combine_pairs(torch.stack([cond, uncond]), scale, 0)


def cfg_combine_pairs(logits: Tensor, scale: float, dim: int) -> Tensor:
    """`cfg_combine` of the (conditional, unconditional) pair that `logits` holds along `dim` (size 2), the last dim
    V. The log-softmax is x - logsumexp(x): reductions that spread a row over the GPU (torch.log_softmax runs each
    row of 131k codes on one thread block: 55 us for the pair on an H200)."""
    x = logits.float()
    cond, uncond = (x - torch.logsumexp(x, -1, keepdim=True)).unbind(dim)
    return uncond + scale * (cond - uncond)


def sample(scores: Tensor, params: SamplingParams, generator: torch.Generator | list | None = None) -> Tensor:
    """scores [N, V] (logits or log-probs, -inf where masked) -> token indices [N], left on the device: nothing here
    waits for the device, so a caller can launch many draws and read their tokens at once. `generator`: one for every
    row, or a list of one per row (a batch of requests, each with its own seed: row i draws what it draws alone)."""
    if params.temperature == 0:
        return scores.argmax(-1)
    N, V = scores.shape
    return pick(scores, params, exponential_noise((N, draw_width(V, params)), scores.device, generator))


def draw_width(V: int, params: SamplingParams) -> int:
    """How many candidates a draw from V scores scans (the width of `_kept`'s probabilities): 0 for greedy."""
    if params.temperature == 0:
        return 0
    return min(V, 2 * params.top_k) if 0 < params.top_k < V and params.top_p < 1.0 else V


def exponential_noise(shape: tuple[int, int], device, generator=None, out: Tensor | None = None) -> Tensor:
    """Exp(1) noise [N, W] for `pick`, float32: row i from generator[i] when `generator` is a list. Into `out` if
    given (a captured sampler's static input)."""
    noise = torch.empty(shape, dtype=torch.float, device=device) if out is None else out
    if isinstance(generator, (list, tuple)):
        for row, g in zip(noise, generator):
            row.exponential_(generator=g)
    else:
        noise.exponential_(generator=generator)
    return noise


def pick(scores: Tensor, params: SamplingParams, noise: Tensor) -> Tensor:
    """The token `sample` draws from scores [N, V] with its noise [N, draw_width] already drawn: the argmax of
    probs / noise is distributed as probs (torch.multinomial's draw of one sample). Reads nothing back from the
    device, so it can be captured in a CUDA graph (model/graph_sampler.py)."""
    if params.temperature == 0:
        return scores.argmax(-1)
    kept, idx = _kept_scores(scores, params)
    # argmax of probs / noise, in logs: probs = exp(kept - logsumexp) and the logsumexp is the same for every
    # candidate, so no softmax is needed (one over a lone 131k row costs ~30 us on a GPU)
    choice = (kept - noise.log()).argmax(-1, keepdim=True)
    return (choice if idx is None else idx.gather(-1, choice)).squeeze(-1)


def combine_and_pick(scores: Tensor, cfg: float | None, params: SamplingParams, noise: Tensor | None) -> Tensor:
    """scores [N, R, V]: R = 2 (conditional, unconditional) combined with CFG scale `cfg`, or R = 1 and cfg None ->
    tokens [N] (`pick`). One decode step's work after the forward, for every request in a group."""
    return pick(scores[:, 0] if cfg is None else cfg_combine_pairs(scores, cfg, 1), params, noise)


def sampling_probs(scores: Tensor, params: SamplingParams) -> Tensor:
    """scores [N, V] -> the probabilities [N, V] that `sample` draws from (one-hot at the argmax for temperature 0)."""
    if params.temperature == 0:
        return torch.zeros_like(scores, dtype=torch.float).scatter_(-1, scores.argmax(-1, keepdim=True), 1.0)
    probs, idx = _kept(scores, params)
    return probs if idx is None else torch.zeros_like(scores, dtype=torch.float).scatter_(-1, idx, probs)


def _kept(scores: Tensor, params: SamplingParams) -> tuple[Tensor, Tensor | None]:
    """Temperature, top-k, top-p -> (probabilities [N, W], their token indices [N, W]), or (probabilities [N, V] in
    vocabulary order, None) when no order is needed (`_kept_scores`, softmaxed)."""
    kept, idx = _kept_scores(scores, params)
    return kept.softmax(-1), idx


def _kept_scores(scores: Tensor, params: SamplingParams) -> tuple[Tensor, Tensor | None]:
    """Temperature, top-k, top-p -> (scores [N, W], -inf where cut, their token indices [N, W]), or (scores [N, V] in
    vocabulary order, None) when no order is needed.

    Top-k alone masks the vocabulary below the k-th score (scores [N, V], None). With a top-p as well, the
    candidates are the W = min(V, 2k) best scores, so that top-p and the draw scan W entries, not the
    282,926-wide vocabulary (a sort and a draw per row cost milliseconds on a CPU), and W is known without reading
    anything back from the device. Top-k keeps every token tied with the k-th (bf16 logits tie often: tens of tokens
    at one value), up to W in all. Top-p keeps the smallest prefix of the sorted distribution that reaches top_p,
    with tied tokens in or out together. The candidates come in draw order: vocabulary order, with those of no
    probability last when the W are not the whole vocabulary (which of them made the W is up to the sort, and a batch
    of rows and a row alone may run different sort kernels), so the draw never depends on the sort's order of ties."""
    scores = scores.float() / params.temperature
    V = scores.shape[-1]
    if 0 < params.top_k < V and params.top_p >= 1.0:
        # top-k alone needs only the k-th score, not an order: mask below it over the whole vocabulary (every tie
        # with the k-th kept). On a GPU this skips topk's sort and the index sort below
        kth = torch.topk(scores, params.top_k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
        return scores.masked_fill(scores < kth, float("-inf")), None
    if 0 < params.top_k < V:
        W = min(V, 2 * params.top_k)
        scores, idx = torch.topk(scores, W, dim=-1)  # best first
        scores = scores.masked_fill(scores < scores[..., params.top_k - 1 : params.top_k], float("-inf"))
        key = idx if W == V else torch.where(scores == float("-inf"), idx + V, idx)
    elif params.top_p < 1.0:
        scores, idx = torch.sort(scores, dim=-1, descending=True)
        key = idx
    else:
        return scores, None
    if params.top_p < 1.0:
        p = scores.softmax(-1)
        ahead = p.cumsum(-1) - p  # the mass sorted before each token; a tie shares that of its first token
        tied = torch.cat([torch.zeros_like(scores[..., :1], dtype=torch.bool), scores[..., 1:] == scores[..., :-1]], -1)
        ahead = ahead.masked_fill(tied, 0.0).cummax(-1).values  # ahead only grows: cummax carries a tie's first
        scores = scores.masked_fill(ahead > params.top_p, float("-inf"))
    # vocabulary order, as over the whole vocabulary: in score order, two near-equal logits that swap places by a
    # last-bit difference (batched vs alone) would move every draw between them to the other token
    order = key.argsort(-1)
    return scores.gather(-1, order), idx.gather(-1, order)
