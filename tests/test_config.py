import json

import pytest

from model import ConfigError, Emu35Config
from model.config import emu35_34b_config

BASE = dict(
    vocab_size=1000,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    boi_token_id=10,
    eoi_token_id=11,
    img_token_id=12,
    eol_token_id=13,
    eof_token_id=14,
    bos_token_id=15,
    eos_token_id=16,
    pad_token_id=0,
)


def write(tmp_path, d):
    (tmp_path / "config.json").write_text(json.dumps(d))
    return tmp_path


def test_reads_official_fields_and_keeps_unknown_ones(tmp_path):
    d = dict(
        BASE,
        model_type="Emu3",
        rope_theta=1e6,
        rope_scaling=None,
        architectures=["Emu3ForCausalLM"],
        torch_dtype="bfloat16",
        image_area=518400,
    )
    c = Emu35Config.from_pretrained(write(tmp_path, d))
    assert (c.hidden_size, c.head_dim, c.boi_token_id, c.image_area) == (64, 32, 10, 518400)
    assert c.extra["architectures"] == ["Emu3ForCausalLM"]
    c.save(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert Emu35Config.from_pretrained(tmp_path / "out") == c


def test_head_dim_defaults_to_hidden_over_heads(tmp_path):
    d = {k: v for k, v in BASE.items() if k != "head_dim"}
    assert Emu35Config.from_pretrained(write(tmp_path, d)).head_dim == 16


@pytest.mark.parametrize(
    "field",
    [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
    ],
)
def test_missing_required_field_is_named(tmp_path, field):
    d = {k: v for k, v in BASE.items() if k != field}
    with pytest.raises(ConfigError, match=f"'{field}'"):
        Emu35Config.from_pretrained(write(tmp_path, d))


@pytest.mark.parametrize(
    "field,value",
    [
        ("hidden_size", -5),
        ("hidden_size", "64"),
        ("num_hidden_layers", 0),
        ("num_key_value_heads", 3),
        ("head_dim", 31),
        ("hidden_act", "gelu"),
        ("rms_norm_eps", 0),
        ("rope_theta", -1.0),
        ("rope_scaling", {"type": "yarn", "factor": 2}),
        ("rope_scaling", {"type": "linear", "factor": 0.5}),
        ("boi_token_id", 1000),
        ("eos_token_id", -1),
        ("vocab_size", None),
    ],
)
def test_invalid_field_is_named(tmp_path, field, value):
    with pytest.raises(ConfigError, match=field.split(".")[0]):
        Emu35Config.from_pretrained(write(tmp_path, dict(BASE, **{field: value})))


def test_not_json_and_missing_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Emu35Config.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        Emu35Config.from_pretrained(tmp_path / "nowhere")


def test_34b_shape_matches_published_size():
    c = emu35_34b_config()
    assert c.num_attention_heads * c.head_dim == 8192 != c.hidden_size
    assert abs(c.num_parameters() / 1e9 - 34.10) < 0.01  # performance-baseline.md: 34.10 B
    assert c.visual_token_start == 151854 and c.num_visual_tokens == 131072
