"""Speculative Jacobi decoding (SJD, Teng et al. 2024) for image tokens: several tokens per forward, same distribution.

An image row is long and its tokens are sampled (top-k 10240), so ordinary speculative decoding has no cheap draft
model. SJD drafts with the model itself: each forward runs the token just decided plus a window of m draft tokens
(T = 1 + m) and returns the target distribution p at every one of those positions. Draft j was drawn from a
distribution q_j (the previous forward's p at that position, computed on a context that has since changed, or
uniform for a new position). Drafts are checked in order with the speculative-sampling rule: accept draft x with
probability min(1, p(x) / q(x)); at the first rejection sample that position from max(0, p - q) renormalised and drop
the rest; if all are accepted, sample the position after them from p. Each decided token is then distributed exactly
as p (Leviathan et al. 2023, Chen et al. 2023), whatever the drafts were. The p at positions after the decided one
were computed on rejected drafts: they become the next forward's drafts and q (the Jacobi update), which is why
drafts improve as the image converges.

Grammar-forced positions (EOL at the end of a row) are drafts that are always right: they are accepted without a test.
A forward's cost is nearly flat in T while decoding is bound by reading the weights, so accepted drafts are time saved.
"""

from __future__ import annotations

import torch
from torch import Tensor


def accept(p: Tensor, q: Tensor, drafts: list[int], forced: list[bool], gen: torch.Generator) -> tuple[int, int | None]:
    """Check m drafts against the target.

    p [m + 1, V]: target probabilities at the m draft positions and the one after; q [m, V]: the probabilities each
    draft was drawn from; drafts: m indices into V (ignored where forced); forced: m + 1 flags, True where the grammar
    fixes the token. Returns (a, x): the first a drafts are accepted and position a gets index x, or None when that
    position is forced. Draws m uniforms every call, so a seed gives the same tokens run to run.
    """
    m = len(drafts)
    u = torch.rand(m, generator=gen, device=p.device)
    idx = torch.tensor(drafts, device=p.device)[:, None]
    ok = (u * q.gather(1, idx)[:, 0] < p[:m].gather(1, idx)[:, 0]).tolist()  # u < p(x) / q(x), q(x) > 0
    a = 0
    while a < m and (forced[a] or ok[a]):
        a += 1
    if forced[a]:
        return a, None
    r = p[a] if a == m else (p[a] - q[a]).clamp(min=0)
    if a < m and not float(r.sum()) > 0:  # p == q where it matters: the residual is empty, p itself is exact
        r = p[a]
    return a, int(draw(r[None], gen)[0])


def draw(probs: Tensor, gen: torch.Generator) -> Tensor:
    """One index per row of probs [N, V] (unnormalised is fine), distributed as the row: argmax of p / Exp(1) noise,
    one pass over V where multinomial builds a cumulative sum (18 ms per 131k-wide row on a CPU core)."""
    return (probs / torch.empty_like(probs).exponential_(1.0, generator=gen)).argmax(-1)


def uniform(m: int, V: int, gen: torch.Generator, device) -> tuple[list[int], Tensor]:
    """m fresh drafts, drawn uniformly from V tokens, and their q [m, V]."""
    return torch.randint(V, (m,), generator=gen, device=device).tolist(), torch.full((m, V), 1.0 / V, device=device)
