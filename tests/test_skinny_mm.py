"""Skinny GEMMs (model/skinny_mm.py): the torch fallback's numerics, SkinnyLinear and use_skinny anywhere; the Triton
kernel where Triton can run (CUDA, or its CPU interpreter: `TRITON_INTERPRET=1 pytest tests/test_skinny_mm.py`)."""

import pytest
import torch
import torch.nn.functional as F

from model import Emu35
from model.fp8 import Fp8Linear
from model.skinny_mm import (
    INTERPRET,
    SkinnyLinear,
    drop_skinny,
    skinny_available,
    skinny_mm,
    skinny_mm_reference,
    triton,
    use_skinny,
)


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def weights(N, K, seed=0):
    """bf16 W [N, K] with rows of different magnitude, and its float8 e4m3 form + per-channel scales [N]."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(N, K, generator=g) * torch.logspace(-2, 0, N)[:, None]).bfloat16()
    lin = torch.nn.Linear(K, N, bias=False).requires_grad_(False)
    lin.weight.copy_(w.float())
    f = Fp8Linear(lin)
    return w, f.weight, f.scale.reshape(-1)


def test_reference_numerics():
    w, wq, s = weights(96, 200)
    x = torch.randn(5, 200).bfloat16()
    ref = x.float() @ w.float().T
    y = skinny_mm_reference(x, w)
    assert y.dtype == torch.bfloat16 and y.shape == (5, 96)
    assert rel(y, ref) < 1e-2
    yq = skinny_mm_reference(x, wq, s)
    assert yq.dtype == torch.bfloat16 and rel(yq, ref) < 4e-2  # weight-only e4m3: 3 mantissa bits
    assert rel(yq, ref) > 1e-3  # the weights really were quantized
    assert torch.equal(skinny_mm_reference(x, wq, s[None]), yq)  # Fp8Linear's [1, N] scales work too


def test_skinny_mm_falls_back_where_triton_cannot_run():
    w, wq, s = weights(40, 64)
    x = torch.randn(3, 64)  # float32 activations: never the kernel
    assert torch.equal(skinny_mm(x, w), skinny_mm_reference(x, w))
    assert torch.equal(skinny_mm(x, wq, s), skinny_mm_reference(x, wq, s))
    xb = torch.randn(17, 64).bfloat16()  # more rows than the kernel takes
    assert torch.equal(skinny_mm(xb, w), skinny_mm_reference(xb, w))
    with pytest.raises(ValueError):
        skinny_mm(xb, w[:, :10])


def test_skinny_linear_matches_fallback():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=False).bfloat16().requires_grad_(False)
    m = SkinnyLinear(lin)
    assert m.weight is lin.weight and set(m.state_dict()) == {"weight"}
    x = torch.randn(3, 5, 64).bfloat16()  # 15 rows: the kernel where it runs
    y = m(x)
    assert y.shape == (3, 5, 48) and y.dtype == torch.bfloat16
    if skinny_available(x.device):  # the interpreter: float32 sums in another order, bf16 rounding
        assert rel(y, skinny_mm_reference(x.reshape(-1, 64), lin.weight).reshape(3, 5, 48)) < 1e-2
    else:  # the bf16 fallback: what the nn.Linear computed
        assert torch.equal(y, F.linear(x, lin.weight))
    big = torch.randn(4, 5, 64).bfloat16()  # 20 rows: F.linear
    assert torch.equal(m(big), F.linear(big, lin.weight))

    q = SkinnyLinear(lin, fp8=True)
    f = Fp8Linear(lin)
    assert set(q.state_dict()) == {"weight", "scale"} and q.fp8
    assert torch.equal(q.weight.float(), f.weight.float()) and torch.equal(q.scale, f.scale)
    assert not q.use_scaled_mm  # CPU: rows > 16 take the dequantized product
    for xx in (x, big):
        ref = F.linear(xx.float(), lin.weight.float())
        assert rel(q(xx), ref) < 4e-2
    assert torch.equal(q(big), skinny_mm_reference(big.reshape(-1, 64), q.weight, q.scale).reshape(4, 5, 48))
    assert SkinnyLinear(f).weight is f.weight  # from an Fp8Linear: its own buffers


@pytest.mark.parametrize("fp8", [False, True])
def test_use_skinny_logits_close(bundle, fp8):
    lm = Emu35.from_pretrained(bundle.model)  # bf16
    g = torch.Generator().manual_seed(0)
    short = torch.randint(0, lm.config.vocab_size, (1, 12), generator=g)  # 12 rows: the kernel where it runs
    long = torch.randint(0, lm.config.vocab_size, (2, 20), generator=g)  # 40 rows: F.linear / fallback
    with torch.no_grad():
        lm.fuse_projections()
        ref = [lm(ids).logits for ids in (short, long)]
        layers = lm.config.num_hidden_layers
        assert use_skinny(lm, fp8=fp8) == 4 * layers  # qkv, o, gate_up, down; the head stays
        assert use_skinny(lm, fp8=fp8) == 0  # already done
        assert isinstance(lm.model.layers[0].mlp.down_proj, SkinnyLinear)
        assert isinstance(lm.lm_head, torch.nn.Linear)
        assert (lm.head_fp8 is not None) == fp8  # float8 decode steps get a float8 copy of the head
        out = [lm(ids).logits for ids in (short, long)]
        if fp8:  # the 12-row call read the float8 head; the 40-row one the bf16 lm_head, as without the copy
            head = lm.head_fp8
            lm.head_fp8 = None
            assert not torch.equal(lm(short).logits, out[0]) and torch.equal(lm(long).logits, out[1])
            lm.head_fp8 = head
    for o, r in zip(out, ref):
        assert o.shape == r.shape
        if fp8:  # ~3% per projection, compounding over the blocks (tests/test_fp8.py)
            assert rel(o, r) < 0.12 and (o.argmax(-1) == r.argmax(-1)).float().mean() > 0.8
        else:
            assert rel(o, r) < 2e-2


def test_swiglu_of_a_fused_gate_up_falls_back_to_the_ops():
    """skinny_mm(glu=True) where the kernel does not run is swiglu(gate, up) of the product; forward_swiglu leaves
    the caller its ops (None) where the kernel does not take x."""
    from model.transformer import swiglu

    w, wq, s = weights(80, 64)
    x = torch.randn(3, 64)  # float32: the fallback
    for W, sc in ((w, None), (wq, s)):
        assert torch.equal(skinny_mm(x, W, sc, glu=True), swiglu(*skinny_mm_reference(x, W, sc).chunk(2, dim=-1)))
    with pytest.raises(ValueError):
        skinny_mm(x, w[:79], glu=True)  # no even split into gate and up
    lin = torch.nn.Linear(64, 80, bias=False).bfloat16().requires_grad_(False)
    assert SkinnyLinear(lin).forward_swiglu(torch.randn(30, 64).bfloat16()) is None  # 30 rows: never the kernel
    if not skinny_available(torch.device("cpu")):
        assert SkinnyLinear(lin).forward_swiglu(torch.randn(2, 64).bfloat16()) is None


def test_use_skinny_upgrades_and_drops():
    lin = torch.nn.Linear(32, 16, bias=False).bfloat16()
    model = torch.nn.ModuleDict({"o_proj": lin, "other": torch.nn.Linear(32, 16, bias=False)})
    assert use_skinny(model) == 1 and not model["o_proj"].fp8
    assert isinstance(model["other"], torch.nn.Linear)  # not a projection name
    assert use_skinny(model, fp8=True) == 1 and model["o_proj"].fp8  # bf16 -> float8
    assert drop_skinny(model) == 0  # float8 ones stay
    model["o_proj"] = SkinnyLinear(lin)
    assert drop_skinny(model) == 1 and model["o_proj"].weight is lin.weight


# ---- the Triton kernel ------------------------------------------------------------------------------------------
if INTERPRET:
    import triton_interpreter  # noqa: F401  (the interpreter's loops under numpy >= 2.4)


def kernel_device():
    if triton is None:
        pytest.skip("Triton is not installed")
    if torch.cuda.is_available() and not INTERPRET:
        return torch.device("cuda")
    if INTERPRET:
        return torch.device("cpu")
    pytest.skip("no CUDA GPU (set TRITON_INTERPRET=1 to run the kernel in Triton's CPU interpreter)")


def check(x, w, scale, config, tol):
    """Run into a NaN-poisoned buffer one element longer than the output: every output element is written, nothing
    past it."""
    M, N = x.shape[0], w.shape[0]
    buf = torch.full((M * N + 1,), float("nan"), dtype=torch.bfloat16, device=x.device)
    y = skinny_mm(x, w, scale, out=buf[: M * N].view(M, N), config=config)
    assert y.data_ptr() == buf.data_ptr()
    assert torch.isnan(buf[-1]) and not torch.isnan(y).any(), (M, config)
    ref = skinny_mm_reference(x, w, scale).float()
    err = (y.float() - ref).abs().max() / ref.abs().max()
    assert err < tol, (M, N, config, float(err))


@pytest.fixture
def few_configs(monkeypatch):
    """Autotune over 3 of the configs (the autotuned launch path, without compiling all of them)."""
    import model.skinny_mm as sk

    if triton is not None and hasattr(sk, "_tuned_kernel"):
        monkeypatch.setattr(sk._tuned_kernel, "configs", sk._CONFIGS[::7])


@pytest.mark.parametrize("fp8", [False, True])
def test_kernel_all_rows_odd_shapes(fp8, few_configs):
    dev = kernel_device()
    if not skinny_available(dev, fp8):
        pytest.skip("float8 needs sm89+")
    # the interpreter rounds float32 -> bf16 toward zero (one bf16 ulp); a GPU rounds to nearest
    tol = 1e-2 if INTERPRET else 5e-3
    if INTERPRET:  # tiles of one and several K slices
        tiles = [(16, 128, 1), (32, 256, 4), (64, 512, 2)]
        configs = [dict(BLOCK_N=n, BLOCK_K=k, SLICES=s) for n, k, s in tiles]
    else:  # every config the autotuner may pick
        from model.skinny_mm import _CONFIGS

        configs = [dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages) for c in _CONFIGS]
    g = torch.Generator().manual_seed(1)
    for N, K in [(77, 300), (48, 512)]:  # N and K off the blocks (masks, clamped rows); K a multiple of every BLOCK_K
        w, wq, s = weights(N, K, seed=N)
        w, scale = (wq, s) if fp8 else (w, None)
        w, scale = w.to(dev), None if scale is None else scale.to(dev)
        for M in range(1, 17):
            x = torch.randn(M, K, generator=g).bfloat16().to(dev)
            for c in configs:
                check(x, w, scale, c, tol)
    if dev.type == "cuda":  # autotuned (the last shape), two row buckets
        for M in (2, 16):
            check(torch.randn(M, K, generator=g).bfloat16().to(dev), w, scale, None, tol)
    if fp8 and dev.type == "cuda":  # Triton's own float8 conversion, the slower fallback
        import model.skinny_mm as sk

        sk.FP8_ASM = False
        try:
            for M in (1, 5, 16):
                check(torch.randn(M, K, generator=g).bfloat16().to(dev), w, scale, configs[0], tol)
        finally:
            sk.FP8_ASM = True


@pytest.mark.parametrize("fp8", [False, True])
def test_kernel_swiglu_epilogue(fp8, few_configs):
    """A fused [gate; up] product with the SwiGLU in the epilogue against the product then the eager SwiGLU: 1-16 rows
    (float8 up to 8 through model.fp8_gluon's kernel on a GPU), N off the blocks, every output written once."""
    from model.transformer import swiglu

    dev = kernel_device()
    if not skinny_available(dev, fp8):
        pytest.skip("float8 needs sm89+")
    tol = 3e-2 if INTERPRET else 1.6e-2  # a bf16 rounding of each product, then the SwiGLU's two
    g = torch.Generator().manual_seed(3)
    N, K = 2 * 77, 1024
    w, wq, s = weights(N, K, seed=5)
    w, scale = (wq, s) if fp8 else (w, None)
    w, scale = w.to(dev), None if scale is None else scale.to(dev)
    for M in (1, 2, 5, 8, 9, 16) if dev.type == "cuda" else (1, 3, 16):
        x = torch.randn(M, K, generator=g).bfloat16().to(dev)
        buf = torch.full((M * 77 + 1,), float("nan"), dtype=torch.bfloat16, device=dev)
        y = skinny_mm(x, w, scale, out=buf[:-1].view(M, 77), glu=True)
        assert y.data_ptr() == buf.data_ptr() and torch.isnan(buf[-1]) and not torch.isnan(y).any(), M
        ref = swiglu(*skinny_mm_reference(x, w, scale).chunk(2, dim=-1)).float()
        err = float((y.float() - ref).abs().max() / ref.abs().max())
        assert err < tol, (M, err)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gluon_fp8_swiglu_every_config():
    """model.fp8_gluon's kernel with the SwiGLU epilogue (two accumulators, gate and up rows N apart): every config
    that takes it, 1-8 rows, against the product then the eager SwiGLU; tuned separately from the plain product."""
    from model.fp8_gluon import _BEST, CONFIGS, config_fits, fp8_mm, fp8_mm_available
    from model.transformer import swiglu

    dev = torch.device("cuda")
    if not fp8_mm_available(dev):
        pytest.skip("needs Gluon and sm89+")
    g = torch.Generator().manual_seed(4)
    K = 1024
    _, wq, s = weights(2 * 77, K, seed=7)
    wq, s = wq.to(dev), s.to(dev)
    for M in (1, 2, 8):
        x = torch.randn(M, K, generator=g).bfloat16().to(dev)
        ref = swiglu(*skinny_mm_reference(x, wq, s).chunk(2, dim=-1)).float()
        for c in (c for c in CONFIGS if not c[5]):
            assert config_fits(c, K)
            y = torch.full((M, 77), float("nan"), dtype=torch.bfloat16, device=dev)
            fp8_mm(x, wq, s, out=y, config=c, glu=True)
            err = float((y.float() - ref).abs().max() / ref.abs().max())
            assert err < 1.6e-2, (M, c, err)
    fp8_mm(x, wq, s, glu=True)
    assert (77, K, 8, True) in _BEST


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gluon_fp8_every_config_rows_odd_shapes():
    """model.fp8_gluon's kernel (W loaded into tensor-core registers) against the dequantized product: every config,
    1-16 rows (8 and 16 padded), N off the blocks; then the tuned path, and a graph replay equal to the eager call."""
    from model.fp8_gluon import _BEST, CONFIGS, config_fits, fp8_mm, fp8_mm_available

    dev = torch.device("cuda")
    if not fp8_mm_available(dev):
        pytest.skip("needs Gluon and sm89+")
    g = torch.Generator().manual_seed(2)
    K = 1024  # a multiple of every config's S * KS
    for N in (77, 48):
        _, wq, s = weights(N, K, seed=N)
        wq, s = wq.to(dev), s.to(dev)
        for M in (1, 2, 5, 8, 9, 16):
            x = torch.randn(M, K, generator=g).bfloat16().to(dev)
            ref = skinny_mm_reference(x, wq, s).float()
            for c in CONFIGS:
                assert config_fits(c, K)
                y = torch.full((M, N), float("nan"), dtype=torch.bfloat16, device=dev)
                fp8_mm(x, wq, s, out=y, config=c)
                err = float((y.float() - ref).abs().max() / ref.abs().max())
                assert err < 5e-3, (N, M, c, err)
    x = torch.randn(2, K, generator=g).bfloat16().to(dev)
    y = fp8_mm(x, wq, s)  # tunes (N, K, 8 rows) on first use
    assert (N, K, 8, False) in _BEST
    assert torch.equal(skinny_mm(x, wq, s), y)  # skinny_mm sends <= GLUON_ROWS float8 rows here
    out = torch.empty_like(y)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fp8_mm(x, wq, s, out=out)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, y)


