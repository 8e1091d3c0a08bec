"""A decode step's CFG combination and token draw, replayed as one CUDA graph.

After the forward, a CFG image step picks its token with a dozen or so small kernels (the CFG combination, the top-k
threshold, the draw; `sampling.combine_and_pick`). Launched one by one they cost more wall time than GPU time: at the
34B shape on an H200, 0.59 ms against 0.27 ms before they were captured (benchmarks/RESULTS.md). Here they run as one
captured graph per (rows, width, CFG scale, sampling params).

The random part stays outside the graph and unchanged: each row's Exp(1) noise is drawn eagerly from the request's
own generator into the graph's static input (one small kernel per row), exactly as `sampling.sample` draws it, so a
request draws the same tokens with and without graphs, alone or in a batch. The rest (`sampling.combine_and_pick`) is
deterministic and reads nothing back from the device, which is what capture needs.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

from .cuda_graphs import warm_and_capture
from .sampling import SamplingParams, combine_and_pick, draw_width, exponential_noise


class GraphSampler:
    """Draw tokens for a group of rows with equal (shape, CFG scale, params) through a captured graph per group shape,
    keeping the `max_graphs` most recently used. Call with the rows' scores ([R, V] each: R = 2 with CFG, else 1),
    their generators -> tokens [n] on the device (a static tensor: overwritten by the next call with the same shape;
    read it before)."""

    def __init__(self, max_graphs: int = 64) -> None:
        # least recently used first: requests choose their own sampling params and CFG scale, so the keys are not
        # bounded by the engine's shapes, and each graph holds its static buffers
        self._graphs: OrderedDict[tuple, tuple] = OrderedDict()
        self.max_graphs = max_graphs

    def __len__(self) -> int:
        return len(self._graphs)

    def __call__(self, rows: list[Tensor], cfg: float | None, params: SamplingParams, gens: list) -> Tensor:
        R, V = rows[0].shape
        key = (len(rows), R, V, rows[0].dtype, rows[0].device, cfg, params)
        if key in self._graphs:
            self._graphs.move_to_end(key)
        else:
            while len(self._graphs) >= self.max_graphs:
                self._graphs.popitem(last=False)
            self._graphs[key] = self._capture(len(rows), R, V, rows[0], cfg, params)
        graph, scores, noise, out = self._graphs[key]
        if len(rows) == 1:
            scores[0].copy_(rows[0])
        else:
            torch.stack(rows, out=scores)
        if noise is not None:
            exponential_noise(noise.shape, noise.device, gens, out=noise)
        graph.replay()
        return out

    @staticmethod
    def _capture(n: int, R: int, V: int, like: Tensor, cfg, params) -> tuple:
        """Static inputs (scores [n, R, V], noise [n, W] or None for greedy), warmed up twice on a side stream, then
        captured: (graph, scores, noise, tokens [n])."""
        scores = torch.zeros(n, R, V, dtype=like.dtype, device=like.device)
        W = draw_width(V, params)
        noise = torch.ones(n, W, dtype=torch.float, device=like.device) if W else None
        graph, out = warm_and_capture(lambda: combine_and_pick(scores, cfg, params, noise), device=like.device)
        return graph, scores, noise, out
