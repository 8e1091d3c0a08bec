"""Generation engine: interleaved text-and-image decoding under the rules of spec §6-7.

One forward per step for both CFG streams: row 0 is the conditional stream, row 1 the unconditional one. Both rows
write the same cache slot each step; the unconditional row marks the slot valid only for tokens from a BOI to its
EOI, so it sees its own prompt and every generated image but never generated text (spec §7), without a second pass
over the weights. Row lengths differ (two prompts), so the shorter prompt is left-padded with invalid slots and each
row carries its own RoPE positions.

On CUDA the decode step is captured in CUDA graphs (one per batch size, KV-length bucket and head variant), so a step
costs one graph launch; during image rows the head computes only the visual-token slice of the vocabulary.
"""

from __future__ import annotations

import codecs
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from . import jacobi
from .cuda_graphs import warm_and_capture
from .graph_sampler import GraphSampler
from .prompts import TASKS, task_prompt, unconditional_prompt
from .sampling import (
    IMAGE_SAMPLING,
    T2I_IMAGE_SAMPLING,
    TEXT_SAMPLING,
    SamplingParams,
    cfg_combine_pairs,
    checkpoint_image_sampling,
    combine_and_pick,
    draw_width,
    exponential_noise,
    sampling_probs,
)
from .sequence import image_string
from .text_tokenizer import TextTokenizer
from .transformer import Emu35, KVCache
from .vision_tokenizer import VisionTokenizer

# Named aspect ratios as token grids (h, w) at image_area 1024^2 (spec §7); other areas scale them.
ASPECT_GRIDS = {
    "1:1": (64, 64),
    "4:3": (55, 73),
    "3:4": (73, 55),
    "16:9": (47, 85),
    "9:16": (85, 47),
    "21:9": (41, 97),
    "3:2": (52, 78),
    "2:3": (78, 52),
}
MAX_GRID_SIDE = 128
MAX_JACOBI_WINDOW = 64


@dataclass
class GenerationRequest:
    task: str
    question: str
    images: list[Image.Image] = field(default_factory=list)
    text_sampling: SamplingParams = TEXT_SAMPLING
    image_sampling: SamplingParams | None = None  # default: top_k 5120 for t2i, 10240 otherwise
    cfg_scale: float | None = None  # default: 2.0 for t2i/x2i, 3.0 for interleaved tasks; 1.0 turns CFG off
    image_size: tuple[int, int] | None = None  # token grid (h, w) of generated images
    aspect_ratio: str | None = None  # a name of ASPECT_GRIDS, or "auto"; t2i defaults to "4:3"
    max_new_tokens: int | None = None  # default: 5120 for t2i, 32768 otherwise (capped by the engine's max_len)
    seed: int | None = None
    input_image_area: int | None = None  # pixels each reference image is resized to; default config.image_area
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit outside images
    jacobi_window: int = 0  # > 0: speculative Jacobi decoding of image tokens, this many drafts per forward


# ---- events ---------------------------------------------------------------------------------------------------------
@dataclass
class TextDelta:
    text: str
    token_ids: list[int]


@dataclass
class ImageStarted:
    index: int
    h: int
    w: int


@dataclass
class ImageProgress:
    index: int
    rows_done: int
    h: int


@dataclass
class ImageFinished:
    index: int
    codes: np.ndarray  # [h, w]
    image: Image.Image


@dataclass
class Finished:
    reason: str  # "eos" | "length" | "cancelled"
    prompt_tokens: int
    generated_tokens: int
    image_tokens: int
    timings: dict[str, float]
    incomplete_image: bool = False  # a started image was cut off (length/cancel): it was NOT emitted as finished
    token_ids: list[int] = field(default_factory=list)


Event = TextDelta | ImageStarted | ImageProgress | ImageFinished | Finished


# ---- the image grammar ----------------------------------------------------------------------------------------------
class ImageGrammar:
    """Which tokens may follow (spec §7): size digits and IMG after BOI, visual tokens in rows, EOL at row ends, EOI
    after h*(w+1) positions, no visual/structural tokens outside images."""

    def __init__(
        self,
        tok: TextTokenizer,
        fixed_size: tuple[int, int] | None,
        lock_after_first: bool,
        max_side: int = MAX_GRID_SIDE,
    ):
        self.tok, self.fixed, self.lock_after_first, self.max_side = tok, fixed_size, lock_after_first, max_side
        self.digit_ids = {tok.encode(c)[0]: c for c in "0123456789*"}
        self.id_of = {c: i for i, c in self.digit_ids.items()}
        self.mode = "text"  # text | size | rows
        self.header, self.h, self.w, self.k = "", 0, 0, 0
        self.rows_done = 0

    def in_image(self) -> bool:
        return self.mode != "text"

    def forced(self) -> int | None:
        if self.mode == "size" and self.fixed is not None:
            target = f"{self.fixed[0]}*{self.fixed[1]}"
            return self.id_of[target[len(self.header)]] if len(self.header) < len(target) else self.tok.img_id
        if self.mode == "rows":
            return self.forced_at(self.k + 1)
        return None

    def forced_at(self, n: int) -> int | None:
        """In an image: the token the grammar fixes as the n-th after IMG (EOL at a row's end, EOI last), else None."""
        if n == self.h * (self.w + 1):
            return self.tok.eoi_id
        return self.tok.eol_id if n % (self.w + 1) == 0 else None

    def allowed_size_tokens(self) -> list[int]:
        """Auto size: digits, one '*', digits, IMG; no leading zeros, sides in [1, max_side]."""
        hs, _, ws = self.header.partition("*")
        cur = ws if "*" in self.header else hs
        out = []
        if len(cur) < 3:
            out += [self.id_of[d] for d in "0123456789" if (cur or d != "0") and int(cur + d) <= self.max_side]
        if "*" not in self.header and hs:
            out.append(self.id_of["*"])
        if "*" in self.header and ws:
            out.append(self.tok.img_id)
        return out

    def advance(self, t: int) -> str | None:
        """Consume token t; returns "started", "row", "finished" on image milestones."""
        tok = self.tok
        if self.mode == "text":
            if t == tok.boi_id:
                self.mode, self.header = "size", ""
            return None
        if self.mode == "size":
            if t == tok.img_id:
                h, w = (int(x) for x in self.header.split("*"))
                self.mode, self.h, self.w, self.k, self.rows_done = "rows", h, w, 0, 0
                if self.lock_after_first and self.fixed is None:
                    self.fixed = (h, w)
                return "started"
            self.header += self.digit_ids[t]
            return None
        self.k += 1
        if t == tok.eoi_id:
            self.mode = "text"
            self.rows_done = self.h
            return "finished"
        if t == tok.eol_id:
            self.rows_done += 1
            return "row"
        return None


