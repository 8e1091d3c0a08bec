"""sensor_msgs/Image and CompressedImage <-> numpy, with no ROS import.

Both front ends (the rclpy node and the DDS mode) hand their own message objects in: anything with the ROS field
names (`height`, `width`, `encoding`, `is_bigendian`, `step`, `data`; `format`, `data`) works, so rclpy messages,
cyclonedds IDL samples and the dataclasses below all map onto one implementation.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image as PILImage

# encoding -> (channels, numpy dtype of one channel); 8-bit first, then the 16-bit ones where is_bigendian matters
ENCODINGS: dict[str, tuple[int, str]] = {
    "rgb8": (3, "u1"),
    "bgr8": (3, "u1"),
    "rgba8": (4, "u1"),
    "bgra8": (4, "u1"),
    "mono8": (1, "u1"),
    "8UC1": (1, "u1"),
    "8UC3": (3, "u1"),
    "mono16": (1, "u2"),
    "16UC1": (1, "u2"),
}
COMPRESSED_FORMATS = ("jpeg", "png")


class ImageConversionError(ValueError):
    """An image message that cannot be converted; the message says which field is wrong."""


@dataclass
class Time:
    sec: int = 0
    nanosec: int = 0

    @classmethod
    def now(cls) -> Time:
        ns = time.time_ns()
        return cls(ns // 1_000_000_000, ns % 1_000_000_000)


@dataclass
class Header:
    stamp: Time = field(default_factory=Time)
    frame_id: str = ""


@dataclass
class ImageMsg:
    """sensor_msgs/Image with the same field names and meanings."""

    header: Header = field(default_factory=Header)
    height: int = 0
    width: int = 0
    encoding: str = ""
    is_bigendian: int = 0
    step: int = 0
    data: bytes = b""


@dataclass
class CompressedImageMsg:
    """sensor_msgs/CompressedImage: `format` is "jpeg", "png" or image_transport's "bgr8; jpeg compressed bgr8"."""

    header: Header = field(default_factory=Header)
    format: str = ""
    data: bytes = b""


def _bytes(data: Any) -> bytes:
    """rclpy gives array.array('B'), cyclonedds a list of ints, dataclasses bytes."""
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if hasattr(data, "tobytes"):
        return data.tobytes()
    return bytes(data)


def image_to_numpy(msg: Any) -> np.ndarray:
    """Image message -> HxW (one channel) or HxWxC array in the message's own channel order and dtype.

    Rows are read `step` bytes apart (row padding is dropped) and 16-bit data is byte-swapped as `is_bigendian` says.
    """
    enc = msg.encoding
    if enc not in ENCODINGS:
        raise ImageConversionError(f"unsupported encoding {enc!r}; supported: {', '.join(ENCODINGS)}")
    channels, kind = ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageConversionError(f"empty image: height={h} width={w}")
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    row = w * channels * dtype.itemsize
    if step < row:
        raise ImageConversionError(f"step {step} is less than width*channels*bytes = {row} for {enc}")
    data = _bytes(msg.data)
    if len(data) < step * (h - 1) + row:
        raise ImageConversionError(
            f"data has {len(data)} bytes, {enc} {h}x{w} with step {step} needs at least {step * (h - 1) + row}"
        )
    rows = np.lib.stride_tricks.as_strided(np.frombuffer(data, np.uint8), shape=(h, row), strides=(step, 1))
    arr = np.ascontiguousarray(rows).view(dtype).astype(dtype.newbyteorder("="))
    return arr.reshape(h, w) if channels == 1 else arr.reshape(h, w, channels)


def to_rgb8(arr: np.ndarray, encoding: str) -> np.ndarray:
    """A decoded image in `encoding` -> HxWx3 uint8 RGB, what the planner takes (16-bit keeps its high byte)."""
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if encoding.startswith("bgr"):
        arr = arr[:, :, 2::-1]
    return np.ascontiguousarray(arr[:, :, :3])


def image_to_rgb(msg: Any) -> np.ndarray:
    return to_rgb8(image_to_numpy(msg), msg.encoding)


def numpy_to_image(arr: np.ndarray, encoding: str = "rgb8", header: Header | None = None) -> ImageMsg:
    """HxW / HxWxC array already in `encoding`'s channel order -> ImageMsg (little-endian, no row padding)."""
    if encoding not in ENCODINGS:
        raise ImageConversionError(f"unsupported encoding {encoding!r}; supported: {', '.join(ENCODINGS)}")
    channels, kind = ENCODINGS[encoding]
    if arr.ndim != (2 if channels == 1 else 3) or (channels > 1 and arr.shape[2] != channels):
        want = "HxW" if channels == 1 else f"HxWx{channels}"
        raise ImageConversionError(f"{encoding} needs an array of shape {want}, got {arr.shape}")
    if arr.dtype != np.dtype(kind):
        raise ImageConversionError(f"{encoding} needs dtype {np.dtype(kind)}, got {arr.dtype}")
    h, w = arr.shape[:2]
    data = np.ascontiguousarray(arr, dtype=np.dtype(kind).newbyteorder("<")).tobytes()
    return ImageMsg(header or Header(), h, w, encoding, 0, w * channels * arr.dtype.itemsize, data)


def pil_to_image(im: PILImage.Image, header: Header | None = None) -> ImageMsg:
    """A key-frame (PIL) -> rgb8 ImageMsg, step = 3 * width."""
    return numpy_to_image(np.asarray(im.convert("RGB")), "rgb8", header)


def compressed_format(fmt: str) -> str:
    """'jpeg', 'png' or image_transport's 'rgb8; jpeg compressed bgr8' -> 'jpeg' / 'png'."""
    f = fmt.lower()
    for name, words in (("jpeg", ("jpeg", "jpg")), ("png", ("png",))):
        if any(w in f for w in words):
            return name
    raise ImageConversionError(f"unsupported compressed format {fmt!r}; supported: jpeg, png")


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """CompressedImage (jpeg/png) -> HxWx3 uint8 RGB."""
    kind = compressed_format(msg.format)
    data = _bytes(msg.data)
    try:
        im = PILImage.open(io.BytesIO(data))
        im.load()
    except Exception as e:
        raise ImageConversionError(f"cannot decode {kind} data ({len(data)} bytes): {e}") from e
    if im.format and im.format.lower() != kind:
        raise ImageConversionError(f"format says {kind} but the data is {im.format}")
    return np.asarray(im.convert("RGB"))


def numpy_to_compressed(arr: np.ndarray, fmt: str = "png", header: Header | None = None) -> CompressedImageMsg:
    """HxWx3 uint8 RGB -> CompressedImageMsg ('jpeg' or 'png')."""
    kind = compressed_format(fmt)
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format=kind.upper())
    return CompressedImageMsg(header or Header(), kind, buf.getvalue())


def any_to_rgb(msg: Any) -> np.ndarray:
    """Image or CompressedImage (told apart by its fields) -> HxWx3 uint8 RGB."""
    return compressed_to_rgb(msg) if hasattr(msg, "format") and not hasattr(msg, "encoding") else image_to_rgb(msg)
