"""The generation engine on a tiny random checkpoint: grammar, CFG, determinism, cancellation, templates, results."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import camera_image

from model import Emu35, ImageSegment, TextTokenizer, VisionTokenizer, encode_image, parse_stream
from model.engine import (
    Engine,
    Finished,
    GenerationRequest,
    ImageFinished,
    ImageProgress,
    ImageStarted,
    TextDelta,
)
from model.prompts import TASKS, task_prompt, unconditional_prompt
from model.results import collect, save_result
from model.sampling import SamplingParams, cfg_combine, sample
from model.sequence import image_string

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def engine(bundle):
    lm = Emu35.from_pretrained(bundle.model, dtype=torch.float32)
    return Engine(
        lm,
        TextTokenizer.from_pretrained(bundle.tokenizer),
        VisionTokenizer.from_pretrained(bundle.vision_tokenizer),
        max_len=1024,
    )


def run(engine, **kw):
    kw.setdefault("task", "vla")
    kw.setdefault("question", "put the red block in the bowl")
    return list(engine.generate(GenerationRequest(**kw)))


def images_in(engine, events):
    fin = events[-1]
    assert isinstance(fin, Finished)
    return fin, [s for s in parse_stream(engine.tok, fin.token_ids) if isinstance(s, ImageSegment)]


@pytest.mark.parametrize(
    "kw,grid",
    [
        (dict(image_size=(2, 3)), (2, 3)),
        (dict(image_size=(5, 1)), (5, 1)),
        (dict(aspect_ratio="16:9"), (3, 5)),
        (dict(aspect_ratio="3:4"), (5, 3)),
        (dict(), None),
    ],
)
def test_every_image_is_well_formed(engine, kw, grid):
    tok = engine.tok
    n = 140 if grid else 400
    ev = run(
        engine, images=[camera_image(size=(96, 64))], max_new_tokens=n, seed=3, logit_bias={tok.boi_id: 50.0}, **kw
    )
    fin, segs = images_in(engine, ev)
    done = [e for e in ev if isinstance(e, ImageFinished)]
    started = [e for e in ev if isinstance(e, ImageStarted)]
    assert done and len(started) == sum(s.w is not None for s in segs)  # the last may be cut inside its header
    for e, s in zip(done, segs):
        assert s.complete and s.codes.shape == e.codes.shape and np.array_equal(s.codes, e.codes)
        assert grid is None or e.codes.shape == grid
        assert e.image.size == (e.codes.shape[1] * 16, e.codes.shape[0] * 16)
        assert e.codes.min() >= 0 and e.codes.max() < engine.vq.config.n_embed
    if grid is None:  # auto size: the first image fixes the size of later ones
        assert len({e.codes.shape for e in done}) == 1
    # 'length' cut the last image: it is reported incomplete, never finished
    assert fin.reason == "length" and fin.incomplete_image == (not segs[-1].complete)
    assert len(done) == sum(s.complete for s in segs)
    progress = [e for e in ev if isinstance(e, ImageProgress) and e.index == 0]
    assert [p.rows_done for p in progress] == list(range(1, done[0].codes.shape[0])) + [done[0].codes.shape[0]]


def test_cfg_formula():
    cond, uncond = torch.randn(3, 50), torch.randn(3, 50)
    lc, lu = torch.log_softmax(cond, -1), torch.log_softmax(uncond, -1)
    torch.testing.assert_close(cfg_combine(cond, uncond, 3.0), lu + 3.0 * (lc - lu))
    torch.testing.assert_close(cfg_combine(cond, uncond, 1.0), lc)


def test_batched_cfg_equals_separate_forwards(engine):
    """Every image token equals greedy CFG over two separate full forwards: the conditional stream (prompt + all
    generated tokens) and the unconditional one (unconditional prompt + only the BOI..EOI tokens generated)."""
    tok, lm = engine.tok, engine.lm
    ref = camera_image(1, size=(96, 64))
    ev = run(
        engine,
        images=[ref],
        image_size=(2, 2),
        max_new_tokens=40,
        seed=5,
        image_sampling=GREEDY,
        cfg_scale=3.0,
        logit_bias={tok.boi_id: 4.0},
    )
    fin = ev[-1]
    gen = fin.token_ids
    codes = engine.encode_images([ref], lm.config.image_area)
    cond = tok.encode(task_prompt("vla", "put the red block in the bowl", [image_string(tok, codes[0])]))
    uncond = tok.encode(unconditional_prompt([image_string(tok, codes[0])]))
    with torch.no_grad():
        lc = lm(torch.tensor([cond + gen])).logits[0]
        uncond_seq, in_image, checked = list(uncond), False, 0
        for i, t in enumerate(gen):
            if tok.is_visual(t):
                lu = lm(torch.tensor([uncond_seq])).logits[0, -1]
                vis = engine.visual
                want = vis.start + int(cfg_combine(lc[len(cond) + i - 1, vis], lu[vis], 3.0).argmax())
                assert t == want, f"image token {i}"
                checked += 1
            in_image = in_image or t == tok.boi_id
            if in_image:
                uncond_seq.append(t)
            in_image = in_image and t != tok.eoi_id
    assert checked >= 4


def test_same_seed_same_output_and_other_seed_differs(engine):
    a = run(engine, task="story", question="a robot tidies a desk", max_new_tokens=30, seed=11, cfg_scale=1.0)
    b = run(engine, task="story", question="a robot tidies a desk", max_new_tokens=30, seed=11, cfg_scale=1.0)
    c = run(engine, task="story", question="a robot tidies a desk", max_new_tokens=30, seed=12, cfg_scale=1.0)
    assert a[-1].token_ids == b[-1].token_ids != c[-1].token_ids
    assert "".join(e.text for e in a if isinstance(e, TextDelta)) == engine.tok.decode(a[-1].token_ids)


def test_cancel_mid_image(engine):
    tok, cancel = engine.tok, threading.Event()
    events = []
    for e in engine.generate(
        GenerationRequest(task="t2i", question="a red cube", image_size=(6, 4), seed=1, logit_bias={tok.boi_id: 50.0}),
        cancel=cancel,
    ):
        events.append(e)
        if isinstance(e, ImageProgress) and e.rows_done == 2:
            cancel.set()
    fin = events[-1]
    assert fin.reason == "cancelled" and fin.incomplete_image
    assert not any(isinstance(e, ImageFinished) for e in events)
    assert fin.generated_tokens < 6 * 5 + 6
    # the engine is free again and still right
    assert run(engine, max_new_tokens=3, seed=1)[-1].generated_tokens == 3


@pytest.mark.parametrize("task", TASKS)
def test_task_templates_give_the_spec_ids(engine, task):
    tok = engine.tok
    q = "stack the red block on the blue block"
    assert task_prompt(task, q) == (
        f"<|extra_203|>You are a helpful assistant for {task} task. USER: {q} ASSISTANT: <|extra_100|>"
    )
    codes = [np.arange(6).reshape(2, 3), np.arange(4).reshape(1, 4)]
    ids = tok.encode(task_prompt(task, q, [image_string(tok, c) for c in codes]))
    head = tok.encode(f"<|extra_203|>You are a helpful assistant for {task} task. USER: {q}")
    tail = tok.encode(" ASSISTANT: <|extra_100|>")
    assert ids == head + encode_image(tok, codes[0]) + encode_image(tok, codes[1]) + tail
    assert ids[0] == tok.bos_id == tok.token_id("<|extra_203|>") and ids[-1] == tok.bss_id
    assert unconditional_prompt() == "<|extra_203|>You are a helpful assistant. USER:  ASSISTANT: <|extra_100|>"
    u = tok.encode(unconditional_prompt([image_string(tok, codes[0])]))
    assert u == tok.encode("<|extra_203|>You are a helpful assistant. USER: ") + encode_image(tok, codes[0]) + tail


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(task="dance"), "unknown task"),
        (dict(cfg_scale=0.5), "cfg_scale"),
        (dict(image_size=(0, 4)), "image_size"),
        (dict(aspect_ratio="5:1"), "aspect_ratio"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(text_sampling=SamplingParams(top_p=0.0)), "top_p"),
        (dict(logit_bias={10**9: 1.0}), "logit_bias"),
    ],
)
def test_bad_requests_are_named(engine, bad, match):
    with pytest.raises(ValueError, match=match):
        run(engine, **bad)


def test_sampling_respects_top_k_and_top_p():
    g = torch.Generator().manual_seed(0)
    scores = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]]).repeat(400, 1)
    picks = sample(scores, SamplingParams(top_k=2), g)
    assert set(picks.tolist()) == {0, 1}
    picks = sample(scores, SamplingParams(top_p=0.5), g)  # p(0) = 0.72 > 0.5: only token 0 is kept
    assert set(picks.tolist()) == {0}


def test_results_json_png_and_official_story(engine, tmp_path):
    from model.proto import interleave_story_pb2 as pb

    tok = engine.tok
    ev = run(
        engine,
        images=[camera_image(size=(96, 64))],
        image_size=(2, 2),
        max_new_tokens=60,
        seed=2,
        logit_bias={tok.boi_id: 3.0},
    )
    res = collect(ev, "vla", "q")
    assert len(res.images) == sum(isinstance(e, ImageFinished) for e in ev) >= 1
    out = save_result(res, tmp_path, reference_images=[camera_image(size=(96, 64))])
    assert (out / "image_000.png").is_file() and (out / "result.json").is_file()
    story = pb.Story.FromString((out / "story.pb").read_bytes())
    metas = [m for s in story.clips[0].segments for m in s.images]
    assert len(metas) == len(res.images) and metas[0].image.format == pb.PNG and story.question == "q"
    assert Image.open(__import__("io").BytesIO(metas[0].image.image_data)).size == res.images[0].image.size
    assert len(story.reference_images) == 1


def test_chain_of_thought_is_split_out():
    from model.results import _split_cot

    text, glob, local = _split_cot("<|extra_60|>plan: two steps<|extra_61|>Step 1<|extra_50|>red first<|extra_51|>")
    assert (text, glob, local) == ("Step 1", "plan: two steps", "red first")
