"""LoRA for fine-tuning large checkpoints: frozen base weights + a trainable low-rank update B @ A per projection."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) * x A^T B^T. B starts at zero, so the wrapped model starts exactly as the base."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / r

    @property
    def weight(self) -> Tensor:
        return self.base.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.lora_A.to(x.dtype).T @ self.lora_B.to(x.dtype).T) * self.scale

    def merged(self) -> nn.Linear:
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=False, device=self.base.weight.device)
        w = self.base.weight.float() + self.scale * (self.lora_B.float() @ self.lora_A.float())
        out.weight = nn.Parameter(w.to(self.base.weight.dtype), requires_grad=False)
        return out


def _targets(model: nn.Module, names: tuple[str, ...]):
    for mod in model.modules():
        for child_name, child in list(mod.named_children()):
            if child_name in names and isinstance(child, nn.Linear):
                yield mod, child_name, child


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16.0, targets: tuple[str, ...] = TARGETS) -> list:
    """Freeze every weight, wrap the target projections, return the trainable LoRA parameters."""
    model.requires_grad_(False)
    params = []
    for mod, child_name, child in list(_targets(model, targets)):
        lora = LoRALinear(child, r, alpha)
        setattr(mod, child_name, lora)
        params += [lora.lora_A, lora.lora_B]
    if not params:
        raise ValueError(f"no nn.Linear named {targets} found to adapt")
    return params


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA update into its base weight (plain nn.Linear again: the HF layout saves as usual)."""
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, LoRALinear):
                setattr(mod, child_name, child.merged())


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if ".lora_" in k}


def save_lora(model: nn.Module, path: str | Path) -> None:
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(lora_state_dict(model), str(path))


def load_lora(model: nn.Module, path: str | Path) -> None:
    from safetensors.torch import load_file

    sd = load_file(str(path))
    missing = [k for k in lora_state_dict(model) if k not in sd]
    unexpected = [k for k in sd if ".lora_" not in k]
    if missing or unexpected:
        raise ValueError(f"LoRA file {path}: missing {missing[:4]}, unexpected {unexpected[:4]}")
    model.load_state_dict(sd, strict=False)