def test_e4m3_bit_conversion():
    """_e4m3_to_bf16's integer recipe, emulated with torch for all 256 bytes: prmt gives each 16-bit lane the byte
    below and its sign bit copied above; (lane << 4) & 0x87F0 as bf16, times 2^120, is the e4m3 value."""
    b = torch.arange(256, dtype=torch.int32)
    lane = torch.where(b >= 128, 0xFF00, 0) | b
    fake = ((lane << 4) & 0x87F0).to(torch.int16).view(torch.bfloat16)
    got = fake.float() * 2.0**120
    want = b.to(torch.uint8).view(torch.float8_e4m3fn).float()
    nan = want.isnan()  # 0x7F / 0xFF: never produced by absmax scaling
    assert nan.sum() == 2 and torch.equal(got[~nan], want[~nan])
    assert torch.tensor(2.0**120).bfloat16().view(torch.int16).item() == 0x7B80  # the multiplier in the asm


@pytest.mark.skipif(not torch.cuda.is_available() or triton is None, reason="needs a CUDA GPU and Triton")
def test_engine_skinny_graphs_equal_eager(bundle, few_configs):
    from model import TextTokenizer, VisionTokenizer
    from model.engine import Engine, GenerationRequest

    def tokens(graphs, fp8):
        lm = Emu35.from_pretrained(bundle.model, dtype=torch.bfloat16, device="cuda")
        vq = VisionTokenizer.from_pretrained(bundle.vision_tokenizer, device="cuda")
        tok = TextTokenizer.from_pretrained(bundle.tokenizer)
        eng = Engine(lm, tok, vq, max_len=1024, graph_bucket=256, cuda_graphs=graphs, skinny=True, fp8=fp8)
        assert isinstance(lm.model.layers[0].self_attn.qkv_proj, SkinnyLinear)
        req = GenerationRequest(task="vla", question="pick up the cube", image_size=(3, 4), max_new_tokens=80, seed=3)
        return list(eng.generate(req))[-1].token_ids

    for fp8 in (False, True):
        if fp8 and not skinny_available(torch.device("cuda"), True):
            continue
        assert tokens(False, fp8) == tokens(True, fp8)


