"""Typed results of the service for Python callers: plans of subgoals with key-frames as PIL images and numpy grids.

The streaming client methods yield these too: `TextChunk` and `ImageProgress` while decoding, `Subgoal` /
`GeneratedImage` / `ExploreView` as images finish, and one `Plan` / `Generation` / `ExploreTurn` at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from model.sampling import SamplingParams

from .images import from_proto
from .proto import common_pb2


@dataclass
class Options:
    """Decoding options (GenerationOptions); None means the server's default."""

    image_size: tuple[int, int] | None = None  # token grid (h, w) of generated images
    aspect_ratio: str | None = None
    text_sampling: SamplingParams | None = None
    image_sampling: SamplingParams | None = None
    cfg_scale: float | None = None
    seed: int | None = None
    max_new_tokens: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    jacobi_window: int | None = None  # > 0: speculative Jacobi decoding of image tokens (model/jacobi.py)

    def to_proto(self) -> common_pb2.GenerationOptions:
        o = common_pb2.GenerationOptions(aspect_ratio=self.aspect_ratio or "")
        if self.image_size is not None:
            o.image_size.height, o.image_size.width = self.image_size
        for name in ("text_sampling", "image_sampling"):
            sp = getattr(self, name)
            if sp is not None:
                getattr(o, name).CopyFrom(
                    common_pb2.SamplingParams(temperature=sp.temperature, top_k=sp.top_k, top_p=sp.top_p)
                )
        for name in ("cfg_scale", "seed", "max_new_tokens", "jacobi_window"):
            if getattr(self, name) is not None:
                setattr(o, name, getattr(self, name))
        for k, v in self.logit_bias.items():
            o.logit_bias[int(k)] = float(v)
        return o


@dataclass
class Usage:
    reason: str
    prompt_tokens: int
    generated_tokens: int
    image_tokens: int
    incomplete_image: bool
    timings: dict[str, float]

    @classmethod
    def from_proto(cls, u: common_pb2.Usage) -> Usage:
        return cls(u.reason, u.prompt_tokens, u.generated_tokens, u.image_tokens, u.incomplete_image, dict(u.timings))


@dataclass
class TextChunk:
    """Decoded text as it arrives; `index` is the subgoal / image it precedes."""

    index: int
    text: str


@dataclass
class ImageProgress:
    index: int
    rows_done: int
    rows_total: int


@dataclass
class Subgoal:
    index: int
    text: str
    chain_of_thought: str = ""
    image: Image.Image | None = None  # the predicted key-frame
    codes: np.ndarray | None = None  # its visual-token grid [h, w]


@dataclass
class Plan:
    instruction: str
    subgoals: list[Subgoal]
    trailing_text: str
    chain_of_thought: str
    usage: Usage


@dataclass
class GeneratedImage:
    index: int
    caption: str
    image: Image.Image
    codes: np.ndarray


@dataclass
class Generation:
    task: str
    prompt: str
    text: str
    images: list[GeneratedImage]
    usage: Usage


@dataclass
class ExploreView:
    turn: int
    index: int
    narration: str
    image: Image.Image
    codes: np.ndarray


@dataclass
class ExploreTurn:
    turn: int
    command: str
    narration: str
    views: list[ExploreView]
    usage: Usage
    context_tokens: int
    context_limit: int


def image_of(msg: common_pb2.Image) -> tuple[Image.Image, np.ndarray]:
    return from_proto(msg)
