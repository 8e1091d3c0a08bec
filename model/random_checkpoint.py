"""Tiny random checkpoints in exactly the official layouts, for tests and for trying the code without the 70 GB weights.

A bundle directory holds the three things a user brings:
    model/             config.json + model-0000N-of-0000M.safetensors + model.safetensors.index.json  (BAAI/Emu3.5)
    tokenizer/         emu3.tiktoken + emu3_vision_tokens.txt                                        (text tokenizer)
    vision_tokenizer/  config.yaml + model.ckpt                                         (BAAI/Emu3.5-VisionTokenizer)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import save_emu35
from .config import Emu35Config
from .text_tokenizer import ROLES, TextTokenizer, byte_level_ranks, vision_token_list
from .transformer import Emu35

# A handful of merges on top of the 256 bytes, so tests exercise real BPE merging, not only bytes.
TINY_MERGES = [b"th", b"he", b"the", b" t", b" the", b"in", b"ck", b"bl", b"block", b"lo", b"oc", b"blo", b"bloc"]


def tiny_ranks() -> dict[bytes, int]:
    ranks = byte_level_ranks()
    for m in TINY_MERGES:
        ranks[m] = len(ranks)
    return ranks


def official_size_ranks() -> dict[bytes, int]:
    """tiny_ranks padded with filler tokens to the official 151,643 ranks, so every special id is the official one."""
    ranks = tiny_ranks()
    i = 0
    while len(ranks) < 151643:
        ranks[f"<w{i}>".encode()] = len(ranks)
        i += 1
    return ranks


def write_tokenizer(path: str | Path, n_codes: int, ranks: dict[bytes, int] | None = None) -> TextTokenizer:
    tok = TextTokenizer(ranks or tiny_ranks(), vision_token_list(n_codes))
    tok.save_pretrained(path)
    return tok


def config_for_tokenizer(tok: TextTokenizer, **shape) -> Emu35Config:
    """An Emu35Config whose vocabulary and special ids match `tok` (as the official config matches its files)."""
    ids = {f"{r}_token_id": tok.token_id(ROLES[r]) for r in ("pad", "bos", "eos", "img", "boi", "eoi", "eol", "eof")}
    defaults = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        image_area=64 * 64,
        max_position_embeddings=4096,
    )
    defaults.update(shape)
    return Emu35Config(vocab_size=tok.vocab_size, **defaults, **ids)


def random_emu35(config: Emu35Config, seed: int = 0, std: float = 0.02) -> Emu35:
    """normal(0, std) weights, norms 1: the benchmark's method (performance-baseline.md), deterministic from seed."""
    g = torch.Generator().manual_seed(seed)
    model = Emu35(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


@dataclass
class Bundle:
    root: Path
    model: Path
    tokenizer: Path
    vision_tokenizer: Path


def write_random_bundle(
    path: str | Path,
    seed: int = 0,
    n_codes: int = 1024,
    max_shard_bytes: int = 200_000,
    vision_format: str = "ckpt",
    **shape,
) -> Bundle:
    """Write model/, tokenizer/ and vision_tokenizer/ under `path`; small shards so loading is really sharded."""
    from .vision_tokenizer import tiny_vision_config, write_random_vision_tokenizer

    root = Path(path)
    b = Bundle(root, root / "model", root / "tokenizer", root / "vision_tokenizer")
    tok = write_tokenizer(b.tokenizer, n_codes)
    config = config_for_tokenizer(tok, **shape)
    save_emu35(random_emu35(config, seed), b.model, max_shard_bytes=max_shard_bytes)
    write_random_vision_tokenizer(
        b.vision_tokenizer, tiny_vision_config(n_embed=n_codes), seed=seed, format=vision_format
    )
    return b


__all__ = [
    "Bundle",
    "write_random_bundle",
    "write_tokenizer",
    "config_for_tokenizer",
    "random_emu35",
    "tiny_ranks",
    "official_size_ranks",
]
