"""Emu3.5 transformer config: reads the official `config.json` (model_type "Emu3") and validates every field we use."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Token ids of the official vocabulary (spec §3); config.json may override them.
OFFICIAL_TOKEN_IDS = {
    "pad_token_id": 151643,  # <|endoftext|>
    "bos_token_id": 151849,  # <|extra_203|>
    "eos_token_id": 151850,  # <|extra_204|>
    "img_token_id": 151851,  # <|image token|>
    "boi_token_id": 151852,  # <|image start|>
    "eoi_token_id": 151853,  # <|image end|>
    "eol_token_id": 151846,  # <|extra_200|>
    "eof_token_id": 151847,  # <|extra_201|>
}


class ConfigError(ValueError):
    """A config.json field is missing or invalid; the message names it."""


@dataclass
class Emu35Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None  # explicit in Emu3.5: 64 heads x 128 = 8192 != hidden 5120
    hidden_act: str = "silu"
    max_position_embeddings: int = 131072
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    attention_dropout: float = 0.0
    image_area: int = 518400
    pad_token_id: int = OFFICIAL_TOKEN_IDS["pad_token_id"]
    bos_token_id: int = OFFICIAL_TOKEN_IDS["bos_token_id"]
    eos_token_id: int = OFFICIAL_TOKEN_IDS["eos_token_id"]
    img_token_id: int = OFFICIAL_TOKEN_IDS["img_token_id"]
    boi_token_id: int = OFFICIAL_TOKEN_IDS["boi_token_id"]
    eoi_token_id: int = OFFICIAL_TOKEN_IDS["eoi_token_id"]
    eol_token_id: int = OFFICIAL_TOKEN_IDS["eol_token_id"]
    eof_token_id: int = OFFICIAL_TOKEN_IDS["eof_token_id"]
    model_type: str = "Emu3"
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, kept so save() round-trips

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.validate()

    # ---- validation -------------------------------------------------------------------------------------------
    def validate(self) -> None:
        positive = [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
            "image_area",
        ]
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"config field '{name}' must be a positive integer, got {v!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"config field 'num_key_value_heads' ({self.num_key_value_heads}) must divide "
                f"'num_attention_heads' ({self.num_attention_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"config field 'head_dim' must be even for rotary embeddings, got {self.head_dim}")
        if self.hidden_act not in ("silu", "swish"):
            raise ConfigError(f"config field 'hidden_act' must be 'silu', got {self.hidden_act!r}")
        for name in ("rms_norm_eps", "rope_theta"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"config field '{name}' must be a positive number, got {v!r}")
        if self.rope_scaling is not None:
            kind = (
                self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
                if isinstance(self.rope_scaling, dict)
                else None
            )
            if kind not in ("linear", "dynamic", "default"):
                raise ConfigError(
                    f"config field 'rope_scaling' must be null or {{type: linear|dynamic, factor}}, "
                    f"got {self.rope_scaling!r}"
                )
            factor = self.rope_scaling.get("factor", 1.0)
            if kind != "default" and (not isinstance(factor, (int, float)) or factor < 1.0):
                raise ConfigError(f"config field 'rope_scaling.factor' must be a number >= 1, got {factor!r}")
        for name in OFFICIAL_TOKEN_IDS:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < self.vocab_size:
                raise ConfigError(
                    f"config field '{name}' must be a token id in [0, vocab_size={self.vocab_size}), got {v!r}"
                )

    # ---- derived ----------------------------------------------------------------------------------------------
    @property
    def visual_token_start(self) -> int:
        """Id of <|visual token 000000|>: the token right after EOI in the official layout."""
        return self.eoi_token_id + 1

    @property
    def num_visual_tokens(self) -> int:
        return self.vocab_size - self.visual_token_start

    def num_parameters(self) -> int:
        h, i, L = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        per_layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h + 2 * self.head_dim
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + L * per_layer + h + head

    # ---- io ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Emu35Config:
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        for name in required:
            if name not in d:
                raise ConfigError(f"config is missing required field '{name}'")
        known = {k: v for k, v in d.items() if k in names}
        for k, v in known.items():
            if isinstance(v, float) and v.is_integer() and k.endswith(("_size", "_layers", "_heads", "_id")):
                known[k] = int(v)
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**known, extra=extra)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Emu35Config:
        """Read `config.json` from a checkpoint directory (or the file itself)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise FileNotFoundError(f"no config.json at {p}")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p} is not valid JSON: {e}") from e
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d.update(self.extra)
        return d

    def save(self, path: str | Path) -> None:
        p = Path(path)
        if p.is_dir() or not p.suffix:
            p.mkdir(parents=True, exist_ok=True)
            p = p / "config.json"
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def emu35_34b_config() -> Emu35Config:
    """The published 34B shape (spec §2), for benchmarks with random weights; real runs read config.json."""
    return Emu35Config(
        vocab_size=282926,
        hidden_size=5120,
        intermediate_size=25600,
        num_hidden_layers=64,
        num_attention_heads=64,
        num_key_value_heads=8,
        head_dim=128,
    )
