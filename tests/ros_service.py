"""Fixtures shared by the ROS bridge tests: the tiny random model behind a real gRPC server on 127.0.0.1."""

import pytest

from emu35_robot import Limits, PlannerServer
from emu35_robot.servicers import ModelInfo
from model.engine import load_engine


@pytest.fixture(scope="module")
def engine(bundle):
    return load_engine(bundle.model, bundle.tokenizer, bundle.vision_tokenizer, max_len=2048)


@pytest.fixture(scope="module")
def server(engine, bundle):
    s = PlannerServer(port=0, host="127.0.0.1", limits=Limits(), grace_s=2).start()
    s.attach(engine, ModelInfo("tiny-random", str(bundle.model), True, "float32", 0))
    yield s
    s.stop(0)


def keyframe_options(engine, size=(3, 3), max_new_tokens=300) -> dict:
    """JSON options that make the random model open an image at once, so plans carry key-frames."""
    return {
        "image_size": list(size),
        "seed": 1,
        "max_new_tokens": max_new_tokens,
        "logit_bias": {engine.tok.boi_id: 50.0},
    }


def endless_options(engine) -> dict:
    """Text that never stops by itself (EOS and BOI suppressed): something to cancel."""
    return {"seed": 2, "cfg_scale": 1.0, "max_new_tokens": 2000,
            "logit_bias": {engine.tok.eos_id: -100.0, engine.tok.boi_id: -100.0}}  # fmt: skip
