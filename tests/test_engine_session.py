"""Engine sessions (the explore task): later turns reuse the cached history and match a full recomputation."""

import threading

import pytest
import torch
from tiny import camera_image

from model.engine import Finished, GenerationRequest, ImageFinished, ImageProgress, load_engine
from model.prompts import task_prompt
from model.sampling import SamplingParams
from model.sequence import image_string

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def engine(bundle):
    return load_engine(bundle.model, bundle.tokenizer, bundle.vision_tokenizer, max_len=512)


def test_second_turn_equals_full_recomputation(engine):
    tok, lm = engine.tok, engine.lm
    req = GenerationRequest(
        task="explore",
        question="a kitchen",
        images=[camera_image()],
        text_sampling=GREEDY,
        cfg_scale=1.0,
        max_new_tokens=12,
    )
    s = engine.session(req)
    first = list(s.turn())[-1]
    second = list(s.turn("turn left"))[-1]
    assert isinstance(second, Finished) and second.generated_tokens >= 3
    codes = engine.encode_images([camera_image()], lm.config.image_area)
    prompt1 = tok.encode(task_prompt("explore", "a kitchen", [image_string(tok, codes[0])]))
    turn2 = tok.encode(" USER: turn left ASSISTANT: <|extra_100|>")
    assert second.prompt_tokens == 1 + len(turn2)  # only the new tokens are prefilled
    history = prompt1 + first.token_ids + turn2
    assert s.context_tokens == len(history) + len(second.token_ids)
    with torch.no_grad():
        logits = lm(torch.tensor([history + second.token_ids])).logits[0]
    for i, t in enumerate(second.token_ids):
        if t == tok.boi_id:
            break
        scores = logits[len(history) + i - 1].clone()
        scores[engine._text_mask] = float("-inf")
        assert t == int(scores.argmax()), f"token {i} of the second turn"


def test_turns_with_cfg_make_views_and_a_cancelled_turn_is_rolled_back(engine):
    tok = engine.tok
    req = GenerationRequest(
        task="explore",
        question="a garden",
        images=[camera_image(1)],
        image_size=(3, 3),
        max_new_tokens=40,
        seed=4,
        logit_bias={tok.boi_id: 50.0},
    )
    s = engine.session(req)
    ev = list(s.turn())
    assert any(isinstance(e, ImageFinished) for e in ev)
    used = s.context_tokens
    cancel = threading.Event()
    for e in s.turn("move forward", cancel=cancel):
        if isinstance(e, ImageProgress):
            cancel.set()
    assert e.reason == "cancelled" and s.context_tokens == used and s.turns == 1
    ev = list(s.turn("move forward"))
    views = [e for e in ev if isinstance(e, ImageFinished)]
    assert views and all(v.codes.shape == (3, 3) for v in views) and s.turns == 2 and s.context_tokens > used
    with pytest.raises(ValueError, match="needs one"):
        list(s.turn())


def test_session_context_full_is_a_clear_error(engine):
    no_stop = {engine.tok.eos_id: -100.0, engine.tok.boi_id: -100.0}
    req = GenerationRequest(task="explore", question="x", cfg_scale=1.0, max_new_tokens=600, logit_bias=no_stop)
    s = engine.session(req)
    assert list(s.turn())[-1].reason == "length" and s.context_tokens == engine.max_len
    with pytest.raises(ValueError, match="session context full"):
        list(s.turn("go on"))
