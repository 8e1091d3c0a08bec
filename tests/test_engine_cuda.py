"""GPU-only paths (CUDA graphs, fused kernels); skipped without CUDA, run on the device machine."""

import pytest
import torch

from model import Emu35, TextTokenizer, VisionTokenizer
from model.engine import Engine, GenerationRequest

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def engine(bundle, **kw):
    lm = Emu35.from_pretrained(bundle.model, dtype=torch.float32, device="cuda")
    vq = VisionTokenizer.from_pretrained(bundle.vision_tokenizer, device="cuda")
    return Engine(lm, TextTokenizer.from_pretrained(bundle.tokenizer), vq, max_len=2048, graph_bucket=256, **kw)


def tokens(eng, seed):
    tok = eng.tok
    req = GenerationRequest(
        task="vla",
        question="pick up the cube",
        image_size=(3, 4),
        max_new_tokens=300,
        seed=seed,
        logit_bias={tok.boi_id: 2.0, tok.eos_id: -100.0},  # no early EOS: cross a KV bucket
    )
    return list(eng.generate(req))[-1].token_ids


def test_graph_steps_equal_eager_steps(bundle):
    eager, graphs = engine(bundle, cuda_graphs=False), engine(bundle, cuda_graphs=True)
    a, b = tokens(eager, 7), tokens(graphs, 7)
    assert len(a) == 300  # crosses a KV bucket: several graphs captured
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    assert first is None, f"eager and graph decoding differ first at token {first}"
    assert len(graphs._graphs) >= 2


def test_lookahead_with_graphs_keeps_the_tokens_and_goes_ahead(bundle, monkeypatch):
    """On the GPU the draw-ahead really is asynchronous (pinned read-back, an event): same tokens, sampled with CFG,
    across KV buckets, and image draws do go ahead."""
    eng = engine(bundle, cuda_graphs=True)
    assert eng.lookahead  # the default with graphs
    ahead = []
    inner = eng._draw_ahead
    monkeypatch.setattr(eng, "_draw_ahead", lambda *a, **kw: ahead.append(1) or inner(*a, **kw))
    a = tokens(eng, 9)
    eng.lookahead = False
    n, b = len(ahead), tokens(eng, 9)
    assert n > 0 and len(ahead) == n
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    assert first is None and len(a) == 300, f"lookahead changed token {first}"


def test_compiled_kernels_match_eager(bundle):
    eng = engine(bundle, cuda_graphs=False)
    ids = torch.randint(0, eng.lm.config.vocab_size, (2, 33), device="cuda")
    with torch.no_grad():
        ref = eng.lm(ids).logits
        engine(bundle, cuda_graphs=True, compile_kernels=True)
        out = eng.lm(ids).logits
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    from model import transformer

    for name, fn in list(transformer.KERNELS.items()):  # leave the module as other tests expect it
        transformer.KERNELS[name] = getattr(fn, "_torchdynamo_orig_callable", fn)


def test_fp8_scaled_mm_matches_the_emulated_numbers():
    from model.fp8 import Fp8Linear, scaled_mm_available

    if not scaled_mm_available(torch.device("cuda")):
        pytest.skip("torch._scaled_mm needs compute capability 8.9+ (Ada/Hopper)")
    lin = torch.nn.Linear(512, 384, bias=False, device="cuda", dtype=torch.bfloat16)
    f = Fp8Linear(lin)
    x = torch.randn(3, 512, device="cuda", dtype=torch.bfloat16)
    fast = f(x)
    f.use_scaled_mm = False
    emulated = f(x)
    assert fast.dtype == torch.bfloat16 and fast.shape == (3, 384)
    torch.testing.assert_close(fast.float(), emulated.float(), atol=2e-2, rtol=2e-2)


