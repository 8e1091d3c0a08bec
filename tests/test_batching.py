"""Continuous batching: requests joining and leaving a running batch decode what they decode alone."""

import threading

import pytest
import torch
from tiny import camera_image
from torch.utils._python_dispatch import TorchDispatchMode

from model import batching
from model.batching import BatchEngine
from model.engine import Finished, GenerationRequest, ImageFinished, load_engine
from model.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def engine(bundle):
    return load_engine(bundle.model, bundle.tokenizer, bundle.vision_tokenizer, max_len=512)


def requests(tok, **sampling):
    """Three requests of different shapes: CFG with a reference image, no CFG (one row), text-to-image."""
    return [
        GenerationRequest(task="vla", question="put the red block in the bowl", images=[camera_image()],
                          image_size=(2, 3), max_new_tokens=24, seed=3, logit_bias={tok.boi_id: 50.0}, **sampling),
        GenerationRequest(task="story", question="a robot tidies a desk", cfg_scale=1.0, max_new_tokens=40, seed=11,
                          logit_bias={tok.boi_id: 2.0}, **sampling),
        GenerationRequest(task="t2i", question="a red cube", image_size=(3, 2), max_new_tokens=30, seed=1,
                          logit_bias={tok.boi_id: 50.0}, **sampling),
    ]  # fmt: skip


class Sink:
    def __init__(self, i, order):
        self.i, self.order, self.events, self.done = i, order, [], False

    def emit(self, e):
        self.events.append(e)

    def finish(self):
        self.done = True
        self.order.append(self.i)


def staggered(engine, reqs, joins=(0, 5, 9), cancel_at=None, streams=4, lookahead=None, batches=None):
    """Request i joins after `joins[i]` batched steps; returns each request's events, the batch's peak size and the
    order in which the requests left (`batches`: a list the batch is appended to)."""
    batch, order = BatchEngine(engine, max_streams=streams, lookahead=lookahead), []
    if batches is not None:
        batches.append(batch)
    sinks, cancels = [Sink(i, order) for i in range(len(reqs))], [threading.Event() for _ in reqs]
    step = 0
    while not all(s.done for s in sinks):
        for i, r in enumerate(reqs):
            if joins[i] == step:
                batch.add(r, sinks[i].emit, sinks[i].finish, cancels[i])
        if cancel_at and step == cancel_at[1]:
            cancels[cancel_at[0]].set()
        batch.step()
        step += 1
    assert batch.active == 0 and sorted(batch.free) == list(range(streams))
    return [s.events for s in sinks], batch.peak, order


def summary(events):
    fin = events[-1]
    assert isinstance(fin, Finished)
    return fin.token_ids, fin.reason, [e.codes.tolist() for e in events if isinstance(e, ImageFinished)]


@pytest.mark.parametrize("sampling", [{}, dict(text_sampling=GREEDY, image_sampling=GREEDY)], ids=["sampled", "greedy"])
def test_joining_and_leaving_mid_decode_gives_the_solo_outputs(engine, sampling):
    """A decodes alone, B joins after 5 steps, C after 9; A leaves first. Each request's tokens, finish reason and
    images equal its solo `Engine.generate` run: the per-request logic is the same code, and on this float32 model the
    batched matmuls happen to round as the solo ones do (greedy is the variant robust to last-bit differences)."""
    reqs = requests(engine.tok, **sampling)
    alone = [summary(list(engine.generate(r))) for r in reqs]
    batched, peak, order = staggered(engine, requests(engine.tok, **sampling))
    assert peak == 3 and order[0] == 0
    assert [summary(ev) for ev in batched] == alone
    assert alone[0][2] and alone[2][2]  # images were generated (the grammar ran in the batch)


