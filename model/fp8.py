"""FP8 weights for decoding on Hopper: half the bytes per step, so up to twice the tokens/s of bf16.

Weights are stored as float8 e4m3 with one float32 scale per output channel (per-channel absmax / 448); each
activation row is quantized on the fly with its own scale, and `torch._scaled_mm` multiplies with both row- and
column-wise scales and accumulates in float32, writing bf16. Where `_scaled_mm` cannot run (CPU, pre-Hopper GPUs) the
same quantized numbers are multiplied in float32, so tests check the numerics anywhere.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .transformer import KERNELS

E4M3_MAX = 448.0
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj", "gate_up_proj")


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [M, K] -> (float8 [M, K], float32 scales [M, 1]) with x ~= q * scale."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


KERNELS["quantize_rows"] = quantize_rows  # fused into one kernel by compile_kernels()


def scaled_mm_available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


class Fp8Linear(nn.Module):
    """A frozen nn.Linear (no bias) with float8 e4m3 weights [N, K] and per-output-channel scales [N]."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        scale = w.abs().amax(dim=1).float().clamp(min=1e-12) / E4M3_MAX  # [N]
        self.register_buffer("weight", (w.float() / scale[:, None]).to(torch.float8_e4m3fn))  # [N, K]
        self.register_buffer("scale", scale[None, :].contiguous())  # [1, N]
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.use_scaled_mm = scaled_mm_available(w.device)

    def forward(self, x: Tensor) -> Tensor:
        lead, K = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, K)
        M = x2.shape[0]
        if not self.use_scaled_mm:  # the same quantized numbers, multiplied in float32
            xq, xs = quantize_rows(x2)
            y = (xq.float() * xs) @ (self.weight.float() * self.scale.T).T
            return y.to(x.dtype).reshape(*lead, self.out_features)
        pad = (-M) % 16  # cuBLASLt's FP8 kernels want every dimension a multiple of 16
        if pad:
            x2 = torch.cat([x2, x2.new_zeros(pad, K)])
        xq, xs = KERNELS["quantize_rows"](x2)
        y = torch._scaled_mm(xq, self.weight.T, scale_a=xs, scale_b=self.scale, out_dtype=torch.bfloat16)
        return y[:M].to(x.dtype).reshape(*lead, self.out_features)


@torch.no_grad()
def quantize_fp8(model: nn.Module, names: tuple[str, ...] = PROJECTIONS) -> int:
    """Replace every projection named in `names` by an Fp8Linear, in place, one at a time (the extra memory is one
    projection). The output head and embeddings stay bf16. Returns how many were replaced."""
    n = 0
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if child_name in names and isinstance(child, nn.Linear):
                setattr(mod, child_name, Fp8Linear(child))
                n += 1
    return n
