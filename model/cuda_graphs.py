"""Capturing a CUDA graph the way every decode graph here is captured."""

from __future__ import annotations

from collections.abc import Callable

import torch


def warm_and_capture(run: Callable, pool=None, device=None) -> tuple[torch.cuda.CUDAGraph, object]:
    """Run `run()` twice on a side stream (lazy initialisation, autotuning and allocator warm-up happen outside the
    capture), then capture one call into a CUDA graph on `pool` (None: the graph's own). Returns (graph, its output:
    static tensors that each replay rewrites)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            run()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = run()
    return graph, out
