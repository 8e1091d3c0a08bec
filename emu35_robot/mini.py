"""Where the shipped Emu3.5-mini lives: the default model of `serve`, `demo`, `eval` and the ROS bridge.

Not shipped yet (issue 7): until it is, these commands fall back to a tiny random checkpoint. Once trained, it is
a bundle in the official layouts (model/ config.json + safetensors, tokenizer/ vocabulary files, vision_tokenizer/
config.yaml + model.ckpt), trained by `emu35-robot train` on our simulator demonstrations; see its MODEL_CARD.md.
"""

from __future__ import annotations

from pathlib import Path

MINI_BUNDLE = Path(__file__).resolve().parent / "weights" / "emu35-mini"
IMAGE_SIZE = 128  # the camera frames it was trained on (16 x 16 codes per image)


def mini_available() -> bool:
    return (MINI_BUNDLE / "model" / "config.json").is_file()