@dataclass
class _DecodeState:
    """What survives a decode: the cache and how far it is filled, per-row RoPE positions, the sampler's RNG, the
    image grammar (its locked size), and the last sampled token, which is not in the cache yet."""

    grammar: ImageGrammar
    gen: torch.Generator
    cache: object
    next_pos: Tensor  # [B] on the CPU: each row's next RoPE position
    slot: int = 0  # slots [0, slot) hold the history
    pending: tuple[int, bool] | None = None  # (token, valid for the unconditional row)
    window_cap: int | None = None  # the most Jacobi drafts per forward the driver allows (a batch: see BatchEngine)


@dataclass
class StepRequest:
    """What one request needs from a decode step: ids/pos/valid [B, T] of its rows (CPU tensors: the driver copies a
    whole step's inputs to the device at once), written at cache slots `slot`..`slot + T - 1` (T = 1, or 1 + drafts
    for a Jacobi window); `visual`: only the visual-token slice of the logits is wanted. The answer: logits [B, V'] for
    T = 1, [B, T, V'] otherwise."""

    ids: Tensor
    pos: Tensor
    valid: Tensor
    slot: int
    visual: bool


@dataclass
class Draw:
    """What one request needs to pick its next token: a draw from `scores` [R, V'] (on the device) with `params` and
    the request's own generator; R = 2 (conditional, unconditional rows) combined with CFG scale `cfg`, or R = 1 and
    cfg None. The answer: the index into V', an int."""

    scores: Tensor
    params: SamplingParams
    gen: torch.Generator
    cfg: float | None = None


def draw_tokens(draws: list[Draw], sampler: GraphSampler | None = None) -> list[int]:
    """Each draw's token, read back from the device together: one host sync for all. Draws with the same sampling
    params, CFG scale and shape are sampled as one batch (one top-k for all rows; each row's random draw comes from
    its own generator), so a request draws the same token in any batch as alone, where `Engine._decode` calls this
    with one. `sampler`: a GraphSampler (CUDA: each group's work after the forward as one graph), else eager."""
    picks, order = launch_draws(draws, sampler)
    out = [0] * len(draws)
    for i, t in zip(order, picks.tolist()):
        out[i] = t
    return out


def launch_draws(draws: list[Draw], sampler: GraphSampler | None = None) -> tuple[Tensor, list[int]]:
    """`draw_tokens` without the read-back: (picks [n] on the device, queued; the index in `draws` of each pick).
    A sampler's picks are its static buffer: read or copy them before its next call."""
    groups: dict[tuple, list[int]] = {}
    for i, d in enumerate(draws):
        groups.setdefault((d.params, d.cfg, tuple(d.scores.shape)), []).append(i)
    picks = []
    for (params, cfg, _), rows in groups.items():
        scores, gens = [draws[i].scores for i in rows], [draws[i].gen for i in rows]
        if sampler is not None:
            picks.append(sampler(scores, cfg, params, gens))
        else:
            scores = torch.stack(scores)  # [n, R, V']
            W = draw_width(scores.shape[-1], params)
            noise = exponential_noise((len(rows), W), scores.device, gens) if W else None
            picks.append(combine_and_pick(scores, cfg, params, noise))
    order = [i for rows in groups.values() for i in rows]
    return (picks[0] if len(picks) == 1 else torch.cat(picks)), order


def _equal_steps(a: StepRequest | None, b: StepRequest) -> bool:
    """Whether the queued step `a` is the step `b` a request asks for (None: nothing was queued for it)."""
    return (
        a is not None
        and torch.equal(a.ids, b.ids)
        and torch.equal(a.pos, b.pos)
        and torch.equal(a.valid, b.valid)
        and (a.slot, a.visual) == (b.slot, b.visual)
    )


