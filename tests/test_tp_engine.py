"""Serving over two tensor-parallel CPU ranks (gloo): the leader's engine decodes what one unsharded engine decodes,
alone, in a continuous batch and in a session with a rolled-back turn; a dead rank is a clear error, not a hang."""

import threading

import pytest
import torch
from test_batching import requests, staggered, summary
from tiny import camera_image

from model.engine import Finished, GenerationRequest, load_engine
from model.sampling import SamplingParams
from model.tp_engine import start_tensor_parallel

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def single(bundle):
    return load_engine(bundle.model, bundle.tokenizer, bundle.vision_tokenizer, max_len=512)


def start(bundle):
    return start_tensor_parallel(bundle.model, bundle.tokenizer, bundle.vision_tokenizer, 2, max_len=512, threads=1)


@pytest.fixture
def tp(bundle):  # one tensor-parallel engine per process (it joins the default process group): one per test
    engine = start(bundle)
    yield engine
    engine.mirror.close()


def test_leader_holds_half_of_every_block(tp, single):
    a, b = tp.lm.model.layers[0].self_attn, single.lm.model.layers[0].self_attn
    assert (a.n_head, a.n_kv) == (b.n_head // 2, b.n_kv // 2)
    assert tp.lm.tensor_parallel == (0, 2) and len(tp.mirror.procs) == 1 and tp.mirror.procs[0].is_alive()


@pytest.mark.parametrize("sampling", [{}, dict(text_sampling=GREEDY, image_sampling=GREEDY)], ids=["sampled", "greedy"])
def test_generate_and_continuous_batching_equal_one_unsharded_engine(tp, single, sampling):
    torch.set_num_threads(1)
    alone = [summary(list(single.generate(r))) for r in requests(single.tok, **sampling)]
    assert [summary(list(tp.generate(r))) for r in requests(tp.tok, **sampling)] == alone
    batched, peak, _ = staggered(tp, requests(tp.tok, **sampling))  # B joins at step 5, C at 9, on the shards
    assert peak == 3 and [summary(ev) for ev in batched] == alone


def test_session_with_a_cancelled_turn_equals_one_unsharded_engine(tp, single):
    """The rollback edits the leader's valid mask only; the next call carries it to the other rank."""

    def run(engine):
        greedy = dict(text_sampling=GREEDY, image_sampling=GREEDY)
        req = GenerationRequest(task="explore", question="a garden", images=[camera_image(1)], cfg_scale=2.0,
                                image_size=(2, 2), max_new_tokens=16, seed=0, **greedy)  # fmt: skip
        s = engine.session(req)
        out = [list(s.turn())[-1].token_ids]
        cancel = threading.Event()
        events = []
        for e in s.turn("move forward", cancel=cancel):
            events.append(e)
            cancel.set()
        assert isinstance(events[-1], Finished) and events[-1].reason == "cancelled"
        out.append(list(s.turn("turn left"))[-1].token_ids)
        return out, s.context_tokens

    assert run(tp) == run(single)


def test_an_error_inside_a_call_stops_the_group_instead_of_running_out_of_step(tp):
    """Rank 0 fails inside a forward (as out of memory would) after rank 1 started the same call: rank 1 is stopped
    and every later request is refused with the reason, instead of pairing its all-reduces with a stale call."""
    broken = []
    tp.mirror.on_broken = broken.append
    real = tp.lm.forward

    def oom(*a, **k):
        raise torch.OutOfMemoryError("simulated")

    tp.lm.forward = oom
    with pytest.raises(torch.OutOfMemoryError):
        list(tp.generate(GenerationRequest(task="vla", question="x", max_new_tokens=2, seed=0)))
    tp.lm.forward = real
    assert broken and "OutOfMemoryError on rank 0" in broken[0]
    assert not tp.mirror.procs[0].is_alive()
    with pytest.raises(RuntimeError, match="failed earlier .*OutOfMemoryError"):
        list(tp.generate(GenerationRequest(task="vla", question="x", max_new_tokens=2, seed=0)))


def test_a_second_group_and_a_dead_rank_are_clear_errors(tp, bundle):
    with pytest.raises(RuntimeError, match="already in a process group"):
        start(bundle)
    proc = tp.mirror.procs[0]
    proc.kill()
    proc.join(10)
    with pytest.raises(RuntimeError, match="tensor-parallel rank 1 is gone"):
        list(tp.generate(GenerationRequest(task="vla", question="x", max_new_tokens=2, seed=0)))


def test_jacobi_windows_run_on_the_shards(tp, single):
    """A Jacobi window is one forward of many tokens per row: mirrored like any other call."""
    greedy = dict(text_sampling=GREEDY, image_sampling=GREEDY, jacobi_window=3)
    req = [r for r in requests(single.tok, **greedy) if r.task != "story"]
    assert [summary(list(tp.generate(r))) for r in req] == [summary(list(single.generate(r))) for r in req]


def test_lookahead_steps_broadcast_their_ids_to_the_other_rank(bundle, single, monkeypatch):
    """start_tensor_parallel(tp_lookahead=True): the leader queues image steps before reading their tokens and the
    ids reach the other rank by a broadcast; the tokens are those of one unsharded engine."""

    eng = start_tensor_parallel(bundle.model, bundle.tokenizer, bundle.vision_tokenizer, 2, max_len=512, threads=1,
                                tp_lookahead=True, lookahead=True)  # fmt: skip
    try:
        assert eng.can_look_ahead()
        ahead = []
        inner = eng._draw_ahead
        monkeypatch.setattr(eng, "_draw_ahead", lambda *a, **kw: ahead.append(1) or inner(*a, **kw))
        boi = {single.tok.boi_id: 50.0}
        reqs = [GenerationRequest(task="t2i", question="a red cube", image_size=(3, 4), seed=1, logit_bias=boi),
                GenerationRequest(task="vla", question="stack", images=[camera_image()], image_size=(3, 3), seed=2,
                                  max_new_tokens=14, logit_bias=boi)]  # fmt: skip
        assert [summary(list(eng.generate(r))) for r in reqs] == [summary(list(single.generate(r))) for r in reqs]
        assert len(ahead) >= 10
    finally:
        eng.mirror.close()
