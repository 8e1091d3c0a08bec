"""IBQ vision tokenizer: official checkpoint layout, load errors, encode/decode contracts, IBQ inner-product argmax."""

import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from model import vision_tokenizer as vt
from model.vision_tokenizer import (
    IBQuantizer,
    VisionTokenizer,
    VisionTokenizerConfig,
    pil_to_tensor,
    smart_resize,
    tensor_to_pil,
    tiny_vision_config,
    write_random_vision_tokenizer,
)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vt")
    write_random_vision_tokenizer(path, seed=0)
    return path


@pytest.fixture(scope="module")
def tok(tok_dir):
    return VisionTokenizer.from_pretrained(tok_dir)


def images(b=2, h=64, w=48, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # [B,3,H,W] in [-1,1]


def assert_same_weights(a: VisionTokenizer, b: VisionTokenizer):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ----------------------------------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_write_load_round_trip(tmp_path, fmt):
    written = write_random_vision_tokenizer(tmp_path, seed=3, format=fmt)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"config.yaml", "model.ckpt" if fmt == "ckpt" else "model.safetensors"}
    loaded = VisionTokenizer.from_pretrained(tmp_path)
    assert loaded.config == written.config
    assert_same_weights(written, loaded)
    x = images()
    assert torch.equal(written.encode(x), loaded.encode(x))


def test_writer_is_deterministic_and_leaves_global_rng(tmp_path):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = write_random_vision_tokenizer(tmp_path / "a", seed=7)
    assert torch.equal(torch.rand(3), before)
    b = write_random_vision_tokenizer(tmp_path / "b", seed=7)
    assert_same_weights(a, b)
    c = write_random_vision_tokenizer(tmp_path / "c", seed=8)
    assert not torch.equal(a.quantize.embedding.weight, c.quantize.embedding.weight)


