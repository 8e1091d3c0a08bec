"""FP8 weights: the quantization numerics on any device (float32 emulation where `_scaled_mm` cannot run)."""

import torch

from model.fp8 import Fp8Linear, quantize_fp8, quantize_rows
from model.random_checkpoint import config_for_tokenizer, random_emu35, write_tokenizer


def test_rowwise_quantization_round_trip():
    x = torch.randn(7, 64) * torch.logspace(-2, 2, 7)[:, None]  # rows of very different magnitude
    q, s = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (7, 1)
    rel = ((q.float() * s - x).norm(dim=1) / x.norm(dim=1)).max()
    assert rel < 0.04  # e4m3 keeps 3 mantissa bits: per-element error <= 1/16, far less on average


def test_fp8_linear_matches_linear():
    lin = torch.nn.Linear(96, 80, bias=False)
    torch.nn.init.normal_(lin.weight, std=0.05)
    f = Fp8Linear(lin)
    assert f.weight.dtype == torch.float8_e4m3fn and f.scale.shape == (1, 80)
    x = torch.randn(3, 5, 96)
    want, got = lin(x), f(x)
    assert got.shape == want.shape and ((got - want).norm() / want.norm()) < 0.05


def test_quantized_model_logits_stay_close(tmp_path):
    tok = write_tokenizer(tmp_path, 64)
    lm = random_emu35(config_for_tokenizer(tok, num_hidden_layers=3), seed=0, std=0.05)
    ids = torch.randint(0, lm.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = lm(ids).logits
        lm.fuse_projections()
        assert quantize_fp8(lm) == 3 * 4  # qkv, o, gate_up, down in every block; head and embeddings stay
        out = lm(ids).logits
    rel = (out - ref).norm() / ref.norm()
    top1 = (out.argmax(-1) == ref.argmax(-1)).float().mean()
    # ~3% per projection compounds through the blocks: ~8% on the final logits of 3 random layers (seeds 0-4: 7-10%)
    assert rel < 0.12 and top1 > 0.8, (float(rel), float(top1))