def test_gluon_configs_cover_the_shapes():
    """Every 34B decode projection and the shipped mini's have a Gluon config whose K step divides K; a K no config
    divides stays on the Triton kernel (k_fits), and fp8_mm refuses bad shapes before launching anything."""
    from model.fp8_gluon import CONFIGS, config_fits, fp8_mm, k_fits

    for K in (5120, 8192, 25600, 384, 1536, 1024):
        assert k_fits(K) and any(config_fits(c, K) for c in CONFIGS)
    assert not k_fits(100) and not k_fits(96)
    assert all(c[1] % c[4] == 0 and c[0] % (16 * c[3]) == 0 for c in CONFIGS)  # KS by k_width, rows by warps
    wq = torch.zeros(8, 64, dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError):
        fp8_mm(torch.zeros(17, 64).bfloat16(), wq, torch.ones(8))  # more than 16 rows
    with pytest.raises(ValueError):
        fp8_mm(torch.zeros(2, 32).bfloat16(), wq, torch.ones(8))  # K does not match


@pytest.mark.skipif(
    not torch.cuda.is_available() or triton is None or torch.cuda.get_device_capability() < (9, 0),
    reason="programmatic dependent launch needs a Hopper GPU and Triton",
)
def test_pdl_chains_in_a_graph_read_what_the_kernel_before_wrote(few_configs):
    """With use_pdl a product starts before the kernel in front of it is done; it must still read that kernel's
    output: a chain x -> (x * 3) -> skinny -> skinny, captured and replayed with new inputs, equals the plain calls."""
    from model.skinny_mm import PDL, use_pdl

    dev = torch.device("cuda")
    g = torch.Generator(dev).manual_seed(0)
    w1 = (torch.randn(1024, 2048, device=dev, generator=g) * 0.02).bfloat16()
    w2 = (torch.randn(4096, 1024, device=dev, generator=g) * 0.02).bfloat16()
    x = torch.randn(2, 2048, device=dev, generator=g).bfloat16()

    def chain(x):
        return skinny_mm(skinny_mm(x * 3, w1), w2)

    try:
        assert use_pdl(True) and PDL["on"]
        for _ in range(2):  # tune eagerly, outside the capture
            chain(x)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = chain(x)
        for i in range(5):
            x.copy_(torch.randn(2, 2048, device=dev, generator=g).bfloat16())
            graph.replay()
            use_pdl(False)
            want = chain(x)
            use_pdl(True)
            assert torch.equal(y, want), i
    finally:
        use_pdl(False)
