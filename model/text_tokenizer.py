"""Emu3.5 text tokenizer: tiktoken BPE (`emu3.tiktoken`) + specials + the vision-token list (`emu3_vision_tokens.txt`).

Special tokens are numbered from len(ranks) (151643 with the official file) in the official order:
<|endoftext|>, <|im_start|>, <|im_end|>, <|extra_0|> ... <|extra_204|>, then every line of the vision-token file
(<|image token|>, <|image start|>, <|image end|>, <|visual token 000000|> ...).
"""

from __future__ import annotations

import base64
import re
import unicodedata
from pathlib import Path

import tiktoken

VOCAB_NAME = "emu3.tiktoken"
VISION_TOKENS_NAME = "emu3_vision_tokens.txt"
PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
SPECIAL_SHAPE = re.compile(r"<\|[^<>|]+\|>")  # every official special token: no '<', '|' or '>' inside
BASE_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>") + tuple(f"<|extra_{i}|>" for i in range(205))
IMG, BOI, EOI = "<|image token|>", "<|image start|>", "<|image end|>"

# Named roles (spec §3).
ROLES = {
    "bos": "<|extra_203|>",
    "eos": "<|extra_204|>",
    "pad": "<|endoftext|>",
    "eol": "<|extra_200|>",
    "eof": "<|extra_201|>",
    "tms": "<|extra_202|>",
    "bss": "<|extra_100|>",
    "ess": "<|extra_101|>",
    "bog": "<|extra_60|>",
    "eog": "<|extra_61|>",
    "boc": "<|extra_50|>",
    "eoc": "<|extra_51|>",
    "img": IMG,
    "boi": BOI,
    "eoi": EOI,
}


def visual_token(code: int) -> str:
    return f"<|visual token {code:06d}|>"


def vision_token_list(n_codes: int) -> list[str]:
    """The lines of the vision-token file for a codebook of n_codes."""
    return [IMG, BOI, EOI] + [visual_token(c) for c in range(n_codes)]


def load_ranks(path: str | Path) -> dict[bytes, int]:
    """Read a tiktoken BPE file: lines `base64(token) rank`."""
    ranks = {}
    for i, line in enumerate(Path(path).read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            tok, rank = line.split()
            ranks[base64.b64decode(tok, validate=True)] = int(rank)
        except ValueError as e:
            raise ValueError(f"{path}:{i}: expected 'base64(token) rank', got {line[:60]!r}") from e
    return ranks


def write_ranks(ranks: dict[bytes, int], path: str | Path) -> None:
    with open(path, "w", encoding="utf8") as f:
        for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(tok).decode()} {rank}\n")


class TextTokenizer:
    """tiktoken-based tokenizer with Emu3.5's special and visual tokens."""

    def __init__(self, ranks: dict[bytes, int], vision_tokens: list[str] | None = None):
        specials = list(BASE_SPECIALS) + list(vision_tokens or [])
        if len(set(specials)) != len(specials):
            raise ValueError("special/vision token list has duplicates")
        start = len(ranks)
        if sorted(ranks.values()) != list(range(start)):
            raise ValueError("BPE ranks must be exactly 0..N-1")
        self.special_ids = {tok: start + i for i, tok in enumerate(specials)}
        self.enc = tiktoken.Encoding("emu3", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=self.special_ids)
        self._split_specials = all(SPECIAL_SHAPE.fullmatch(t) for t in specials)
        self.special_start = start
        self.id_to_special = {i: t for t, i in self.special_ids.items()}
        self.visual_start = self.special_ids.get(visual_token(0))  # None without a vision-token list
        self.num_visual = sum(1 for t in (vision_tokens or []) if t.startswith("<|visual token "))
        for role, tok in ROLES.items():
            setattr(self, f"{role}_id", self.special_ids.get(tok))

    # ---- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_files(cls, vocab_file: str | Path, vision_tokens_file: str | Path | None = None) -> TextTokenizer:
        vision = None
        if vision_tokens_file is not None:
            lines = Path(vision_tokens_file).read_text(encoding="utf8").splitlines()
            vision = [t.strip() for t in lines if t.strip()]
        return cls(load_ranks(vocab_file), vision)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> TextTokenizer:
        """A directory holding emu3.tiktoken and (optionally) emu3_vision_tokens.txt."""
        path = Path(path)
        vocab = path / VOCAB_NAME
        if not vocab.is_file():
            raise FileNotFoundError(f"no {VOCAB_NAME} in {path}")
        vision = path / VISION_TOKENS_NAME
        return cls.from_files(vocab, vision if vision.is_file() else None)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_ranks(self.enc._mergeable_ranks, path / VOCAB_NAME)
        vision = [t for t, _ in sorted(self.special_ids.items(), key=lambda kv: kv[1])][len(BASE_SPECIALS) :]
        if vision:
            (path / VISION_TOKENS_NAME).write_text("\n".join(vision) + "\n", encoding="utf8")

    # ---- use --------------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    def encode(self, text: str) -> list[int]:
        """Special-token strings in `text` become their ids (the official default, allowed_special='all').

        tiktoken hands its set of 131k+ special strings to its Rust core on every call (about 50 ms with the official
        vocabulary, whatever the text); when every special has the `<|...|>` shape we find them with one regex and
        encode the text between them as tiktoken would (`encode_ordinary`), with the same ids."""
        text = unicodedata.normalize("NFC", text)
        if not self._split_specials:
            return self.enc.encode(text, allowed_special="all", disallowed_special=())
        out: list[int] = []
        i = 0
        for m in SPECIAL_SHAPE.finditer(text):
            sid = self.special_ids.get(m.group())
            if sid is None:
                continue
            if m.start() > i:
                out += self.enc.encode_ordinary(text[i : m.start()])
            out.append(sid)
            i = m.end()
        if i < len(text):
            out += self.enc.encode_ordinary(text[i:])
        return out

    def decode(self, ids, errors: str = "replace") -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids out of range [0, {self.vocab_size}): {bad[:8]}")
        return self.enc.decode(ids, errors=errors)

    def token_id(self, token: str) -> int:
        if token not in self.special_ids:
            raise KeyError(f"unknown special token {token!r}")
        return self.special_ids[token]

    def is_visual(self, token_id: int) -> bool:
        return self.visual_start is not None and self.visual_start <= token_id < self.visual_start + self.num_visual

    def code_to_id(self, code: int) -> int:
        if self.visual_start is None:
            raise ValueError("this tokenizer has no vision tokens (no emu3_vision_tokens.txt)")
        if not 0 <= code < self.num_visual:
            raise ValueError(f"visual code {code} out of range [0, {self.num_visual})")
        return self.visual_start + code

    def id_to_code(self, token_id: int) -> int:
        if not self.is_visual(token_id):
            raise ValueError(f"token id {token_id} is not a visual token")
        return token_id - self.visual_start


def byte_level_ranks() -> dict[bytes, int]:
    """The 256 single bytes as a complete (merge-free) BPE vocabulary: any text encodes, byte by byte."""
    return {bytes([b]): b for b in range(256)}
