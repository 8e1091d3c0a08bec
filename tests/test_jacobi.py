"""Speculative Jacobi decoding: greedy output is unchanged, sampled output keeps its distribution, in fewer forwards."""

from collections import Counter

import pytest
import torch
from tiny import camera_image

from model.batching import BatchEngine
from model.engine import Finished, GenerationRequest, ImageFinished, load_engine
from model.jacobi import accept
from model.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def engine(bundle):
    torch.set_num_threads(1)
    return load_engine(bundle.model, bundle.tokenizer, bundle.vision_tokenizer, max_len=512)


def test_accept_keeps_the_target_distribution():
    """Drafts drawn from q, checked against p: position 0 is distributed as p[0] and, once draft 0 is accepted,
    position 1 as p[1]; a forced position passes untested. (Fixed seed: the counts are the same every run.)"""
    g = torch.Generator().manual_seed(0)
    V, n = 5, 20000
    p = torch.softmax(torch.randn(3, V, generator=g) * 2, -1)
    q = torch.softmax(torch.randn(2, V, generator=g) * 2, -1)
    first, second = Counter(), Counter()
    for _ in range(n):
        d = torch.multinomial(q, 1, generator=g)[:, 0].tolist()
        a, x = accept(p, q, d, [False, False, False], g)
        decided = d[:a] + [x]
        first[decided[0]] += 1
        if a >= 1:
            second[decided[1]] += 1
    for counts, target in ((first, p[0]), (second, p[1])):
        freq = torch.tensor([counts[i] for i in range(V)], dtype=torch.float) / sum(counts.values())
        assert (freq - target).abs().sum() / 2 < 0.02, (freq, target)  # total variation
    assert sum(second.values()) > 0.2 * n  # drafts were accepted
    assert accept(p, q, [0, 0], [True, True, True], g) == (2, None)  # forced: accepted, and the next one is forced


def run(engine, req, window):
    req.jacobi_window = window
    events = list(engine.generate(req))
    fin = events[-1]
    assert isinstance(fin, Finished)
    return fin, [e.codes.tolist() for e in events if isinstance(e, ImageFinished)]


def vla(tok, **kw):
    return GenerationRequest(task="vla", question="put the red block in the bowl", images=[camera_image()],
                             image_size=(3, 4), max_new_tokens=60, seed=3, logit_bias={tok.boi_id: 50.0},
                             **kw)  # fmt: skip


@pytest.mark.parametrize("window", [1, 3, 64])
@pytest.mark.parametrize("cfg", [3.0, 1.0], ids=["cfg", "no-cfg"])
def test_greedy_jacobi_decodes_exactly_what_one_token_at_a_time_does(engine, window, cfg):
    greedy = dict(text_sampling=GREEDY, image_sampling=GREEDY, cfg_scale=cfg)
    plain, images = run(engine, vla(engine.tok, **greedy), 0)
    fast, fast_images = run(engine, vla(engine.tok, **greedy), window)
    assert fast.token_ids == plain.token_ids and fast_images == images and len(images) >= 2
    assert fast.reason == plain.reason
    assert fast.timings["decode_forwards"] < plain.timings["decode_forwards"]  # row ends at least ride along


def test_sampled_jacobi_keeps_the_joint_distribution_of_image_tokens(engine):
    """The first two tokens of a 1x2 image (top-2 sampling: 4 outcomes), over 300 seeds, decoded one token at a time
    and with Jacobi windows: the same distribution (total variation well under the difference between seeds)."""
    tok = engine.tok
    top2 = SamplingParams(temperature=1.0, top_k=2)

    def pairs(window):
        out = Counter()
        for seed in range(300):
            bias = {tok.boi_id: 50.0}
            req = GenerationRequest(task="t2i", question="a red cube", image_size=(1, 2), image_sampling=top2,
                                    cfg_scale=2.0, max_new_tokens=8, seed=seed, logit_bias=bias)  # fmt: skip
            _, images = run(engine, req, window)
            out[tuple(images[0][0])] += 1
        return out

    plain, fast = pairs(0), pairs(2)
    keys = set(plain) | set(fast)
    assert len(keys) >= 3  # not a degenerate distribution
    tv = sum(abs(plain[k] - fast[k]) for k in keys) / 2 / 300
    assert tv < 0.1, (plain, fast)


def test_sampled_jacobi_is_reproducible_and_session_turns_use_it(engine):
    req = vla(engine.tok)
    a, b = run(engine, vla(engine.tok), 4), run(engine, vla(engine.tok), 4)
    assert a[0].token_ids == b[0].token_ids and a[1] == b[1]
    assert all(len(img) == 3 and len(img[0]) == 4 for img in a[1])
    req = GenerationRequest(task="explore", question="a kitchen", images=[camera_image()], image_size=(2, 3),
                            text_sampling=GREEDY, image_sampling=GREEDY, max_new_tokens=30, jacobi_window=4,
                            logit_bias={engine.tok.boi_id: 50.0})  # fmt: skip
    s = engine.session(req)
    first = list(s.turn())[-1]
    second = list(s.turn("move forward"))[-1]
    assert first.image_tokens and second.image_tokens
    assert first.timings["decode_forwards"] < first.generated_tokens - 1


def test_window_is_validated(engine):
    for bad in (-1, 65, True):
        with pytest.raises(ValueError, match="jacobi_window must be an integer in"):
            list(engine.generate(vla(engine.tok, jacobi_window=bad)))


@pytest.mark.parametrize("max_step_tokens", [128, 12], ids=["windows-fit", "windows-capped"])
def test_jacobi_requests_in_a_continuous_batch_decode_what_they_decode_alone(engine, max_step_tokens):
    """Windows of different lengths and one-token steps share one forward (shorter rows repeat their last token);
    requests join mid-decode. Greedy, so float rounding between batch shapes cannot flip a sample. With rows x
    tokens capped at 12 (6 rows: windows of 1) the tokens are the same and the windowed request takes more forwards."""
    greedy = dict(text_sampling=GREEDY, image_sampling=GREEDY)
    reqs = [vla(engine.tok, jacobi_window=4, **greedy), vla(engine.tok, jacobi_window=0, **greedy),
            vla(engine.tok, jacobi_window=16, cfg_scale=1.0, **greedy)]  # fmt: skip
    solo = [list(engine.generate(r))[-1] for r in reqs]
    alone = [f.token_ids for f in solo]
    batch, out = BatchEngine(engine, max_streams=3, max_step_tokens=max_step_tokens), {}
    step = 0
    while step < 3 or batch.active:
        if step < 3:
            batch.add(reqs[step], lambda e, i=step: out.__setitem__(i, e))
        batch.step()
        step += 1
    assert [out[i].token_ids for i in range(3)] == alone
    capped = out[2].timings["decode_forwards"] > solo[2].timings["decode_forwards"]
    assert capped == (max_step_tokens == 12)
