"""Every size limit the service enforces, in one place, with its default; `GetInfo` reports them to clients."""

from __future__ import annotations

from dataclasses import asdict, dataclass

MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Defaults suit one GPU serving the 34B model; `emu35-robot serve --max-queue ...` overrides some of them."""

    max_receive_message_bytes: int = 64 * MiB  # one request: up to max_images encoded images plus text
    max_send_message_bytes: int = 64 * MiB  # one event: a key-frame PNG plus its token grid
    max_images: int = 8  # camera images per request
    max_image_bytes: int = 16 * MiB  # one encoded (PNG/JPEG) or raw image
    max_image_pixels: int = 4096 * 4096  # width * height, checked from the header before decoding
    max_instruction_chars: int = 4096  # instruction / prompt / scene description / explore command
    max_new_tokens: int = 32768  # per request or turn (and never past the engine's context)
    max_subgoals: int = 16  # upper bound a Plan request may ask for
    default_max_subgoals: int = 8  # when a Plan request leaves max_subgoals at 0
    max_queue: int = 8  # requests waiting for the decoder; one more gets RESOURCE_EXHAUSTED
    max_sessions: int = 4  # open Explore sessions (each holds a KV cache between turns)
    max_turns: int = 64  # commands per Explore session
    max_logit_bias: int = 256  # entries in GenerationOptions.logit_bias
    max_batch: int = 8  # requests decoding at once in one batch (each: 2 KV-cache rows of the context); 0: alone

    def to_dict(self) -> dict:
        return asdict(self)