def test_cancel_in_a_batch_frees_the_rows_and_leaves_the_others_alone(engine):
    reqs = requests(engine.tok)
    alone = [summary(list(engine.generate(r))) for r in reqs]
    batched, _, _ = staggered(engine, requests(engine.tok), joins=(0, 0, 2), cancel_at=(1, 6))
    assert batched[1][-1].reason == "cancelled" and batched[1][-1].generated_tokens < 40
    assert summary(batched[1])[0] == alone[1][0][: batched[1][-1].generated_tokens]
    assert [summary(batched[i]) for i in (0, 2)] == [alone[0], alone[2]]


def test_bad_request_holds_nothing(engine):
    batch = BatchEngine(engine, max_streams=1)
    with pytest.raises(ValueError, match="unknown task"):
        batch.add(GenerationRequest(task="dance", question="x"), lambda e: None)
    assert batch.has_room() and batch.active == 0


def mixed(tok):
    """Five requests with different sampling: top-k and top-p cuts (drawn for two rows at once: the first two share
    their params), temperature, greedy; CFG and not; text and images; the fourth runs a Jacobi window."""
    cut = dict(text_sampling=SamplingParams(1.0, 20, 0.8), image_sampling=SamplingParams(0.9, 30, 0.9))
    return [
        GenerationRequest(task="vla", question="put the red block in the bowl", images=[camera_image()],
                          image_size=(2, 3), max_new_tokens=30, seed=5, logit_bias={tok.boi_id: 3.0}, **cut),
        GenerationRequest(task="story", question="a robot waters a plant", max_new_tokens=30, seed=6,
                          logit_bias={tok.boi_id: 3.0}, **cut),
        GenerationRequest(task="story", question="a robot opens a door", cfg_scale=1.0, max_new_tokens=30, seed=7,
                          text_sampling=SamplingParams(0.7, 0, 0.9)),
        GenerationRequest(task="t2i", question="a green cube", image_size=(3, 2), max_new_tokens=30, seed=8,
                          jacobi_window=3, image_sampling=SamplingParams(1.0, 40, 1.0), logit_bias={tok.boi_id: 50.0}),
        GenerationRequest(task="t2i", question="a red ball", image_size=(2, 2), cfg_scale=1.0, max_new_tokens=20,
                          text_sampling=GREEDY, image_sampling=GREEDY, logit_bias={tok.boi_id: 50.0}),
    ]  # fmt: skip


def test_mixed_sampling_params_and_a_jacobi_window_give_the_solo_outputs(engine, monkeypatch):
    """Requests with different sampling params, joining at different steps, decode exactly their solo tokens: a
    batch's draws share one top-k per group of rows with the same params, each row drawing from its own generator,
    and a request alone runs the same draw as a group of one."""
    alone = [summary(list(engine.generate(r))) for r in mixed(engine.tok)]
    groups = []

    def spy(draws, *sampler):
        groups.append(max(sum(d.params == e.params for e in draws) for d in draws))
        return draw_tokens(draws, *sampler)

    draw_tokens = batching.draw_tokens
    monkeypatch.setattr(batching, "draw_tokens", spy)
    batched, peak, _ = staggered(engine, mixed(engine.tok), joins=(0, 0, 3, 5, 8), streams=5)
    assert [summary(ev) for ev in batched] == alone
    assert peak >= 4 and max(groups) >= 2  # several rows were drawn as one group
    assert alone[0][2] and alone[3][2] and alone[4][2]  # images, the Jacobi one among them


class ScalarReads(TorchDispatchMode):
    """Counts reads of single tensor values back to the host (item, int, float, bool): on a GPU each waits for it.
    Not counted: those of the vision tokenizer's decode of a finished image (`paused`)."""

    n, paused = 0, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func is torch.ops.aten._local_scalar_dense.default and not self.paused
        return func(*args, **(kwargs or {}))


