"""Image codes <-> token ids, and a parser that never reports a broken image as complete."""

import numpy as np
import pytest

from model import (
    ImageSegment,
    MalformedImageError,
    TextSegment,
    TextTokenizer,
    decode_image,
    encode_image,
    parse_stream,
)
from model.sequence import image_string


@pytest.fixture(scope="module")
def tok(bundle):
    return TextTokenizer.from_pretrained(bundle.tokenizer)


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (12, 4), (10, 11)])
def test_round_trip_and_official_string_form(tok, h, w):
    codes = np.random.default_rng(h * w).integers(0, 1024, (h, w))
    ids = encode_image(tok, codes)
    assert ids == tok.encode(image_string(tok, codes))  # same ids as the reference string template
    assert len(ids) == h * w + (h - 1) + len(f"{h}*{w}") + 3  # spec §4
    assert ids[0] == tok.boi_id and ids[-1] == tok.eoi_id and ids.count(tok.eol_id) == h - 1
    np.testing.assert_array_equal(decode_image(tok, ids), codes)


def test_stream_splits_text_and_images(tok):
    a, b = np.arange(6).reshape(2, 3), np.arange(4).reshape(1, 4) + 100
    ids = (
        tok.encode("pick up the red block")
        + encode_image(tok, a)
        + tok.encode(" then place it")
        + encode_image(tok, b)
        + [tok.eos_id]
    )
    segs = parse_stream(tok, ids)
    assert [type(s) for s in segs] == [TextSegment, ImageSegment, TextSegment, ImageSegment, TextSegment]
    assert segs[0].text == "pick up the red block" and segs[2].text == " then place it"
    assert segs[1].complete and segs[3].complete and (segs[1].h, segs[1].w) == (2, 3)
    np.testing.assert_array_equal(segs[3].codes, b)
    assert segs[4].ids == [tok.eos_id]


def test_truncated_image_is_reported_not_complete(tok):
    codes = np.arange(12).reshape(3, 4)
    ids = encode_image(tok, codes)
    for cut in [1, 3, 5, 9, len(ids) - 1]:
        (seg,) = parse_stream(tok, ids[:cut])
        assert not seg.complete and seg.error.startswith("truncated")
        assert seg.codes.shape[0] < 3 or cut == len(ids) - 1
        if seg.w is not None:  # past the size header: the complete rows read so far
            np.testing.assert_array_equal(seg.codes, codes[: seg.codes.shape[0]])
        else:
            assert seg.codes.size == 0
        with pytest.raises(MalformedImageError, match="truncated"):
            decode_image(tok, ids[:cut])


def _img(tok, header, body):
    return [tok.boi_id, *tok.encode(header), tok.img_id, *body, tok.eoi_id]


@pytest.mark.parametrize(
    "case", ["short_row", "long_row", "early_eoi", "extra_row", "text_inside", "bad_header", "no_img"]
)
def test_malformed_images(tok, case):
    v = [tok.code_to_id(c) for c in range(20)]
    eol = tok.eol_id
    body = {
        "short_row": _img(tok, "2*3", v[:2] + [eol] + v[2:5]),
        "long_row": _img(tok, "2*3", v[:4] + [eol] + v[4:7]),
        "early_eoi": _img(tok, "3*2", v[:2] + [eol] + v[2:4]),
        "extra_row": _img(tok, "1*2", v[:2] + [eol] + v[2:4]),
        "text_inside": _img(tok, "1*3", v[:1] + tok.encode("x") + v[1:3]),
        "bad_header": _img(tok, "2*", v[:2]),
        "no_img": [tok.boi_id, *tok.encode("1*1"), v[0], tok.eoi_id],
    }[case]
    tail = tok.encode("after")
    segs = parse_stream(tok, body + tail)
    assert isinstance(segs[0], ImageSegment) and not segs[0].complete and segs[0].error.startswith("malformed")
    assert segs[-1].text == "after"  # parsing resumes after the broken image
    with pytest.raises(MalformedImageError):
        decode_image(tok, body)


def test_encode_rejects_bad_codes(tok):
    with pytest.raises(ValueError, match=r"\[h, w\]"):
        encode_image(tok, np.zeros(4))
    with pytest.raises(ValueError, match="out of range"):
        encode_image(tok, np.full((1, 1), 5000))