def _read_later(x: Tensor) -> Callable[[], list]:
    """Start copying x back to the host without waiting; the returned function waits for that copy alone (not for
    work queued after it, such as a lookahead step) and gives x's values."""
    if x.device.type != "cuda":
        return x.tolist
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    host.copy_(x, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()

    def read() -> list:
        copied.synchronize()
        return host.tolist()

    return read


def _upload(x: Tensor, device: torch.device) -> Tensor:
    """A small CPU tensor on `device`, copied without waiting for the work queued there (through pinned memory: a
    copy from pageable memory may wait for the stream)."""
    return x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x


def capture_graph(lm: Emu35, cache, static: tuple, kv_len: int, vocab_slice: slice | None, pool):
    """One decode forward of `lm` on static inputs (ids, pos, valid, slot), warmed up twice on a side stream and
    captured into a CUDA graph on `pool`; the cache's valid mask, which the warm-ups wrote, is restored.
    Returns (graph, static, its logits)."""
    s_ids, s_pos, s_valid, s_slot = static

    def run():
        return lm(
            s_ids,
            position_ids=s_pos,
            cache=cache,
            cache_pos=s_slot,
            attention_mask=s_valid,
            kv_len=kv_len,
            vocab_slice=vocab_slice,
        ).logits

    saved = cache.valid.clone()
    graph, out = warm_and_capture(run, pool)
    cache.valid.copy_(saved)
    return graph, static, out


# ---- the engine -----------------------------------------------------------------------------------------------------
class Engine:
    """Decode requests on one model. One request at a time (a lock); `model.batching.BatchEngine` batches them."""

    def __init__(
        self,
        lm: Emu35,
        tok: TextTokenizer,
        vq: VisionTokenizer,
        max_len: int = 8192,
        cuda_graphs: bool | None = None,
        graph_bucket: int = 256,
        compile_kernels: bool = False,
        fuse_projections: bool | None = None,
        fp8: bool = False,
        skinny: bool | None = None,
        image_sampling: SamplingParams | None = None,
        triton_attention: bool | None = None,
        lookahead: bool | None = None,
    ):
        self.lm, self.tok, self.vq = lm, tok, vq
        self.device = lm.device
        if self.device.type == "cuda" if fuse_projections is None else fuse_projections:
            lm.fuse_projections()  # in place: the engine owns its model for inference
        if skinny is None:  # the Triton kernel where it runs (a CUDA GPU; float8 also under TRITON_INTERPRET=1):
            from .skinny_mm import skinny_available  # 34B CFG step on an H200: bf16 0.96x cuBLAS's time, float8 0.58x

            skinny = skinny_available(self.device, fp8=fp8) and (fp8 or self.device.type == "cuda")
        if skinny:  # decode products (<= 16 rows) through model/skinny_mm.py (float8: its Gluon kernel up to 8 rows)
            from .skinny_mm import use_skinny

            use_skinny(lm, fp8=fp8)  # autotunes at each shape's first eager call: capture_graph warms up eagerly
        elif fp8:  # float8 weights with per-channel scales (model/fp8.py): half the bytes per decode step
            from .fp8 import quantize_fp8

            quantize_fp8(lm)
        # decode attention as one Triton flash-decoding kernel per layer where it runs (model/decode_attention.py;
        # 34B on an H200: 11.7 us a layer against 14.1 for the three-kernel default at one CFG stream, 25.7 against
        # 37.2 at eight). Process-wide, like the kernels below; None: on for CUDA devices with Triton.
        from .decode_attention import triton_decode_attention_available, use_triton_decode_attention

        if triton_attention is None:
            triton_attention = triton_decode_attention_available(self.device)
        use_triton_decode_attention(triton_attention)
        if compile_kernels:  # fuse each block's elementwise ops (RMSNorm, RoPE, SwiGLU) into single kernels
            from .transformer import compile_kernels as _compile

            _compile()
        self.max_len = min(max_len, lm.config.max_position_embeddings)
        self.image_sampling = image_sampling or IMAGE_SAMPLING  # images of every task but t2i, unless a request says
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        # a step attends its KV cache up to the next multiple of graph_bucket (one captured graph per multiple): 256
        # wastes ~128 slots per row on average where 1024 wasted ~512; 34B, 8 CFG streams on an H200: 21.27 ms per
        # step against 21.89 (128: 20.94, at twice the captures), one stream within noise (benchmarks/RESULTS.md)
        self.graph_bucket = graph_bucket
        c = lm.config
        self.visual = slice(c.visual_token_start, c.visual_token_start + c.num_visual_tokens)
        if tok.visual_start != c.visual_token_start or tok.vocab_size != c.vocab_size:
            raise ValueError(
                f"tokenizer (vocab {tok.vocab_size}, visual start {tok.visual_start}) does not match the "
                f"model config (vocab {c.vocab_size}, visual start {c.visual_token_start})"
            )
        self._lock = threading.Lock()
        self.mirror = None  # rank 0 of a tensor-parallel group: sends each model call to the other ranks (tp_engine)
        self._caches: dict[int, object] = {}
        self._graphs: dict[tuple, tuple] = {}
        self._pool = None
        # with graphs, each draw's CFG combination and top-k run as one captured graph (model/graph_sampler.py)
        self.sampler = GraphSampler() if self.cuda_graphs and self.device.type == "cuda" else None
        # inside an image, queue each step's forward before reading back the token it feeds (`_draw_ahead`): the GPU
        # no longer idles while the host reads the token, runs the grammar and streams events. None: on with graphs
        self.lookahead = self.sampler is not None if lookahead is None else lookahead
        self._text_mask = self._outside_image_mask()

    def _outside_image_mask(self) -> Tensor:
        """[V] bool: tokens forbidden outside images (visual tokens and image structure)."""
        m = torch.zeros(self.lm.config.vocab_size, dtype=torch.bool, device=self.device)
        m[self.visual] = True
        m[[self.tok.img_id, self.tok.eoi_id, self.tok.eol_id]] = True
        return m

    def _text_bias(self, logit_bias: dict[int, float]) -> Tensor:
        """[V] on the device, added to the logits of a text token: the request's logit bias, -inf where `_text_mask`
        forbids (one add per token, as the bias added token by token and the mask then set to -inf)."""
        b = torch.zeros(self.lm.config.vocab_size)
        for k, v in logit_bias.items():
            b[k] = v
        return b.to(self.device).masked_fill_(self._text_mask, float("-inf"))

    # ---- request defaults -----------------------------------------------------------------------------------
    def _resolve(self, req: GenerationRequest):
        if req.task not in TASKS:
            raise ValueError(f"unknown task {req.task!r}; expected one of {', '.join(TASKS)}")
        if not isinstance(req.question, str):
            raise ValueError("question must be a string")
        req.text_sampling.validate("text_sampling")
        image_sampling = req.image_sampling or (T2I_IMAGE_SAMPLING if req.task == "t2i" else self.image_sampling)
        image_sampling.validate("image_sampling")
        cfg = req.cfg_scale if req.cfg_scale is not None else (2.0 if req.task in ("t2i", "x2i") else 3.0)
        if not (math.isfinite(cfg) and cfg >= 1.0):
            raise ValueError(f"cfg_scale must be a finite number >= 1, got {cfg}")
        size = req.image_size
        if size is None:
            aspect = req.aspect_ratio or ("4:3" if req.task == "t2i" else "auto")
            if aspect != "auto":
                if aspect not in ASPECT_GRIDS:
                    raise ValueError(f"unknown aspect_ratio {aspect!r}; expected auto or one of {list(ASPECT_GRIDS)}")
                s = math.sqrt(self.lm.config.image_area / 1024**2)
                size = tuple(max(1, round(x * s)) for x in ASPECT_GRIDS[aspect])
        if size is not None and not all(isinstance(x, int) and 1 <= x <= MAX_GRID_SIDE for x in size):
            raise ValueError(f"image_size must be two token counts in [1, {MAX_GRID_SIDE}], got {size}")
        default_max = 5120 if req.task == "t2i" else 32768
        max_new = req.max_new_tokens if req.max_new_tokens is not None else default_max
        if max_new < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new}")
        w = req.jacobi_window
        if isinstance(w, bool) or not (isinstance(w, int) and 0 <= w <= MAX_JACOBI_WINDOW):
            raise ValueError(f"jacobi_window must be an integer in [0, {MAX_JACOBI_WINDOW}], got {req.jacobi_window!r}")
        bad = [k for k, v in req.logit_bias.items() if not 0 <= k < self.lm.config.vocab_size or not math.isfinite(v)]
        if bad:
            raise ValueError(f"logit_bias has token ids out of range or non-finite values: {bad[:8]}")
        return image_sampling, cfg, size, max_new

    def encode_images(self, images: list[Image.Image], image_area: int) -> list[np.ndarray]:
        return [c.cpu().numpy() for c in self.vq.encode_pil(list(images), image_area)] if images else []

    # ---- model calls: every one goes through new_cache, forward or _step (what a tensor-parallel leader mirrors) --
    def new_cache(self, B: int) -> KVCache:
        """A KV cache of B rows and max_len slots (on a tensor-parallel leader, every rank allocates its part)."""
        cache = self.lm.allocate_cache(B, self.max_len)
        if self.mirror is not None:
            self.mirror.alloc(cache)
        return cache

    def _cache(self, B: int):
        if B not in self._caches:
            self._caches[B] = self.new_cache(B)
        cache = self._caches[B]
        cache.reset()
        return cache

    def _mirrored(self, op: str, cache, ids, pos, valid, kv_len, **kw):
        if self.mirror is None:
            return contextlib.nullcontext()
        return self.mirror.call(op, cache, ids, pos, valid, kv_len, **kw)

    def forward(
        self,
        cache: KVCache,
        ids: Tensor,
        pos: Tensor,
        cache_pos: Tensor,
        valid: Tensor,
        kv_len: int,
        logits_to_keep: int = 0,
        visual: bool = False,
    ) -> Tensor:
        """An eager forward of ids/pos/valid [B, T] (on the CPU or the device) written at `cache_pos` ([T], or [B, T]
        per row) -> float logits [B, T', V'] (T' = logits_to_keep or T; V' = the visual slice when `visual`)."""
        kw = dict(cache_pos=cache_pos, logits_to_keep=logits_to_keep, visual=visual)
        with self._mirrored("forward", cache, ids, pos, valid, kv_len, **kw):
            ids, pos, cache_pos, valid = (x.to(self.device, non_blocking=True) for x in (ids, pos, cache_pos, valid))
            return self.lm(
                ids,
                position_ids=pos,
                cache=cache,
                cache_pos=cache_pos,
                attention_mask=valid,
                kv_len=kv_len,
                logits_to_keep=logits_to_keep,
                vocab_slice=self.visual if visual else None,
            ).logits

    def kv_bucket(self, top: int) -> int:
        """The attended length of a step whose highest slot is `top`: a multiple of graph_bucket (one graph each)."""
        return min(self.max_len, (top // self.graph_bucket + 1) * self.graph_bucket)

    def _step(
        self,
        cache,
        ids: Tensor,
        pos: Tensor,
        valid: Tensor,
        slot: int,
        visual_head: bool,
        graphs: bool = True,
        ids_on_device: bool = False,
    ) -> Tensor:
        """One decode step: ids/pos/valid [B, 1] (on the CPU or the device) -> logits [B, V'] (V' = visual slice when
        visual_head). Captured graphs are bound to the engine's own caches, so a session's cache (graphs=False) runs
        eagerly. `ids_on_device`: ids not yet known on the host (a lookahead step): a mirror broadcasts them."""
        kv_len = self.kv_bucket(slot)
        kw = dict(slot=slot, visual=visual_head, graphs=graphs) | ({"broadcast_ids": True} if ids_on_device else {})
        with self._mirrored("step", cache, ids, pos, valid, kv_len, **kw):
            return self._run_step(cache, ids, pos, valid, slot, visual_head, graphs, kv_len)

    def _run_step(self, cache, ids, pos, valid, slot, visual_head, graphs, kv_len) -> Tensor:
        vs = self.visual if visual_head else None
        if not self.cuda_graphs or not graphs:
            ids, pos, valid = (x.to(self.device, non_blocking=True) for x in (ids, pos, valid))
            slot_t = torch.tensor([slot], device=self.device)
            return self.lm(
                ids,
                position_ids=pos,
                cache=cache,
                cache_pos=slot_t,
                attention_mask=valid,
                kv_len=kv_len,
                vocab_slice=vs,
            ).logits[:, -1]
        key = (ids.shape[0], kv_len, visual_head)
        if key not in self._graphs:
            self._graphs[key] = self._capture(cache, ids.shape[0], kv_len, vs)
        graph, (s_ids, s_pos, s_valid, s_slot), out = self._graphs[key]
        s_ids.copy_(ids, non_blocking=True)
        s_pos.copy_(pos, non_blocking=True)
        s_valid.copy_(valid, non_blocking=True)
        s_slot.fill_(slot)
        graph.replay()
        return out[:, -1]

    def release_graphs(self) -> None:
        """Drop every captured decode graph (the next step captures again), finishing the work in flight first."""
        if self._graphs and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._graphs.clear()

    def _capture(self, cache, B: int, kv_len: int, vs: slice | None):
        dev = self.device
        # (ids, pos, valid, slot); the warm-ups write the bucket's last slot, which no real token holds yet
        static = (
            torch.zeros(B, 1, dtype=torch.long, device=dev),
            torch.zeros(B, 1, dtype=torch.long, device=dev),
            torch.zeros(B, 1, dtype=torch.bool, device=dev),
            torch.full((1,), kv_len - 1, dtype=torch.long, device=dev),
        )
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return capture_graph(self.lm, cache, static, kv_len, vs, self._pool)

    # ---- generation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, req: GenerationRequest, cancel: threading.Event | None = None) -> Iterator[Event]:
        image_sampling, cfg, size, max_new = self._resolve(req)
        with self._lock:
            yield from self._generate(req, cancel, image_sampling, cfg, size, max_new)

    def _generate(self, req, cancel, image_sampling, cfg, size, max_new) -> Iterator[Event]:
        tok, lm = self.tok, self.lm
        t_start = time.perf_counter()
        ref_codes = self.encode_images(req.images, req.input_image_area or lm.config.image_area)
        strings = [image_string(tok, c) for c in ref_codes]
        cond = tok.encode(task_prompt(req.task, req.question, strings))
        uncond = tok.encode(unconditional_prompt(strings))
        use_cfg = cfg != 1.0
        rows = [cond, uncond] if use_cfg else [cond]
        L = max(len(r) for r in rows)
        if L >= self.max_len:
            raise ValueError(f"prompt of {L} tokens does not fit the engine's max_len {self.max_len}")
        state = _DecodeState(
            grammar=self._grammar(size, ref_codes),
            gen=self._generator(req.seed),
            cache=self._cache(len(rows)),
            next_pos=torch.zeros(len(rows), dtype=torch.long),
        )
        yield from self._decode(
            req,
            cancel,
            image_sampling,
            cfg,
            state,
            [[(t, True) for t in r] for r in rows],
            max_new,
            t_start,
            len(cond),
            graphs=True,
        )

    def session(self, req: GenerationRequest) -> Session:
        """A multi-turn conversation (the explore task) that keeps its KV cache between turns; see `Session`."""
        image_sampling, cfg, size, max_new = self._resolve(req)
        return Session(self, req, image_sampling, cfg, size, max_new)

    def _grammar(self, size, ref_codes) -> ImageGrammar:
        distinct_refs = len({c.shape for c in ref_codes}) > 1
        # auto sizes stay within 2.5x the side of the model's image area (128 tokens at 1024^2)
        max_side = min(MAX_GRID_SIDE, math.ceil(2.5 * math.sqrt(self.lm.config.image_area) / self.vq.downsample_factor))
        return ImageGrammar(self.tok, size, lock_after_first=not distinct_refs, max_side=max_side)

    def _generator(self, seed: int | None) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,))))
        return gen

    def _decode(self, req, cancel, image_sampling, cfg, state, new, max_new, t_start, prompt_tokens, graphs):
        """Prefill `new` (per row: (token, valid) pairs appended after the cache's `state.slot` filled slots; rows are
        left-padded with invalid slots) and decode up to `max_new` tokens. Leaves `state` ready for another turn: the
        last sampled token is not in the cache yet (`state.pending`)."""
        core = self._decode_steps(req, cancel, image_sampling, cfg, state, new, max_new, t_start, prompt_tokens)
        ahead_ok = self.can_look_ahead() and req.jacobi_window <= 0
        answer = None
        last = None  # the last one-token step: inside an image, the next one feeds the drawn token one slot on
        ahead = None  # (the step queued before its token was read, its logits)
        try:
            while True:
                try:
                    item = core.send(answer)
                except StopIteration:
                    return
                answer = None
                if isinstance(item, Draw):
                    nxt = self._predict_step(last) if ahead_ok and state.grammar.mode == "rows" else None
                    if nxt is not None:
                        answer, logits = self._draw_ahead(item, state.cache, nxt, graphs)
                        nxt.ids.fill_(answer + self.visual.start)
                        ahead = (nxt, logits)
                    else:
                        (answer,) = draw_tokens([item], self.sampler)  # the same draw as in a batch, a batch of one
                elif isinstance(item, StepRequest) and item.ids.shape[1] > 1:  # a Jacobi window: eager, [B, T, V']
                    T, slot = item.ids.shape[1], item.slot
                    slots = torch.arange(slot, slot + T)
                    answer = self.forward(
                        state.cache, item.ids, item.pos, slots, item.valid, slot + T, visual=item.visual
                    )
                    last = None
                elif isinstance(item, StepRequest):
                    if ahead is not None and _equal_steps(ahead[0], item):
                        answer = ahead[1]
                    else:
                        if ahead is not None and ahead[0].slot != item.slot:  # the queued write is not overwritten
                            state.cache.valid[:, ahead[0].slot] = False
                        answer = self._step(state.cache, item.ids, item.pos, item.valid, item.slot, item.visual, graphs)
                    ahead, last = None, item
                else:
                    yield item
        finally:
            if ahead is not None:  # queued for a token the decode did not feed (it stopped): no valid slot left
                state.cache.valid[:, ahead[0].slot] = False

    def can_look_ahead(self) -> bool:
        """Whether image steps may be queued before their tokens are read (`lookahead`; a tensor-parallel leader
        only if its mirror sends such steps' ids by a broadcast: `start_tensor_parallel(tp_lookahead=True)`)."""
        return self.lookahead and (self.mirror is None or self.mirror.lookahead)

    def _predict_step(self, last: StepRequest | None) -> StepRequest | None:
        """The step that follows `last` inside an image: the drawn token (ids unknown yet) at the next slot, every
        row's position one on, every row valid, visual logits."""
        if last is None:
            return None
        B = last.ids.shape[0]
        ids = torch.zeros(B, 1, dtype=torch.long)
        return StepRequest(ids, last.pos + last.valid.long(), torch.ones(B, 1, dtype=torch.bool), last.slot + 1, True)

    def _draw_ahead(self, draw: Draw, cache, nxt: StepRequest, graphs: bool = True) -> tuple[int, Tensor]:
        """Draw `draw`'s token and, before reading it back, queue the step `nxt` that feeds it (its ids taken from the
        device): the GPU runs that forward while the host reads the token, advances the grammar and streams events.
        The same draw and the same step as one after the other, so the same tokens. -> (index into V', logits)."""
        picks, _ = launch_draws([draw], self.sampler)  # [1] on the device
        read = _read_later(picks)
        ids = (picks.view(1, 1) + self.visual.start).expand(nxt.ids.shape[0], 1)
        # pinned host tensors: their upload does not wait for the stream (a pageable one would), and a mirror reads
        # them without a device sync
        pos, valid = (x.pin_memory() if self.device.type == "cuda" else x for x in (nxt.pos, nxt.valid))
        logits = self._step(cache, ids, pos, valid, nxt.slot, nxt.visual, graphs, ids_on_device=True)
        return read()[0], logits

    def _jacobi_span(self, req: GenerationRequest, state: _DecodeState, budget: int) -> int:
        """Drafts for the next forward: within the image, short of its EOI (which is forced), within the budget and
        the driver's cap."""
        grammar, window = state.grammar, req.jacobi_window
        if state.window_cap is not None:
            window = min(window, state.window_cap)
        if window <= 0 or grammar.mode != "rows":
            return 0
        return max(0, min(window, grammar.h * (grammar.w + 1) - 1 - grammar.k, budget))

    def _drafts(self, carry: Tensor | None, m: int, gen: torch.Generator) -> tuple[list[int], Tensor]:
        """m draft indices into the visual slice and the q [m, V'] they were drawn from: from the last forward's p
        where it reaches (the Jacobi update), uniform beyond."""
        n = 0 if carry is None else min(m, carry.shape[0])
        V = self.visual.stop - self.visual.start
        drafts, q = jacobi.uniform(m - n, V, gen, self.device)
        if n:
            drawn = jacobi.draw(carry[:n], gen).tolist()
            drafts, q = drawn + drafts, torch.cat([carry[:n], q])
        return drafts, q

    def _decode_steps(self, req, cancel, image_sampling, cfg, state, new, max_new, t_start, prompt_tokens):
        """`_decode` as a coroutine: yields events, a `Draw` wherever it samples a token (the driver sends the token
        back) and a `StepRequest` wherever it needs the next decode step's logits (the driver sends them back).
        `Engine._decode` drives one request alone; `BatchEngine` runs the steps of every running request in one
        forward and their draws with one read from the device."""
        tok, dev = self.tok, self.device
        grammar, gen, cache = state.grammar, state.gen, state.cache
        B, L, S = len(new), max(len(r) for r in new), state.slot
        use_cfg = B == 2
        max_new = min(max_new, self.max_len - S - L)

        # prefill: pads are invalid slots; each row's positions count its own valid tokens
        ids = torch.full((B, L), tok.pad_id, dtype=torch.long)
        valid = torch.zeros(B, L, dtype=torch.bool)
        for b, r in enumerate(new):
            if r:
                ids[b, L - len(r) :] = torch.tensor([t for t, _ in r])
                valid[b, L - len(r) :] = torch.tensor([v for _, v in r])
        pos = (state.next_pos[:, None] + valid.long().cumsum(1) - 1).clamp(min=0)
        text_bias = self._text_bias(req.logit_bias)  # [V]: the request's logit bias, -inf outside images
        t0 = time.perf_counter()
        slots = torch.arange(S, S + L, device=dev)
        logits = self.forward(cache, ids, pos, slots, valid, S + L, logits_to_keep=1)[:, -1]
        next_pos = state.next_pos + valid.sum(1)
        t_prefill = time.perf_counter() - t0
        L = S + L  # the first decode step writes slot L

        generated: list[int] = []
        text_pending: list[int] = []
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        n_images = image_tokens = forwards = 0
        img_codes: list[int] = []
        reason = "length"
        t_first = None
        t_decode = time.perf_counter()
        visual_logits = was_image = False
        decided: int | None = None  # a token that Jacobi verification already chose
        carry = None  # [n, V'] Jacobi: the last forward's p at the n positions after `decided`, the next drafts' q

        def take(t: int) -> Iterator[Event]:
            """Append token t: advance the grammar and emit what it completes."""
            nonlocal text_pending, img_codes, image_tokens, n_images, t_first, was_image
            if t_first is None:
                t_first = time.perf_counter() - t_start
            generated.append(t)
            was_image = grammar.in_image()
            milestone = grammar.advance(t)
            if not was_image and t != tok.boi_id and t != tok.eos_id:
                text_pending.append(t)
                text = utf8.decode(tok.enc.decode_single_token_bytes(t))
                if text:
                    yield TextDelta(text, text_pending)
                    text_pending = []
            if grammar.mode == "rows" and tok.is_visual(t):
                img_codes.append(tok.id_to_code(t))
                image_tokens += 1
            if milestone == "started":
                img_codes = []
                yield ImageStarted(n_images, grammar.h, grammar.w)
            elif milestone == "row":
                yield ImageProgress(n_images, grammar.rows_done, grammar.h)
            elif milestone == "finished":
                codes = np.asarray(img_codes, dtype=np.int64).reshape(grammar.h, grammar.w)
                image = self.vq.decode_pil(torch.from_numpy(codes))[0]
                yield ImageProgress(n_images, grammar.h, grammar.h)
                yield ImageFinished(n_images, codes, image)
                n_images += 1

        while len(generated) < max_new:
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
            forced = grammar.forced()
            if forced is not None:
                t = forced
            elif decided is not None:
                t = decided
            elif grammar.mode == "rows":
                scores = logits if visual_logits else logits[:, self.visual]  # [B, V']
                draw = Draw(scores, image_sampling, gen, cfg) if use_cfg else Draw(scores[:1], image_sampling, gen)
                t = self.visual.start + (yield draw)
            else:
                if grammar.mode == "size":
                    allowed = _upload(torch.tensor(grammar.allowed_size_tokens()), dev)
                    bias = torch.full_like(logits[0], float("-inf")).index_fill_(0, allowed, 0.0)
                else:
                    bias = text_bias
                t = yield Draw(logits[:1] + bias, req.text_sampling, gen)
            decided = None
            yield from take(t)
            if t == tok.eos_id:
                reason = "eos"
                break
            if len(generated) == max_new:
                break
            slot = L + len(generated) - 1  # t's slot: every token before it is in the cache
            forwards += 1
            m = self._jacobi_span(req, state, max_new - len(generated) - 1)
            if m == 0:
                # the unconditional row keeps image tokens (BOI..EOI) and skips text: an invalid slot, same position
                u_valid = was_image or grammar.in_image()
                valid_t = torch.tensor([[True], [u_valid]][:B])
                ids_t = torch.full((B, 1), t, dtype=torch.long)
                visual_logits = grammar.mode == "rows"
                logits = yield StepRequest(ids_t, next_pos[:, None], valid_t, slot, visual_logits)
                next_pos = next_pos + valid_t[:, 0].long()
                carry = None
                continue
            # Jacobi: feed t and m drafts in one forward, keep the drafts that pass (model/jacobi.py)
            fixed = [grammar.forced_at(grammar.k + 1 + j) for j in range(m + 1)]  # EOL at row ends, else None
            drafts, q = self._drafts(carry, m, gen)
            ids = [t] + [f if f is not None else self.visual.start + d for f, d in zip(fixed, drafts)]
            ids_t = torch.tensor([ids] * B, dtype=torch.long)
            pos_t = next_pos[:, None] + torch.arange(m + 1)
            out = yield StepRequest(ids_t, pos_t, torch.ones_like(ids_t, dtype=torch.bool), slot, True)  # [B, m+1, V']
            p = sampling_probs(cfg_combine_pairs(out, cfg, 0) if use_cfg else out[0], image_sampling)
            a, x = jacobi.accept(p, q, drafts, [f is not None for f in fixed], gen)
            next_pos = next_pos + 1 + a  # inside an image every row's slots are valid
            for j in range(a):  # accepted drafts are in the cache already
                yield from take(ids[1 + j])
            decided = fixed[a] if x is None else self.visual.start + x
            carry = p[a + 1 :] if a < m else None

        if text_pending:
            tail = utf8.decode(b"", final=True)
            if tail:
                yield TextDelta(tail, text_pending)
        decode_s = time.perf_counter() - t_decode
        fed = max(0, len(generated) - 1)  # every sampled token but the last went through the model
        state.slot, state.next_pos = L + fed, next_pos
        state.pending = (generated[-1], grammar.in_image() or was_image) if generated else None
        yield Finished(
            reason=reason,
            prompt_tokens=prompt_tokens,
            generated_tokens=len(generated),
            image_tokens=image_tokens,
            incomplete_image=grammar.in_image(),
            token_ids=generated,
            timings={
                "prefill_s": t_prefill,
                "decode_s": decode_s,
                "first_token_s": t_first or 0.0,
                "total_s": time.perf_counter() - t_start,
                "ms_per_token": 1000 * decode_s / max(1, len(generated)),
                "decode_forwards": forwards,
            },
        )