def test_official_config_yaml_keys_and_nested_lightning_ckpt(tmp_path, tok):
    """config.yaml is the IBQ kwargs (training keys ignored); state_dict nesting and loss.* keys are accepted."""
    cfg = tok.config.to_dict()
    cfg.update(beta=0.25, use_entropy_loss=True, cosine_similarity=False, entropy_temperature=0.01)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    sd = dict(tok.state_dict())
    sd["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    torch.save({"state_dict": sd, "global_step": 10}, tmp_path / "model.ckpt")
    loaded = VisionTokenizer.from_pretrained(tmp_path)
    assert_same_weights(tok, loaded)


def test_ckpt_preferred_over_safetensors(tmp_path):
    a = write_random_vision_tokenizer(tmp_path, seed=1, format="safetensors")
    b = write_random_vision_tokenizer(tmp_path / "b", seed=2)
    (tmp_path / "b" / "model.ckpt").rename(tmp_path / "model.ckpt")  # both files now in tmp_path
    loaded = VisionTokenizer.from_pretrained(tmp_path)
    assert_same_weights(b, loaded)
    assert not torch.equal(a.quantize.embedding.weight, loaded.quantize.embedding.weight)


def test_from_pretrained_device_dtype(tok_dir):
    m = VisionTokenizer.from_pretrained(tok_dir, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    assert not m.training
    assert m.encode(images(1, 32, 32)).shape == (1, 2, 2)


def test_taming_state_dict_layout(tok):
    sd = tok.state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    # tiny config: ch=32, ch_mult=(1,1,2,2,4), 1 res block, attention where resolution 256/2**i == 16 (level 4)
    assert shapes["encoder.conv_in.weight"] == (32, 3, 3, 3)
    assert shapes["encoder.down.2.block.0.nin_shortcut.weight"] == (64, 32, 1, 1)
    assert shapes["encoder.down.0.downsample.conv.weight"] == (32, 32, 3, 3)
    assert "encoder.down.4.downsample.conv.weight" not in sd
    assert shapes["encoder.down.4.attn.0.q.weight"] == (128, 128, 1, 1)
    assert "encoder.down.3.attn.0.q.weight" not in sd
    assert shapes["encoder.mid.attn_1.proj_out.weight"] == (128, 128, 1, 1)
    assert shapes["encoder.conv_out.weight"] == (8, 128, 3, 3)
    assert shapes["quant_conv.weight"] == (8, 8, 1, 1)
    assert shapes["quantize.embedding.weight"] == (1024, 8)
    assert shapes["post_quant_conv.weight"] == (8, 8, 1, 1)
    assert shapes["decoder.conv_in.weight"] == (128, 8, 3, 3)
    assert shapes["decoder.up.4.block.1.conv1.weight"] == (128, 128, 3, 3)  # num_res_blocks + 1 blocks per level
    assert shapes["decoder.up.4.attn.1.k.weight"] == (128, 128, 1, 1)
    assert shapes["decoder.up.4.upsample.conv.weight"] == (128, 128, 3, 3)
    assert shapes["decoder.up.3.block.0.nin_shortcut.weight"] == (64, 128, 1, 1)  # up[i] is level i
    assert "decoder.up.0.upsample.conv.weight" not in sd
    assert shapes["decoder.norm_out.weight"] == (32,)
    assert shapes["decoder.conv_out.weight"] == (3, 32, 3, 3)


# ----------------------------------------------------------------------------------------------------------------------
# load errors


def test_missing_config_and_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        VisionTokenizer.from_pretrained(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_vision_config().to_dict()))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        VisionTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "edit, name",
    [
        (lambda d: d.pop("n_embed"), "n_embed"),
        (lambda d: d.pop("embed_dim"), "embed_dim"),
        (lambda d: d.__setitem__("n_embed", "big"), "n_embed"),
        (lambda d: d.pop("ddconfig"), "ddconfig"),
        (lambda d: d["ddconfig"].pop("z_channels"), "ddconfig.z_channels"),
        (lambda d: d["ddconfig"].__setitem__("ch_mult", []), "ddconfig.ch_mult"),
        (lambda d: d["ddconfig"].__setitem__("ch_mult", [1, "2"]), "ddconfig.ch_mult"),
        (lambda d: d["ddconfig"].__setitem__("num_res_blocks", 0), "ddconfig.num_res_blocks"),
        (lambda d: d["ddconfig"].__setitem__("ch", 48), "ddconfig.ch"),
        (lambda d: d["ddconfig"].__setitem__("double_z", True), "ddconfig.double_z"),
        (lambda d: d["ddconfig"].__setitem__("dropout", 2.0), "ddconfig.dropout"),
        (lambda d: d["ddconfig"].__setitem__("attn_resolutions", 16), "ddconfig.attn_resolutions"),
        (lambda d: d["ddconfig"].__setitem__("tanh_out", True), "ddconfig.tanh_out"),
    ],
)
def test_bad_config_names_field(tmp_path, tok_dir, edit, name):
    d = yaml.safe_load((tok_dir / "config.yaml").read_text())
    edit(d)
    with pytest.raises(ValueError, match=f"'{name}'"):
        VisionTokenizerConfig.from_dict(d)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(d))
    (tmp_path / "model.ckpt").symlink_to(tok_dir / "model.ckpt")
    with pytest.raises(ValueError, match=f"'{name}'"):
        VisionTokenizer.from_pretrained(tmp_path)


def test_config_round_trip():
    cfg = tiny_vision_config(n_embed=64, attn_resolutions=())
    assert VisionTokenizerConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.downsample_factor == 16
    assert tiny_vision_config(ch_mult=(1, 2, 2)).downsample_factor == 4


def _write_ckpt(tmp_path, tok_dir, sd):
    (tmp_path / "config.yaml").write_text((tok_dir / "config.yaml").read_text())
    torch.save(sd, tmp_path / "model.ckpt")