def test_jacobi_windows_beside_graph_steps_keep_greedy_output(bundle):
    """Window forwards run eagerly into the cache that the captured single-token graphs read."""
    from model.sampling import SamplingParams

    eng = engine(bundle, cuda_graphs=True)
    greedy = SamplingParams(temperature=0.0)

    def run(window):
        req = GenerationRequest(task="t2i", question="a red cube", image_size=(6, 8), max_new_tokens=200, seed=0,
                                text_sampling=greedy, image_sampling=greedy, jacobi_window=window,
                                logit_bias={eng.tok.boi_id: 50.0})  # fmt: skip
        return list(eng.generate(req))[-1]

    plain, fast = run(0), run(8)
    assert fast.token_ids == plain.token_ids
    assert plain.image_tokens >= 48  # the BOI bias starts a new 6x8 image after each EOI: several fit in 200 tokens
    assert fast.timings["decode_forwards"] < plain.timings["decode_forwards"]


def test_batched_steps_as_graphs_equal_eager_batched_steps(bundle):
    """BatchEngine(cuda_graphs=True): requests joining mid-decode and crossing a KV bucket decode what the eager
    batch decodes (greedy)."""
    from model.batching import BatchEngine
    from model.sampling import SamplingParams

    eng = engine(bundle, cuda_graphs=True)
    greedy = SamplingParams(temperature=0.0)

    def run(graphs):
        batch, out = BatchEngine(eng, max_streams=3, cuda_graphs=graphs), {}
        bias = {eng.tok.boi_id: 2.0, eng.tok.eos_id: -100.0}
        reqs = [GenerationRequest(task="vla", question=f"pick up cube {i}", image_size=(3, 4), max_new_tokens=300,
                                  seed=i, text_sampling=greedy, image_sampling=greedy, logit_bias=bias)
                for i in range(3)]  # fmt: skip
        for step in range(400):
            for i, r in enumerate(reqs):
                if step == 20 * i:
                    batch.add(r, lambda e, i=i: out.__setitem__(i, e))
            batch.step()
        return [out[i].token_ids for i in range(3)], len(batch._graphs)

    (eager, _), (graphs, captured) = run(False), run(True)
    assert graphs == eager and captured >= 2


def test_a_batch_with_lookahead_decodes_what_it_decodes_without(bundle):
    """BatchEngine(lookahead=True) on graphs: image requests sampled with CFG, joining mid-decode and crossing a KV
    bucket, decode the same tokens, and queued steps are handed over."""
    from model.batching import BatchEngine

    eng = engine(bundle, cuda_graphs=True)

    def run(lookahead):
        batch, out = BatchEngine(eng, max_streams=3, lookahead=lookahead), {}
        bias = {eng.tok.boi_id: 50.0, eng.tok.eos_id: -100.0}
        reqs = [GenerationRequest(task="t2i", question=f"a cube {i}", image_size=(6, 8), max_new_tokens=300, seed=i,
                                  logit_bias=bias) for i in range(3)]  # fmt: skip
        for step in range(400):
            for i, r in enumerate(reqs):
                if step == 20 * i:
                    batch.add(r, lambda e, i=i: out.__setitem__(i, e))
            batch.step()
        return [out[i].token_ids for i in range(3)], batch.ahead_used

    (plain, none), (ahead, used) = run(False), run(True)
    assert ahead == plain and none == 0 and used > 100
    assert BatchEngine(eng).lookahead  # on by default with graphs, as serve builds it


def test_a_batched_graph_step_waits_for_the_device_once(bundle):
    """BatchEngine with graphs, once the step's graph is captured: each step synchronizes with the device once, to
    read every request's token (torch's sync debug mode warns at each synchronizing call)."""
    import warnings

    from model.batching import BatchEngine
    from model.sampling import SamplingParams

    eng = engine(bundle, cuda_graphs=True)
    batch = BatchEngine(eng, max_streams=3, cuda_graphs=True)
    bias = {eng.tok.boi_id: -100.0, eng.tok.eos_id: -100.0}  # text only: every request draws at every step
    for i, p in enumerate([SamplingParams(), SamplingParams(1.0, 20, 0.8), SamplingParams(temperature=0.0)]):
        req = GenerationRequest(task="story", question=f"robot {i}", max_new_tokens=60, seed=i, text_sampling=p,
                                logit_bias=bias)  # fmt: skip
        batch.add(req, lambda e: None)
    for _ in range(3):
        batch.step()  # captures the graph (one KV bucket for all 60 tokens)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(20):
                batch.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 20 and batch.active == 3, syncs[:4]


