"""Where the shipped Emu3.5-mini lives: the default model of `serve`, `demo`, `eval` and the ROS bridge.

A bundle in the official layouts (model/ config.json + bf16 safetensors, tokenizer/ vocabulary files,
vision_tokenizer/ config.yaml + model.ckpt), trained by `emu35-robot train` on our simulator demonstrations; its
MODEL_CARD.md says on what, for how long, and how well it plans. An install without these files falls back to a
tiny random checkpoint.
"""

from __future__ import annotations

from pathlib import Path

MINI_BUNDLE = Path(__file__).resolve().parent / "weights" / "emu35-mini"
IMAGE_SIZE = 128  # the camera frames it was trained on (16 x 16 codes per image)


def mini_available() -> bool:
    return (MINI_BUNDLE / "model" / "config.json").is_file()
