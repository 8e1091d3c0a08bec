"""Tokenizer ids follow the official numbering; encode/decode round-trips text, special and visual tokens."""

import pytest

from model import TextTokenizer
from model.random_checkpoint import official_size_ranks, tiny_ranks
from model.text_tokenizer import vision_token_list, write_ranks


@pytest.fixture(scope="module")
def official_layout(tmp_path_factory):
    """Files in the official format and size: 151,643 ranks + the 131,075-line vision-token list."""
    d = tmp_path_factory.mktemp("official_tok")
    write_ranks(official_size_ranks(), d / "emu3.tiktoken")
    (d / "emu3_vision_tokens.txt").write_text("\n".join(vision_token_list(131072)) + "\n")
    return TextTokenizer.from_files(d / "emu3.tiktoken", d / "emu3_vision_tokens.txt")


def test_official_ids(official_layout):
    t = official_layout
    assert t.special_start == 151643 and t.vocab_size == 282926
    expect = {
        "<|endoftext|>": 151643,
        "<|im_start|>": 151644,
        "<|im_end|>": 151645,
        "<|extra_0|>": 151646,
        "<|extra_204|>": 151850,
        "<|image token|>": 151851,
        "<|image start|>": 151852,
        "<|image end|>": 151853,
        "<|visual token 000000|>": 151854,
        "<|visual token 131071|>": 282925,
    }
    assert {k: t.token_id(k) for k in expect} == expect
    roles = dict(bos=151849, eos=151850, pad=151643, eol=151846, eof=151847, img=151851, boi=151852, eoi=151853)
    assert {r: getattr(t, f"{r}_id") for r in roles} == roles
    assert t.token_id("<|extra_202|>") == t.tms_id and t.bss_id == 151646 + 100 and t.ess_id == 151646 + 101
    assert (t.bog_id, t.eog_id, t.boc_id, t.eoc_id) == (151706, 151707, 151696, 151697)
    assert t.code_to_id(0) == 151854 and t.code_to_id(131071) == 282925 and t.id_to_code(151854 + 77) == 77
    assert t.encode("<|extra_203|>hi<|image start|>") == [151849, *t.encode("hi"), 151852]


@pytest.fixture()
def tok(bundle):
    return TextTokenizer.from_pretrained(bundle.tokenizer)


def test_specials_numbered_from_len_ranks(tok):
    n = len(tiny_ranks())
    assert tok.special_start == n and tok.pad_id == n and tok.img_id == n + 208 and tok.visual_start == n + 211


@pytest.mark.parametrize(
    "text",
    ["stack the red block on the blue block", "Grüße, 東京! 12*34\n\ttabs", "emoji 🤖 and combining é (NFC)", ""],
)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.special_start for i in ids)


def test_bpe_merges_and_digits(tok):
    assert tok.encode("the") == [tok.enc.encode_single_token(b"the")]
    digits = tok.encode("2024*64")
    assert len(digits) == 7 and tok.decode(digits[:1]) == "2"  # digits tokenise one per token


def test_special_and_visual_tokens_in_text(tok):
    s = "<|extra_203|>go<|image start|>1*2<|image token|><|visual token 000003|><|visual token 001023|><|image end|>"
    ids = tok.encode(s)
    assert ids[0] == tok.bos_id and tok.boi_id in ids and ids[-1] == tok.eoi_id
    assert [tok.id_to_code(i) for i in ids if tok.is_visual(i)] == [3, 1023]
    assert tok.decode(ids) == s


def test_errors(tok, tmp_path):
    with pytest.raises(ValueError, match="out of range"):
        tok.code_to_id(1024)
    with pytest.raises(ValueError, match="not a visual token"):
        tok.id_to_code(5)
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])
    with pytest.raises(FileNotFoundError, match="emu3.tiktoken"):
        TextTokenizer.from_pretrained(tmp_path)
    (tmp_path / "emu3.tiktoken").write_text("YQ== 0\nnot-base64!! 1\n")
    with pytest.raises(ValueError, match=":2: expected"):
        TextTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no vision tokens"):
        TextTokenizer(tiny_ranks()).code_to_id(0)


def test_save_and_reload(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = TextTokenizer.from_pretrained(tmp_path)
    assert again.special_ids == tok.special_ids and again.encode("the block") == tok.encode("the block")


FRAGMENTS = ["hello", " world", "  ", "\n", "123", "é", "日本", "🤖", "<|", "|>", "<", ">", "|", "<|foo|>", "<|<|",
             "<|image start|>", "<|image end|>", "<|visual token 000007|>", "<|visual token 999999|>",
             "<|extra_100|>", "<|endoftext|>", "<|extra_1000|>", "USER: ", "e\u0301"]  # fmt: skip


@pytest.mark.parametrize("official", [False, True], ids=["tiny", "official-size"])
def test_fast_special_split_gives_tiktokens_ids(official):
    """Our one-regex special split (tiktoken's own costs ~50 ms per call at the official size) agrees with tiktoken's
    allowed_special='all' on text mixing specials, near-specials, broken brackets and Unicode."""
    import random
    import unicodedata

    tok = TextTokenizer(official_size_ranks() if official else tiny_ranks(), vision_token_list(16))
    rng = random.Random(0)
    for _ in range(200 if not official else 30):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 12)))
        want = tok.enc.encode(unicodedata.normalize("NFC", text), allowed_special="all", disallowed_special=())
        assert tok.encode(text) == want, text


def test_specials_of_another_shape_fall_back_to_tiktoken():
    tok = TextTokenizer(tiny_ranks(), vision_token_list(4) + ["[SPECIAL]"])
    assert not tok._split_specials
    assert tok.encode("a[SPECIAL]b")[1] == tok.special_ids["[SPECIAL]"]
