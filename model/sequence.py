"""Images inside the token stream (spec §4): BOI, the digits of "h*w", IMG, h rows of w visual tokens with EOL between
rows, EOI. `encode_image` writes that; `parse_stream` splits a generated stream into text and images and reports a
malformed or truncated image as such (never as complete).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .text_tokenizer import TextTokenizer


class MalformedImageError(ValueError):
    """A token run that should be one image is not well formed."""


@dataclass
class TextSegment:
    ids: list[int]
    text: str


@dataclass
class ImageSegment:
    """An image in the stream. `codes` [rows_done, w] holds the complete rows read; `complete` only when the image
    closed with EOI after exactly h rows. `error` says what was wrong otherwise ("truncated ..." or "malformed ...")."""

    h: int | None
    w: int | None
    codes: np.ndarray
    complete: bool
    error: str | None = None
    ids: list[int] = field(default_factory=list)


def image_string(tok: TextTokenizer, codes) -> str:
    """The official string form (as the reference `format_image_string`): encoding it gives `encode_image`'s ids."""
    codes = np.asarray(codes)
    h, w = codes.shape
    rows = ["".join(f"<|visual token {int(c):06d}|>" for c in row) for row in codes]
    return f"<|image start|>{h}*{w}<|image token|>" + "<|extra_200|>".join(rows) + "<|image end|>"


def size_ids(tok: TextTokenizer, h: int, w: int) -> list[int]:
    """Token ids of "h*w" (one digit per token, then '*')."""
    return tok.encode(f"{h}*{w}")


def encode_image(tok: TextTokenizer, codes) -> list[int]:
    """codes [h, w] ints -> token ids of the whole image, BOI..EOI."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.size == 0:
        raise ValueError(f"image codes must be a non-empty [h, w] array, got shape {codes.shape}")
    h, w = codes.shape
    ids = [tok.boi_id, *size_ids(tok, h, w), tok.img_id]
    for r in range(h):
        ids.extend(tok.code_to_id(int(c)) for c in codes[r])
        if r < h - 1:
            ids.append(tok.eol_id)
    ids.append(tok.eoi_id)
    return ids


def _digit_map(tok: TextTokenizer) -> dict[int, str]:
    return {tok.encode(ch)[0]: ch for ch in "0123456789*"}


def _parse_image(tok: TextTokenizer, ids: list[int], start: int, digits: dict[int, str]) -> tuple[ImageSegment, int]:
    """Parse from ids[start] == BOI; return the segment and the index after it."""
    i, n = start + 1, len(ids)
    header = ""
    while i < n and ids[i] in digits:
        header += digits[ids[i]]
        i += 1

    def fail(kind: str, msg: str, h=None, w=None, rows=None, end=None) -> tuple[ImageSegment, int]:
        if end is None:  # skip to the image's EOI so the rest of the stream still parses
            end = i
            while end < n and ids[end] != tok.eoi_id:
                end += 1
            end = min(end + 1, n)
        codes = np.asarray(rows, dtype=np.int64) if rows else np.zeros((0, w or 0), dtype=np.int64)
        return ImageSegment(h, w, codes, False, f"{kind}: {msg}", ids[start:end]), end

    if i == n:
        return fail("truncated", f"stream ended inside the size header {header!r}", end=n)
    parts = header.split("*")
    if ids[i] != tok.img_id or len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        return fail("malformed", f"expected size 'h*w' then IMG after BOI, got header {header!r} then token {ids[i]}")
    h, w = int(parts[0]), int(parts[1])
    i += 1
    rows: list[list[int]] = []
    row: list[int] = []
    while i < n:
        t = ids[i]
        if tok.is_visual(t):
            if len(row) == w:
                return fail("malformed", f"row {len(rows)} has more than w={w} codes", h, w, rows)
            row.append(tok.id_to_code(t))
        elif t == tok.eol_id:
            if len(row) != w or len(rows) >= h - 1:
                return fail("malformed", f"EOL after {len(row)} codes in row {len(rows)} (w={w}, h={h})", h, w, rows)
            rows.append(row)
            row = []
        elif t == tok.eoi_id:
            if len(row) == w:
                rows.append(row)
                row = []
            if len(rows) != h or row:
                return fail("malformed", f"EOI after {len(rows)} complete rows, expected h={h}", h, w, rows, i + 1)
            return ImageSegment(h, w, np.asarray(rows, dtype=np.int64), True, None, ids[start : i + 1]), i + 1
        else:
            return fail("malformed", f"token {t} inside image rows (row {len(rows)}, col {len(row)})", h, w, rows)
        i += 1
    if len(row) == w:
        rows.append(row)
    return fail("truncated", f"stream ended after {len(rows)} of {h} rows", h, w, rows, n)


def parse_stream(tok: TextTokenizer, ids) -> list[TextSegment | ImageSegment]:
    """Split a token stream into text segments and images, in order."""
    ids = [int(t) for t in ids]
    digits = _digit_map(tok)
    out: list[TextSegment | ImageSegment] = []
    text: list[int] = []
    i = 0
    while i < len(ids):
        if ids[i] == tok.boi_id:
            if text:
                out.append(TextSegment(text, tok.decode(text)))
                text = []
            seg, i = _parse_image(tok, ids, i, digits)
            out.append(seg)
        else:
            text.append(ids[i])
            i += 1
    if text:
        out.append(TextSegment(text, tok.decode(text)))
    return out


def decode_image(tok: TextTokenizer, ids) -> np.ndarray:
    """Exactly one well-formed image BOI..EOI -> codes [h, w]; anything else raises MalformedImageError."""
    segs = parse_stream(tok, ids)
    if len(segs) != 1 or not isinstance(segs[0], ImageSegment):
        raise MalformedImageError(f"expected exactly one image, got {len(segs)} segments")
    if not segs[0].complete:
        raise MalformedImageError(segs[0].error)
    return segs[0].codes
