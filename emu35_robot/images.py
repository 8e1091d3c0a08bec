"""Decode and check camera images from requests; encode generated images for responses.

Sizes are checked before any pixel is decoded (the PNG/JPEG header gives width and height), so a decompression bomb
or an oversized upload costs the server nothing.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from .errors import invalid
from .limits import Limits
from .proto import common_pb2

FORMATS = ("PNG", "JPEG")


def decode_image(msg: common_pb2.ImageInput, limits: Limits, what: str = "images[0]") -> Image.Image:
    """ImageInput -> RGB PIL image, or INVALID_ARGUMENT naming the image and what is wrong with it."""
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise invalid(f"{what}: set either encoded (PNG/JPEG bytes) or raw (RGB pixels with shape)")
    if kind == "raw":
        raw = msg.raw
        c = raw.channels or 3
        if c != 3:
            raise invalid(f"{what}.raw.channels must be 3 (RGB), got {c}")
        h, w = raw.height, raw.width
        if h == 0 or w == 0:
            raise invalid(f"{what}.raw: height and width must be > 0, got {h}x{w}")
        if h * w > limits.max_image_pixels:
            raise invalid(f"{what}.raw: {w}x{h} = {h * w} pixels exceeds the limit of {limits.max_image_pixels}")
        if len(raw.data) != h * w * 3:
            raise invalid(f"{what}.raw.data has {len(raw.data)} bytes; {h}x{w}x3 needs {h * w * 3}")
        return Image.fromarray(np.frombuffer(raw.data, dtype=np.uint8).reshape(h, w, 3), "RGB")
    data = msg.encoded
    if not data:
        raise invalid(f"{what}.encoded is empty")
    if len(data) > limits.max_image_bytes:
        raise invalid(f"{what}: {len(data)} bytes exceeds the limit of {limits.max_image_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.format not in FORMATS:
                raise invalid(f"{what}: format {im.format} is not accepted; send PNG or JPEG")
            w, h = im.size
            if w * h > limits.max_image_pixels:
                raise invalid(f"{what}: {w}x{h} = {w * h} pixels exceeds the limit of {limits.max_image_pixels}")
            im.load()
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise invalid(f"{what}: cannot decode the image ({type(e).__name__}: {e})") from None


def decode_images(msgs, limits: Limits, field: str = "images", required: bool = False) -> list[Image.Image]:
    if len(msgs) > limits.max_images:
        raise invalid(f"{field}: {len(msgs)} images exceeds the limit of {limits.max_images}")
    if required and not msgs:
        raise invalid(f"{field}: at least one image is required")
    return [decode_image(m, limits, f"{field}[{i}]") for i, m in enumerate(msgs)]


def to_proto(image: Image.Image, codes: np.ndarray | None = None) -> common_pb2.Image:
    """A generated image as PNG bytes plus its visual-token grid."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    out = common_pb2.Image(png=buf.getvalue(), width=image.width, height=image.height)
    if codes is not None:
        out.grid_height, out.grid_width = (int(x) for x in codes.shape)
        out.codes.extend(int(c) for c in codes.reshape(-1))
    return out


def to_input(image: Image.Image | np.ndarray | bytes | str, raw: bool = False) -> common_pb2.ImageInput:
    """Client side: a PIL image, an HxWx3 uint8 array, PNG/JPEG bytes or a file path -> ImageInput."""
    if isinstance(image, str):
        with open(image, "rb") as f:
            return common_pb2.ImageInput(encoded=f.read())
    if isinstance(image, bytes | bytearray):
        return common_pb2.ImageInput(encoded=bytes(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"arrays must be HxWx3 uint8 RGB, got {image.dtype} {image.shape}")
        h, w, _ = image.shape
        return common_pb2.ImageInput(raw=common_pb2.RawImage(data=image.tobytes(), height=h, width=w, channels=3))
    image = image.convert("RGB")
    if raw:
        return to_input(np.asarray(image))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return common_pb2.ImageInput(encoded=buf.getvalue())


def from_proto(msg: common_pb2.Image) -> tuple[Image.Image, np.ndarray]:
    """Image message -> (PIL image, codes [grid_h, grid_w] int64)."""
    im = Image.open(io.BytesIO(msg.png))
    im.load()
    codes = np.asarray(msg.codes, dtype=np.int64).reshape(msg.grid_height, msg.grid_width)
    return im, codes
