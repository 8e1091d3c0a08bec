"""The engine's lookahead (each image step queued before its token is read back): the same tokens as without it, in
whole images, images cut off by the token budget, sessions and cancellations, and used where it should be."""

import contextlib
import threading

import numpy as np
import pytest
from tiny import camera_image

from model.engine import Finished, GenerationRequest, ImageFinished, ImageProgress, load_engine


@pytest.fixture(scope="module")
def engine(bundle):
    return load_engine(bundle.model, bundle.tokenizer, bundle.vision_tokenizer, max_len=512)


@pytest.fixture
def counted(engine, monkeypatch):
    """How many draws went through `_draw_ahead` (the engine's own method, counted and run as it is)."""
    calls = []
    inner = engine._draw_ahead

    def draw_ahead(*a, **kw):
        calls.append(1)
        return inner(*a, **kw)

    monkeypatch.setattr(engine, "_draw_ahead", draw_ahead)
    return calls


@contextlib.contextmanager
def lookahead_set(engine, on: bool):
    """The module's engine with its lookahead on or off, restored after."""
    was, engine.lookahead = engine.lookahead, on
    try:
        yield engine
    finally:
        engine.lookahead = was


def tokens(engine, lookahead: bool, **kw) -> list:
    with lookahead_set(engine, lookahead):
        return list(engine.generate(GenerationRequest(**kw)))


@pytest.mark.parametrize(
    "kw",
    [
        dict(task="t2i", question="a red cube", image_size=(4, 3), seed=1),  # CFG, sampled: a whole image
        dict(task="x2i", question="make it blue", image_size=(3, 5), seed=2, cfg_scale=1.0),  # one row
        dict(task="vla", question="stack the blocks", image_size=(3, 3), seed=3, max_new_tokens=14),  # cut mid-image
    ],
)
def test_same_tokens_and_events_as_without_lookahead(engine, counted, kw):
    kw = dict(kw, images=[camera_image()], logit_bias={engine.tok.boi_id: 50.0})
    off = tokens(engine, False, **kw)
    assert not counted
    on = tokens(engine, True, **kw)
    assert counted  # the image's draws went ahead
    assert on[-1].token_ids == off[-1].token_ids and on[-1].reason == off[-1].reason
    assert [type(e) for e in on] == [type(e) for e in off]
    for a, b in zip(on, off):
        if isinstance(a, ImageFinished):
            assert np.array_equal(a.codes, b.codes)


def test_text_draws_and_jacobi_windows_do_not_go_ahead(engine, counted):
    tokens(engine, True, task="story", question="a robot tidies a desk", max_new_tokens=12, seed=5, cfg_scale=1.0)
    assert not counted
    kw = dict(task="t2i", question="a cube", image_size=(3, 4), seed=6, logit_bias={engine.tok.boi_id: 50.0})
    assert (
        tokens(engine, True, jacobi_window=3, **kw)[-1].token_ids
        == tokens(engine, False, jacobi_window=3, **kw)[-1].token_ids
    )
    assert not counted


def test_session_turns_after_a_cut_and_a_cancel_match(engine):
    """A turn cut inside an image leaves a step queued for a token never fed; the next turns must not see it."""

    def walk(lookahead: bool) -> list:
        with lookahead_set(engine, lookahead):
            req = GenerationRequest(
                task="explore",
                question="a garden",
                images=[camera_image(1)],
                image_size=(3, 3),
                max_new_tokens=9,
                seed=4,
                logit_bias={engine.tok.boi_id: 50.0},
            )
            s = engine.session(req)
            out = [list(s.turn())[-1].token_ids]  # stops inside its view
            cancel = threading.Event()
            for e in s.turn("move forward", cancel=cancel):
                if isinstance(e, ImageProgress):
                    cancel.set()
            out.append(e.reason)
            last = list(s.turn("turn left"))[-1]
            assert isinstance(last, Finished)
            return out + [last.token_ids, s.context_tokens]

    assert walk(True) == walk(False)
