"""Read and write the official HF checkpoint layout: config.json + model.safetensors, or sharded
model-0000N-of-0000M.safetensors + model.safetensors.index.json.

Loading checks every tensor header first (names, shapes) so a bad checkpoint fails in a second, not after 68 GB,
then streams tensor by tensor onto the device: peak host memory stays near one tensor, far below one shard.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from .config import Emu35Config
from .transformer import Emu35, rope_inv_freq

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint tensor is missing, unexpected or mis-shaped, or a file is absent; the message names it."""


def _fmt(names: list[str], limit: int = 8) -> str:
    names = sorted(names)
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def checkpoint_files(path: Path) -> dict[str, Path]:
    """Map every tensor name to the safetensors file that holds it, as declared by the index (or the single file)."""
    index = path / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index (needs a 'weight_map'): {e}") from e
        files = {name: path / fname for name, fname in weight_map.items()}
        for f in sorted(set(files.values())):
            if not f.is_file():
                raise CheckpointError(f"shard {f.name} named in {INDEX_NAME} does not exist in {path}")
        return files
    single = path / SINGLE_NAME
    if single.is_file():
        with safe_open(single, framework="pt") as f:
            return {name: single for name in f.keys()}
    raise CheckpointError(f"no {SINGLE_NAME} or {INDEX_NAME} in {path}")


def read_headers(files: dict[str, Path]) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """name -> (file, shape) from the safetensors headers only; names the index lists but a shard lacks are errors."""
    out: dict[str, tuple[Path, tuple[int, ...]]] = {}
    by_file: dict[Path, list[str]] = {}
    for name, f in files.items():
        by_file.setdefault(f, []).append(name)
    for f, names in by_file.items():
        with safe_open(f, framework="pt") as sf:
            present = set(sf.keys())
            absent = [n for n in names if n not in present]
            if absent:
                raise CheckpointError(f"tensors listed in the index are missing from shard {f.name}: {_fmt(absent)}")
            for n in names:
                out[n] = (f, tuple(sf.get_slice(n).get_shape()))
    return out


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    mod_name, _, attr = name.rpartition(".")
    mod = model.get_submodule(mod_name)
    setattr(mod, attr, nn.Parameter(value, requires_grad=False))


def load_emu35(path: str | Path, dtype: torch.dtype = torch.bfloat16, device="cpu", progress: bool = False) -> Emu35:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    config = Emu35Config.from_pretrained(path)
    with torch.device("meta"):
        model = Emu35(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)

    headers = read_headers(checkpoint_files(path))
    if config.tie_word_embeddings:
        headers.pop("lm_head.weight", None)  # some writers store the tied copy too
    missing = [k for k in expected if k not in headers]
    unexpected = [k for k in headers if k not in expected]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing tensors: {_fmt(missing)}")
    if unexpected:
        raise CheckpointError(f"checkpoint {path} has unexpected tensors: {_fmt(unexpected)}")
    bad = [
        f"{k} {list(headers[k][1])} (expected {list(shape)})" for k, shape in expected.items() if headers[k][1] != shape
    ]
    if bad:
        raise CheckpointError(f"checkpoint {path} has mis-shaped tensors: {_fmt(bad)}")

    device = torch.device(device)
    by_file: dict[Path, list[str]] = {}
    for name, (f, _) in headers.items():
        by_file.setdefault(f, []).append(name)
    items = list(by_file.items())
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="loading shards", unit="shard")
    # Read straight onto CUDA devices when asked: the host then only holds the mmap'd header pages.
    read_device = str(device) if device.type == "cuda" else "cpu"
    for f, names in items:
        with safe_open(f, framework="pt", device=read_device) as sf:
            for name in names:
                _set_tensor(model, name, sf.get_tensor(name).to(device=device, dtype=dtype))
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.inv_freq = rope_inv_freq(config, device)
    return model.eval()


def save_emu35(
    model: Emu35, path: str | Path, max_shard_bytes: int = 5 * 2**30, state_dict: dict[str, torch.Tensor] | None = None
) -> list[Path]:
    """Write `model` (or `state_dict`, e.g. gathered from FSDP shards) in the official layout; several shards +
    index when it exceeds `max_shard_bytes`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.save(path)
    state = {k: v.detach().contiguous().cpu() for k, v in (state_dict or model.state_dict()).items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        out = path / SINGLE_NAME
        save_file(shards[0], out, metadata=meta)
        return [out]
    n = len(shards)
    files, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file(shard, path / fname, metadata=meta)
        files.append(path / fname)
        weight_map.update({k: fname for k in shard})
    total = sum(v.numel() * v.element_size() for v in state.values())
    (path / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return files