def test_checkpoint_missing_unexpected_misshaped(tmp_path, tok_dir, tok):
    sd = dict(tok.state_dict())
    del sd["decoder.up.2.block.0.conv1.bias"]
    _write_ckpt(tmp_path, tok_dir, sd)
    with pytest.raises(ValueError, match=r"missing: decoder\.up\.2\.block\.0\.conv1\.bias"):
        VisionTokenizer.from_pretrained(tmp_path)

    sd = dict(tok.state_dict(), **{"encoder.extra.weight": torch.zeros(2)})
    _write_ckpt(tmp_path, tok_dir, sd)
    with pytest.raises(ValueError, match=r"unexpected: encoder\.extra\.weight"):
        VisionTokenizer.from_pretrained(tmp_path)

    sd = dict(tok.state_dict(), **{"quantize.embedding.weight": torch.zeros(1000, 8)})
    _write_ckpt(tmp_path, tok_dir, sd)
    with pytest.raises(ValueError, match=r"shape mismatch: quantize\.embedding\.weight: checkpoint \[1000, 8\]"):
        VisionTokenizer.from_pretrained(tmp_path)


EXECUTED = []


def _side_effect():
    EXECUTED.append(1)
    return "pwned"


class Evil:
    def __reduce__(self):
        return (_side_effect, ())


def test_pickled_object_refused(tmp_path, tok_dir, tok):
    _write_ckpt(tmp_path, tok_dir, {"state_dict": dict(tok.state_dict()), "evil": Evil()})
    with pytest.raises(ValueError, match="weights_only"):
        VisionTokenizer.from_pretrained(tmp_path)
    assert EXECUTED == []


# ----------------------------------------------------------------------------------------------------------------------
# encode / decode


def test_encode_decode_shapes_and_ranges(tok):
    x = images(2, 64, 48)
    codes = tok.encode(x)
    assert codes.shape == (2, 4, 3) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < tok.config.n_embed
    y = tok.decode(codes)
    assert y.shape == (2, 3, 64, 48) and y.dtype == torch.float32
    assert y.min() >= -1 and y.max() <= 1


@pytest.mark.parametrize("shape", [(1, 3, 40, 48), (1, 3, 48, 8), (3, 48, 48), (1, 4, 48, 48), (1, 1, 48, 48)])
def test_encode_rejects_bad_shapes(tok, shape):
    with pytest.raises(ValueError, match="encode"):
        tok.encode(torch.zeros(shape))


@pytest.mark.parametrize(
    "codes",
    [torch.full((1, 2, 2), 1024), torch.full((1, 2, 2), -1), torch.zeros(2, 2, dtype=torch.long), torch.zeros(1, 2, 2)],
)
def test_decode_rejects_bad_codes(tok, codes):
    with pytest.raises(ValueError, match="decode"):
        tok.decode(codes)


def test_encode_matches_reference_and_chunking(tok, monkeypatch):
    """encode == argmax_n <quant_conv(encoder(x)), e_n>, whether or not the logits are computed in chunks."""
    x = images(2, 32, 64, seed=1)
    with torch.no_grad():
        z = tok.quant_conv(tok.encoder(x))  # [B,D,h,w]
        ref = torch.einsum("bdhw,nd->bnhw", z, tok.quantize.embedding.weight).argmax(1)  # [B,h,w]
    assert torch.equal(tok.encode(x), ref)
    monkeypatch.setattr(vt, "_ARGMAX_CHUNK_ELEMS", 3 * tok.config.n_embed)  # 3 positions per chunk
    assert torch.equal(tok.encode(x), ref)


def test_batch_consistency(tok):
    x = images(3, 32, 32, seed=2)
    codes = tok.encode(x)
    for i in range(3):
        assert torch.equal(tok.encode(x[i : i + 1])[0], codes[i])
    # float32 convolutions round differently by batch size and CPU (1.4e-5 on an Intel Xeon); outputs are in [-1, 1]
    assert torch.allclose(tok.decode(codes[1:2])[0], tok.decode(codes)[1], atol=1e-4)


