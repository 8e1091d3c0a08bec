"""Emu3.5: config, transformer, tokenizers, vision tokenizer, sequence codec. Knows nothing of robots."""

from .checkpoint import CheckpointError, load_emu35, save_emu35
from .config import ConfigError, Emu35Config
from .random_checkpoint import Bundle, write_random_bundle
from .sequence import ImageSegment, MalformedImageError, TextSegment, decode_image, encode_image, parse_stream
from .text_tokenizer import TextTokenizer
from .transformer import CausalLMOutput, Emu35, KVCache
from .vision_tokenizer import VisionTokenizer, smart_resize

__all__ = [
    "Bundle",
    "CausalLMOutput",
    "CheckpointError",
    "ConfigError",
    "Emu35",
    "Emu35Config",
    "ImageSegment",
    "KVCache",
    "MalformedImageError",
    "TextSegment",
    "TextTokenizer",
    "VisionTokenizer",
    "decode_image",
    "encode_image",
    "load_emu35",
    "parse_stream",
    "save_emu35",
    "smart_resize",
    "write_random_bundle",
]