def test_a_batched_step_reads_its_tokens_back_at_once(engine, monkeypatch):
    """No request reads a sampled value on its own: every step's draws go to one `draw_tokens` call (one transfer)."""
    calls, reads = [], ScalarReads()

    def spy(draws, *sampler):
        calls.append(len(draws))
        return draw_tokens(draws, *sampler)

    def decode_pil(codes, decode=engine.vq.decode_pil):
        reads.paused = True
        try:
            return decode(codes)
        finally:
            reads.paused = False

    draw_tokens = batching.draw_tokens
    monkeypatch.setattr(batching, "draw_tokens", spy)
    monkeypatch.setattr(engine.vq, "decode_pil", decode_pil)
    reqs = [r for r in mixed(engine.tok) if not r.jacobi_window]  # a Jacobi window checks its drafts with own reads
    batch = BatchEngine(engine, max_streams=len(reqs))
    for r in reqs:
        batch.add(r, lambda e: None)
    calls.clear()
    steps = 0
    with reads:
        while batch.active:
            batch.step()
            steps += 1
    assert reads.n == 0 and len(calls) <= steps and max(calls) == len(reqs)


def image_requests(tok):
    """Three image requests that overlap inside their images: CFG with a reference image, CFG text-to-image, and one
    row without CFG cut by its token budget inside its image."""
    boi = {tok.boi_id: 50.0}
    return [
        GenerationRequest(task="vla", question="stack the blocks", images=[camera_image(1)], image_size=(3, 4),
                          max_new_tokens=22, seed=2, logit_bias=boi),
        GenerationRequest(task="t2i", question="a red cube", image_size=(4, 3), max_new_tokens=40, seed=1,
                          logit_bias=boi),
        GenerationRequest(task="t2i", question="a blue ball", image_size=(3, 4), cfg_scale=1.0, max_new_tokens=14,
                          seed=3, logit_bias=boi),
    ]  # fmt: skip


@pytest.mark.parametrize("joins", [(0, 0, 0), (0, 3, 6)], ids=["together", "staggered"])
def test_lookahead_in_a_batch_gives_the_solo_outputs(engine, joins):
    """With the lookahead the batch queues its next step before reading the tokens back whenever every request is
    inside an image; requests joining, leaving and stopping mid-image still decode their solo tokens."""
    alone = [summary(list(engine.generate(r))) for r in image_requests(engine.tok)]
    batches = []
    batched, peak, _ = staggered(engine, image_requests(engine.tok), joins=joins, lookahead=True, batches=batches)
    assert [summary(ev) for ev in batched] == alone and peak == 3
    assert batches[0].ahead_used >= 5  # queued steps were handed over


def test_lookahead_with_a_cancel_and_a_jacobi_window_in_the_batch(engine):
    reqs = image_requests(engine.tok)
    alone = [summary(list(engine.generate(r))) for r in reqs]
    batched, _, _ = staggered(engine, image_requests(engine.tok), joins=(0, 0, 1), cancel_at=(1, 8), lookahead=True)
    assert batched[1][-1].reason == "cancelled"
    assert summary(batched[1])[0] == alone[1][0][: batched[1][-1].generated_tokens]
    assert [summary(batched[i]) for i in (0, 2)] == [alone[0], alone[2]]
    alone = [summary(list(engine.generate(r))) for r in mixed(engine.tok)]
    batched, _, _ = staggered(engine, mixed(engine.tok), joins=(0, 0, 3, 5, 8), streams=5, lookahead=True)
    assert [summary(ev) for ev in batched] == alone


def test_the_batch_looks_ahead_by_default_where_its_steps_are_graphs(engine):
    """Default lookahead: as the engine's, where the batch's steps and draws are CUDA graphs (on in `serve` on a GPU);
    off on a CPU unless asked for, and never when the engine itself has it off."""
    from model.batching import BatchEngine

    assert not engine.cuda_graphs and not BatchEngine(engine).lookahead
    assert BatchEngine(engine, lookahead=True).lookahead
    assert not BatchEngine(engine, lookahead=False).lookahead