def test_quantization_is_idempotent_on_codebook(tok):
    """quantize(e[c]) == c exactly for every code: holds because the writer's codebook rows are distinct unit vectors.

    (Full encode(decode(c)) == c is NOT expected for random encoder/decoder weights, so it is not asserted.)
    """
    e = tok.quantize.embedding.weight
    assert torch.allclose(e.norm(dim=1), torch.ones(len(e)), atol=1e-5)
    codes = torch.arange(tok.config.n_embed).view(4, 16, 16)  # every code once
    assert torch.equal(tok.quantize(tok.quantize.embed(codes)), codes)
    # and decoding is deterministic: same codes -> same pixels -> same codes
    c1 = tok.encode(tok.decode(codes[:1]))
    c2 = tok.encode(tok.decode(codes[:1]))
    assert torch.equal(c1, c2)


def test_ibq_uses_inner_product_not_l2():
    q = IBQuantizer(n_embed=2, embed_dim=2)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[1.0, 0.0], [3.0, 0.0]]))
    z = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)  # [B,D,h,w]
    # L2: |z-e0| = 0 < |z-e1| = 2 -> 0;  inner product: <z,e0> = 1 < <z,e1> = 3 -> 1
    assert torch.cdist(z.view(1, 2), q.embedding.weight).argmin().item() == 0
    assert q(z).item() == 1
    assert torch.equal(q.embed(torch.ones(1, 1, 1, dtype=torch.long)), torch.tensor([3.0, 0.0]).view(1, 2, 1, 1))


# ----------------------------------------------------------------------------------------------------------------------
# images


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (1000, 250), (512, 512), (33, 17), (3000, 40)])
@pytest.mark.parametrize("area", [512 * 512, 720 * 720])
def test_smart_resize(size, area):
    out = smart_resize(Image.new("RGB", size), area)
    w, h = out.size
    assert w % 16 == 0 and h % 16 == 0 and w >= 16 and h >= 16
    aspect = size[0] / size[1]
    assert abs(w / h - aspect) / aspect < 0.15 or min(w, h) == 16  # only rounding to 16 distorts the aspect
    if min(w, h) > 16:
        assert abs(w * h - area) / area < 0.1


def test_smart_resize_matches_release_arithmetic():
    # 640x480 @ 512^2: h = int(sqrt(262144 / (4/3))) = 443 -> 448;  w = int(443 * 4/3) = 590 -> 592
    assert smart_resize(Image.new("RGB", (640, 480)), 512 * 512).size == (592, 448)
    assert smart_resize(Image.new("RGB", (1, 1)), 720 * 720).size == (720, 720)
    assert smart_resize(Image.new("RGB", (5000, 10)), 256).size == (16, 16)  # at least one multiple per side


def test_pil_tensor_round_trip():
    img = Image.fromarray(torch.randint(0, 256, (20, 30, 3), dtype=torch.uint8).numpy())
    x = pil_to_tensor(img)
    assert x.shape == (3, 20, 30) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert math.isclose(x[0, 0, 0].item(), img.getpixel((0, 0))[0] / 127.5 - 1, abs_tol=1e-6)
    assert (np.asarray(tensor_to_pil(x)) == np.asarray(img)).all()
    assert pil_to_tensor(img.convert("RGBA")).shape == (3, 20, 30)


def test_encode_pil_decode_pil(tok):
    a, b = Image.new("RGB", (64, 48), (200, 10, 10)), Image.new("RGB", (48, 64), (10, 10, 200))
    area = 48 * 64
    one = tok.encode_pil(a, area)
    assert one.shape == (1, 3, 4)
    many = tok.encode_pil([a, b, a], area)
    assert [tuple(c.shape) for c in many] == [(3, 4), (4, 3), (3, 4)]
    assert torch.equal(many[0], one[0]) and torch.equal(many[2], one[0])
    assert torch.equal(one[0], tok.encode(pil_to_tensor(a)[None])[0])
    outs = tok.decode_pil(many)
    assert [o.size for o in outs] == [(64, 48), (48, 64), (64, 48)]
    assert [o.size for o in tok.decode_pil(one)] == [(64, 48)]
    assert [o.size for o in tok.decode_pil(one[0])] == [(64, 48)]