def test_a_row_of_a_batched_draw_draws_what_it_draws_alone_on_the_gpu():
    """What continuous batching relies on for sampling on a GPU: rows drawn together (one top-k for all, each from
    its own generator) get exactly the tokens they get one by one, on the official vocabulary with bf16 ties."""
    from model.sampling import SamplingParams, sample

    g = torch.Generator("cuda").manual_seed(0)
    scores = (torch.randn(8, 282926, device="cuda", generator=g) * 3).bfloat16().float()
    scores[1, 1000:] = float("-inf")  # fewer candidates than top-k
    for params in [SamplingParams(1.0, 1024, 0.9), SamplingParams(1.0, 10240, 1.0), SamplingParams(0.7, 0, 0.9)]:
        batch, alone = ([torch.Generator("cuda").manual_seed(s) for s in range(8)] for _ in range(2))
        for _ in range(5):
            together = sample(scores, params, batch).tolist()
            assert together == [int(sample(scores[i : i + 1], params, [g])[0]) for i, g in enumerate(alone)], params


def test_the_graph_sampler_draws_what_the_eager_draw_draws():
    """CFG combination and the draw replayed as a captured graph (model/graph_sampler.py), the noise drawn eagerly
    from each request's generator: the same tokens as the eager draw, draw after draw, for groups of 1 and 3 rows,
    with and without CFG, for top-k, top-p, both and greedy, on the visual slice's width with bf16 ties."""
    from model.engine import Draw, draw_tokens
    from model.graph_sampler import GraphSampler
    from model.sampling import SamplingParams

    g = torch.Generator("cuda").manual_seed(0)
    logits = (torch.randn(6, 131072, device="cuda", generator=g) * 3).bfloat16()
    logits[2, 1000:] = float("-inf")  # a stream with fewer candidates than top-k
    sampler = GraphSampler()
    params_list = [SamplingParams(1.0, 10240, 1.0), SamplingParams(1.0, 1024, 0.9), SamplingParams(0.7, 0, 0.9),
                   SamplingParams(0.0)]  # fmt: skip
    for params in params_list:
        for cfg, streams in [(3.0, 1), (3.0, 3), (None, 3)]:
            R = 1 if cfg is None else 2
            gens = [[torch.Generator("cuda").manual_seed(s) for s in range(streams)] for _ in range(2)]
            for _ in range(4):
                graph, eager = ([Draw(logits[2 * s : 2 * s + R], params, gs[s], cfg) for s in range(streams)]
                                for gs in gens)  # fmt: skip
                assert draw_tokens(graph, sampler) == draw_tokens(eager), (params, cfg, streams)
    assert len(sampler) == len(params_list) * 3
    small = GraphSampler(max_graphs=2)  # request-chosen params and scales: the cache is bounded, least recent out
    for scale in (2.0, 3.0, 4.0, 3.0):
        draw_tokens([Draw(logits[:2], SamplingParams(0.0), gens[0][0], scale)], small)
    assert len(small) == 2 and [k[5] for k in small._graphs] == [4.0, 3.0]
    # the combination of both rows in one log-softmax gives cfg_combine's numbers, bit for bit
    from model.sampling import cfg_combine, combine_and_pick

    want = torch.stack([cfg_combine(logits[2 * s], logits[2 * s + 1], 3.0) for s in range(3)]).argmax(-1)
    assert combine_and_pick(logits.view(3, 2, -1), 3.0, SamplingParams(0.0), None).tolist() == want.tolist()
    c = logits.view(3, 2, -1).float().log_softmax(-1)
    assert torch.equal(c[1, 0], logits[2].float().log_softmax(-1))
