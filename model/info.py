"""Describe a checkpoint without loading it: parameters, dtypes, bytes, and the memory a device will need."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .checkpoint import checkpoint_files
from .config import Emu35Config

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float8_e4m3fn": 1, "float8_e5m2": 1}
_SAFETENSORS_DTYPES = {
    "BF16": "bfloat16",
    "F16": "float16",
    "F32": "float32",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
}


@dataclass
class CheckpointInfo:
    path: Path
    config: Emu35Config
    num_parameters: int
    stored_bytes: int
    dtypes: dict[str, int]  # dtype -> parameter count
    num_files: int

    def weight_bytes(self, dtype: str) -> int:
        return self.num_parameters * DTYPE_BYTES[dtype]

    def kv_bytes_per_token(self, dtype: str) -> int:
        c = self.config
        return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * DTYPE_BYTES[dtype]

    def memory_needed(self, dtype: str, context: int, streams: int, cfg: bool = True) -> int:
        """Weights + a pre-allocated KV cache for `streams` requests of `context` tokens (x2 rows with CFG) + the
        largest transient: the float32 logits of one prefill chunk of 512 tokens."""
        rows = streams * (2 if cfg else 1)
        logits = rows * 512 * self.config.vocab_size * 4
        return self.weight_bytes(dtype) + rows * context * self.kv_bytes_per_token(dtype) + logits


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    path = Path(path)
    config = Emu35Config.from_pretrained(path)
    files = checkpoint_files(path)
    dtypes: Counter[str] = Counter()
    n = stored = 0
    for f in sorted(set(files.values())):
        with safe_open(f, framework="pt") as sf:
            for name in sf.keys():
                sl = sf.get_slice(name)
                numel = 1
                for s in sl.get_shape():
                    numel *= s
                dt = _SAFETENSORS_DTYPES.get(sl.get_dtype(), sl.get_dtype())
                dtypes[dt] += numel
                n += numel
                stored += numel * DTYPE_BYTES.get(dt, 4)
    return CheckpointInfo(path, config, n, stored, dict(dtypes), len(set(files.values())))


def device_memory(device: str) -> int | None:
    """Total bytes of `device` when we can tell (CUDA, or this host's RAM for cpu)."""
    d = torch.device(device)
    if d.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(d).total_memory
    if d.type == "cpu":
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def format_info(
    info: CheckpointInfo,
    dtype: str = "bfloat16",
    context: int = 32768,
    streams: int = 1,
    device: str | None = None,
    device_bytes: int | None = None,
) -> str:
    c = info.config
    need = info.memory_needed(dtype, context, streams)
    lines = [
        f"checkpoint     {info.path}",
        f"architecture   {c.model_type}: {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
        f"{c.num_attention_heads} q heads x {c.head_dim} / {c.num_key_value_heads} kv heads, "
        f"intermediate {c.intermediate_size}, vocab {c.vocab_size}",
        f"parameters     {info.num_parameters:,} ({info.num_parameters / 1e9:.2f} B)",
        f"stored         {gib(info.stored_bytes)} in {info.num_files} file(s); dtypes "
        + ", ".join(f"{k}: {v:,}" for k, v in sorted(info.dtypes.items())),
        f"weights as {dtype:9s}{gib(info.weight_bytes(dtype))}",
        f"KV cache       {info.kv_bytes_per_token(dtype) / 2**20:.3f} MiB per token per row",
        f"memory needed  {gib(need)} for {streams} stream(s) x {context} tokens with CFG (2 rows each)",
    ]
    if device is not None:
        total = device_bytes if device_bytes is not None else device_memory(device)
        if total is None:
            lines.append(f"device         {device}: memory unknown (pass --device-memory-gib)")
        else:
            verdict = "fits" if need <= 0.95 * total else "does NOT fit"
            lines.append(f"device         {device}: {gib(total)} -> {verdict}")
    return "\n".join(lines)
