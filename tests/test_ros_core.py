"""ros_bridge core: image message <-> numpy for every supported encoding, row padding, endianness, errors; goals."""

import io
import json

import numpy as np
import pytest
from PIL import Image as PILImage

from ros_bridge.core import PlanGoal, make_options
from ros_bridge.images import (
    CompressedImageMsg,
    ImageConversionError,
    ImageMsg,
    any_to_rgb,
    compressed_to_rgb,
    image_to_numpy,
    image_to_rgb,
    numpy_to_compressed,
    numpy_to_image,
)

RGB = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)


def padded(rows: np.ndarray, pad: int) -> bytes:
    """Rows of raw bytes with `pad` junk bytes after each, as drivers with aligned strides publish."""
    h = rows.shape[0]
    flat = rows.reshape(h, -1)
    return np.concatenate([flat, np.full((h, pad), 0xAB, np.uint8)], axis=1).tobytes()


@pytest.mark.parametrize(
    "encoding, pixels",
    [
        ("rgb8", RGB),
        ("bgr8", RGB[:, :, ::-1]),
        ("rgba8", np.concatenate([RGB, np.full((5, 7, 1), 9, np.uint8)], axis=2)),
        ("bgra8", np.concatenate([RGB[:, :, ::-1], np.full((5, 7, 1), 9, np.uint8)], axis=2)),
    ],
)
@pytest.mark.parametrize("pad", [0, 3])
def test_color_encodings_with_row_padding(encoding, pixels, pad):
    c = pixels.shape[2]
    msg = ImageMsg(height=5, width=7, encoding=encoding, step=7 * c + pad, data=padded(pixels, pad))
    assert (image_to_numpy(msg) == pixels).all()
    assert (image_to_rgb(msg) == RGB).all()
    back = numpy_to_image(np.ascontiguousarray(pixels), encoding)
    assert back.step == 7 * c and len(back.data) == 5 * 7 * c and (image_to_rgb(back) == RGB).all()


def test_mono8_becomes_grey_rgb():
    g = RGB[:, :, 0]
    msg = ImageMsg(height=5, width=7, encoding="mono8", step=8, data=padded(g, 1))
    assert (image_to_numpy(msg) == g).all()
    assert (image_to_rgb(msg) == np.repeat(g[:, :, None], 3, axis=2)).all()


@pytest.mark.parametrize("big", [0, 1])
def test_mono16_honours_is_bigendian(big):
    v = np.arange(35, dtype=np.uint16).reshape(5, 7) * 1871
    data = padded(v.astype(">u2" if big else "<u2").view(np.uint8), 2)
    msg = ImageMsg(height=5, width=7, encoding="mono16", is_bigendian=big, step=16, data=data)
    assert (image_to_numpy(msg) == v).all()
    assert (image_to_rgb(msg)[:, :, 1] == (v >> 8)).all()


def test_rclpy_and_cyclonedds_data_containers():
    import array

    raw = RGB.tobytes()
    for data in (array.array("B", raw), list(raw), bytearray(raw)):  # rclpy, cyclonedds, others
        msg = ImageMsg(height=5, width=7, encoding="rgb8", step=21, data=data)
        assert (image_to_rgb(msg) == RGB).all()


@pytest.mark.parametrize("fmt", ["png", "jpeg", "bgr8; jpeg compressed bgr8", "rgb8; png compressed rgb8"])
def test_compressed(fmt):
    msg = numpy_to_compressed(RGB, fmt)
    out = compressed_to_rgb(msg)
    assert out.shape == RGB.shape
    if "png" in fmt:
        assert (out == RGB).all() and (any_to_rgb(msg) == RGB).all()


@pytest.mark.parametrize(
    "msg, error",
    [
        (ImageMsg(height=2, width=2, encoding="bayer_rggb8", step=2, data=b"\0" * 4), "unsupported encoding"),
        (ImageMsg(height=2, width=2, encoding="32FC1", step=8, data=b"\0" * 16), "unsupported encoding"),
        (ImageMsg(height=2, width=2, encoding="rgb8", step=5, data=b"\0" * 12), "step 5 is less than"),
        (ImageMsg(height=2, width=2, encoding="rgb8", step=6, data=b"\0" * 11), "data has 11 bytes"),
        (ImageMsg(height=0, width=2, encoding="rgb8", step=6, data=b""), "empty image"),
        (CompressedImageMsg(format="tiff", data=b"II*\0"), "unsupported compressed format"),
        (CompressedImageMsg(format="jpeg", data=b"not a jpeg"), "cannot decode jpeg"),
    ],
)
def test_errors_name_the_problem(msg, error):
    with pytest.raises(ImageConversionError, match=error):
        any_to_rgb(msg)


def test_compressed_format_must_match_the_data():
    buf = io.BytesIO()
    PILImage.fromarray(RGB).save(buf, format="PNG")
    with pytest.raises(ImageConversionError, match="format says jpeg but the data is PNG"):
        compressed_to_rgb(CompressedImageMsg(format="jpeg", data=buf.getvalue()))


def test_numpy_to_image_checks_shape_and_dtype():
    with pytest.raises(ImageConversionError, match="HxWx4"):
        numpy_to_image(RGB, "rgba8")
    with pytest.raises(ImageConversionError, match="dtype uint16"):
        numpy_to_image(RGB[:, :, 0], "mono16")


def test_goal_to_request_options():
    o = make_options('{"image_size": [4, 6], "cfg_scale": 2.5, "logit_bias": {"7": -3}, "seed": 4}', seed=9)
    assert o.image_size == (4, 6) and o.cfg_scale == 2.5 and o.logit_bias == {7: -3.0} and o.seed == 9
    assert make_options("", seed=-1).seed is None
    proto = make_options({"text_sampling": {"temperature": 0.5, "top_k": 8}}).to_proto()
    assert proto.text_sampling.top_k == 8
    with pytest.raises(ValueError, match="unknown option"):
        make_options({"temprature": 1})


def test_plan_goal_from_ros_fields_and_json():
    class Goal:  # the field names of emu35_robot_interfaces/action/Plan's goal
        instruction, max_subgoals, seed, options_json = "open the drawer", 3, 5, '{"image_size": [2, 2]}'
        images = [numpy_to_image(RGB[:, :, ::-1].copy(), "bgr8")]

    g = PlanGoal.from_msg(Goal())
    assert g.max_subgoals == 3 and g.options.seed == 5 and (g.images[0] == RGB).all()
    Goal.images = []
    with pytest.raises(ValueError, match="no camera topic"):
        PlanGoal.from_msg(Goal())
    with pytest.raises(ValueError, match="non-empty"):
        PlanGoal.from_json(json.dumps({"instruction": " "}))
    with pytest.raises(TimeoutError, match="no camera frame"):
        from ros_bridge.core import LatestFrame

        PlanGoal.from_json(json.dumps({"instruction": "go"}), LatestFrame(), timeout=0.01)