def load_engine(
    model_dir: str | Path,
    tokenizer_dir: str | Path,
    vision_tokenizer_dir: str | Path,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    max_len: int = 8192,
    fp8: bool = False,
    kernels: bool = True,
) -> Engine:
    """An engine on the three official-layout parts, set up to serve: bf16 on CUDA and float32 elsewhere unless
    `dtype` says; on CUDA with fused projections, compiled elementwise kernels and CUDA graphs (benchmarks/RESULTS.md:
    26.5 -> 19.3 ms per 34B step); `fp8`: float8 weights (through the Triton kernel where it runs). `kernels=False`
    keeps plain torch ops on CUDA too (CUDA graphs still): no compile per new batch shape, and float32 products as
    cuBLAS computes them, for a model too small for the kernels to matter (`eval --mini-device cuda`)."""
    cuda = str(device).startswith("cuda")
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    plain = {} if kernels else {"fuse_projections": False, "skinny": False, "triton_attention": False}
    return Engine(
        Emu35.from_pretrained(model_dir, dtype=dtype, device=device),
        TextTokenizer.from_pretrained(tokenizer_dir),
        VisionTokenizer.from_pretrained(vision_tokenizer_dir, device=device),
        max_len=max_len,
        compile_kernels=cuda and kernels,
        fp8=fp8,
        image_sampling=checkpoint_image_sampling(model_dir),
        **plain,
    )


