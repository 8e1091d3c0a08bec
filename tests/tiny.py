"""Shared by several test modules: the tiny decoder config they build models from, and random camera frames."""

import numpy as np
from PIL import Image

from model import Emu35, Emu35Config
from model.random_checkpoint import random_emu35

CFG = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    boi_token_id=290,
    eoi_token_id=291,
    img_token_id=292,
    eol_token_id=293,
    eof_token_id=294,
    bos_token_id=295,
    eos_token_id=296,
    pad_token_id=297,
)


def tiny(seed=0, **kw) -> Emu35:
    """A random tiny decoder (CFG, with fields overridden by kw)."""
    return random_emu35(Emu35Config(**dict(CFG, **kw)), seed=seed, std=0.1)


def camera_image(seed: int = 0, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A random RGB camera frame of `size` (width, height): the image input of engine, service and ROS tests."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