class Session:
    """A conversation that keeps its own KV cache and token history, so a turn prefills only its new tokens.

    The first `turn()` runs `req` as an ordinary request (task prompt, question, images). Each later
    `turn(command)` appends `<last answer token> USER: {command} ASSISTANT: <|extra_100|>` to the cached history and
    decodes the answer: the release's single-turn template, continued the way its chat turns are written, since the
    release defines no multi-turn format. With CFG the unconditional row keeps its prompt and every generated image;
    the user's later text is invalid (unseen) there, as generated text is. A cancelled turn is rolled back (the
    session continues as if it had not been sent); a turn cut by max_new_tokens inside an image keeps its text but
    drops the cut image from the history. Turns take the engine's lock, one at a
    time with every other request; between turns the session holds only its cache (`max_len` slots per CFG row).
    Sessions decode eagerly: captured CUDA graphs belong to the engine's own caches.
    """

    def __init__(self, engine: Engine, req: GenerationRequest, image_sampling, cfg, size, max_new):
        self.engine, self.req = engine, req
        self.image_sampling, self.cfg, self.size, self.max_new = image_sampling, cfg, size, max_new
        self.turns = 0
        self.state: _DecodeState | None = None

    @property
    def context_tokens(self) -> int:
        """Slots of the session's cache in use (prompt, commands and answers so far)."""
        return 0 if self.state is None else self.state.slot + (self.state.pending is not None)

    def close(self) -> None:
        """Free the cache now rather than when the session is garbage-collected."""
        self.state = None

    @torch.no_grad()
    def turn(self, command: str | None = None, cancel: threading.Event | None = None) -> Iterator[Event]:
        if (command is None) != (self.turns == 0):
            raise ValueError("the first turn takes no command; every later turn needs one")
        if command is not None and not isinstance(command, str):
            raise ValueError("command must be a string")
        eng = self.engine
        with eng._lock:
            t_start = time.perf_counter()
            if self.state is None and self.turns > 0:
                raise ValueError("session is closed")
            if self.state is None:
                tok, lm = eng.tok, eng.lm
                ref_codes = eng.encode_images(self.req.images, self.req.input_image_area or lm.config.image_area)
                strings = [image_string(tok, c) for c in ref_codes]
                cond = tok.encode(task_prompt(self.req.task, self.req.question, strings))
                rows = [cond, tok.encode(unconditional_prompt(strings))] if self.cfg != 1.0 else [cond]
                if max(len(r) for r in rows) >= eng.max_len:
                    raise ValueError(f"prompt of {max(map(len, rows))} tokens does not fit max_len {eng.max_len}")
                B = len(rows)
                state = _DecodeState(
                    grammar=eng._grammar(self.size, ref_codes),
                    gen=eng._generator(self.req.seed),
                    cache=eng.new_cache(B),
                    next_pos=torch.zeros(B, dtype=torch.long),
                )
                new = [[(t, True) for t in r] for r in rows]
                prompt_tokens = len(cond)
            else:
                state = self.state
                B = state.next_pos.shape[0]
                text = eng.tok.encode(f" USER: {command} ASSISTANT: <|extra_100|>")
                head = [state.pending] if state.pending is not None else []
                new = [[(head[0][0], True)] if head else []] + [[]] * (B - 1)
                new[0] += [(t, True) for t in text]
                if B == 2:
                    new[1] = [(t, bool(head) and i == 0 and head[0][1]) for i, (t, _) in enumerate(new[0])]
                prompt_tokens = len(new[0])
                if state.slot + len(new[0]) >= eng.max_len:
                    raise ValueError(
                        f"session context full: {state.slot} + {len(new[0])} tokens >= max_len {eng.max_len}"
                    )
            saved = (state.slot, state.next_pos.clone(), state.pending, state.grammar.fixed)
            committed = False
            try:
                for e in eng._decode(
                    self.req,
                    cancel,
                    self.image_sampling,
                    self.cfg,
                    state,
                    new,
                    self.max_new,
                    t_start,
                    prompt_tokens,
                    graphs=False,
                ):
                    if isinstance(e, Finished) and e.reason != "cancelled":
                        # commit before the caller sees Finished: it may read context_tokens right away
                        self._commit(state, saved, new, e)
                        committed = True
                    yield e
            finally:  # cancelled, failed, or the caller stopped iterating (GeneratorExit): roll the turn back
                if not committed:
                    state.slot, state.next_pos, state.pending, state.grammar.fixed = saved
                    state.cache.valid[:, state.slot :] = False
                    state.grammar.mode = "text"

    def _commit(self, state: _DecodeState, saved: tuple, new: list, fin: Finished) -> None:
        if fin.incomplete_image:  # cut by max_new_tokens: keep the text, drop the cut image
            boi = len(fin.token_ids) - 1 - fin.token_ids[::-1].index(self.engine.tok.boi_id)
            cut = saved[0] + max(len(r) for r in new) + boi  # the BOI's slot
            state.next_pos = state.next_pos - max(0, state.slot - cut)  # image slots are valid in all rows
            state.slot, state.pending = min(cut, state.slot), None
            state.cache.valid[:, state.slot :] = False
            state.grammar.mode = "text"
        self.state = state
        self.turns += 1
