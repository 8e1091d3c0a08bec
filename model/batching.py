"""Continuous batching: requests join a running batch at the next decode step and leave it the step they finish.

`BatchEngine` owns one KV cache of 2 * max_streams rows; a request holds one pair of rows (row 0 conditional, row 1
unconditional with CFG; the second row stays unused without CFG) for as long as it decodes. Its prompt is prefilled
alone, into a view of its own rows (the same forward `Engine.generate` runs), and from then on one forward per step
serves every running request: the rows are at different lengths, so each row writes its own cache slot (`cache_pos`
[B, 1]) with its own RoPE position and valid-slot mask. CFG, logit bias, the image grammar and the seeded generator stay
per request: the per-request logic is `Engine._decode_steps` itself, a coroutine that asks for each step's logits (a
`StepRequest`) and for each token it samples (a `Draw` of its scores), so a request decodes the same tokens whether it
runs alone or in a batch (up to the last bit of the float arithmetic, which may differ between batch sizes). A step
keeps the device busy and the host out of its way: the requests' inputs (token, position, valid flag per row: CPU
tensors) are assembled on the host and copied over once per step without waiting; after the forward every request runs
on to its draw, the draws are launched together (`engine.draw_tokens`: one top-k per group of requests with the same
sampling params, each row's random draw from its own generator, exactly as alone; with graphs each group's CFG and
draw replay as one graph), and their tokens are read back in one
transfer, the step's only wait for the device (a Jacobi window's verification still reads its own results). A request
running a Jacobi window (model/jacobi.py) brings T > 1 tokens to the step: the forward then takes T tokens per row, and
a request with fewer repeats its last token at its last slot (the same write twice). Since every row then computes T
tokens, windows are capped so that rows x T stays within `max_step_tokens` (128: about where a decode GEMM at 34B stops
being bound by reading the weights on an H200, so a window costs the batch nothing; a guess from the roofline, not yet
measured).

The forward spans rows [0, highest occupied row]: free pairs are taken lowest first, and rows of free or cancelled
pairs inside that span run a dummy token at slot 0 that no request reads (a pair's valid mask is cleared when it is
taken, and its prefill rewrites slot 0). The step runs eagerly, or with `cuda_graphs` each (rows, KV bucket,
head) shape is captured once and replayed, like `Engine`'s single-request steps; the default follows the engine's
`cuda_graphs` (checked on an H200 by tests/test_engine_cuda.py; benchmarks/batching.py --graphs: 8 streams 1.6x the
eager batch's tokens/s). A tensor-parallel engine always runs the batch eagerly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .engine import (
    Draw,
    Engine,
    GenerationRequest,
    StepRequest,
    _DecodeState,
    _equal_steps,
    _read_later,
    _upload,
    capture_graph,
    draw_tokens,
    launch_draws,
)
from .graph_sampler import GraphSampler
from .prompts import task_prompt, unconditional_prompt
from .sequence import image_string


@dataclass
class _Member:
    rows: slice
    pair: int
    core: object  # the request's `Engine._decode_steps` coroutine
    state: _DecodeState
    cancel: threading.Event
    emit: Callable[[object], None]  # events, then an exception if the request failed
    done: Callable[[], None]
    need: StepRequest | None = None  # the step it waits for
    draw: Draw | None = None  # the token it waits for
    answer: object = None  # what it is sent next: the step's logits or the drawn token
    last: StepRequest | None = None  # its last one-token step (inside an image the next is predictable from it)
    ahead_ok: bool = True  # no Jacobi window: its steps are one token each


class BatchEngine:
    """Decode up to `max_streams` requests at once on `engine`'s model. Not thread-safe: one thread calls `add` and
    `step` (the service's decoding worker)."""

    def __init__(
        self,
        engine: Engine,
        max_streams: int = 8,
        cuda_graphs: bool | None = None,
        max_step_tokens: int = 128,
        lookahead: bool | None = None,
    ):
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        self.engine, self.max_streams = engine, max_streams
        # Jacobi windows widen every row of a step to the longest window: rows x tokens is capped where a decode
        # GEMM stops being bound by reading the weights (~165 rows on an H200 in bf16), so windows stay free
        self.max_step_tokens = max_step_tokens
        graphs = engine.cuda_graphs if cuda_graphs is None else cuda_graphs  # default: as the engine's own steps
        self.cuda_graphs = graphs and engine.device.type == "cuda" and engine.mirror is None
        # draws as captured graphs, like the steps
        self.sampler = (engine.sampler or GraphSampler()) if self.cuda_graphs else None
        self._graphs: dict[tuple, tuple] = {}
        self._pool = None
        self.cache = engine.new_cache(2 * max_streams)
        self.free = list(range(max_streams))
        self.members: list[_Member] = []
        self.steps = 0  # batched decode steps run
        self.peak = 0  # most requests in one step
        self.last = 0  # requests in the last step
        # queue the next step before the tokens are read back when every request is inside an image
        # (`_draw_and_queue_ahead`): by default as the engine does, where the batch's steps and draws are graphs
        # (8 CFG image streams on an H200: 19.35 against 20.10 ms a step, benchmarks/RESULTS.md); never for a
        # tensor-parallel engine
        on = engine.lookahead and self.cuda_graphs if lookahead is None else bool(lookahead)
        self.lookahead = on and engine.mirror is None
        self._ahead: dict | None = None  # the queued step: each member's predicted step (and the member), logits
        self.ahead_used = 0  # queued steps handed over (the rest were recomputed)

    @property
    def active(self) -> int:
        return len(self.members)

    def has_room(self) -> bool:
        return bool(self.free)

    @torch.no_grad()
    def add(
        self,
        req: GenerationRequest,
        emit: Callable[[object], None],
        done: Callable[[], None] = lambda: None,
        cancel: threading.Event | None = None,
    ) -> None:
        """Prefill `req` into a free pair of rows; it decodes from the next `step()` on. Its events go to `emit`, and
        `done()` is called once it has left the batch. A bad request raises ValueError here and holds nothing."""
        if not self.free:
            raise RuntimeError("the batch is full")
        eng, tok = self.engine, self.engine.tok
        t_start = time.perf_counter()
        image_sampling, cfg, size, max_new = eng._resolve(req)
        ref_codes = eng.encode_images(req.images, req.input_image_area or eng.lm.config.image_area)
        strings = [image_string(tok, c) for c in ref_codes]
        cond = tok.encode(task_prompt(req.task, req.question, strings))
        rows = [cond, tok.encode(unconditional_prompt(strings))] if cfg != 1.0 else [cond]
        if max(len(r) for r in rows) >= eng.max_len:
            raise ValueError(f"prompt of {max(map(len, rows))} tokens does not fit the engine's max_len {eng.max_len}")
        pair = self.free.pop(0)
        span = slice(2 * pair, 2 * pair + len(rows))
        view = self.cache.rows(span.start, span.stop)
        view.reset()
        state = _DecodeState(
            grammar=eng._grammar(size, ref_codes),
            gen=eng._generator(req.seed),
            cache=view,
            next_pos=torch.zeros(len(rows), dtype=torch.long),
        )
        cancel = cancel if cancel is not None else threading.Event()
        new = [[(t, True) for t in r] for r in rows]
        core = eng._decode_steps(req, cancel, image_sampling, cfg, state, new, max_new, t_start, len(cond))
        m = _Member(span, pair, core, state, cancel, emit, done, ahead_ok=req.jacobi_window <= 0)
        self.members.append(m)
        self._run([m], ahead=False)  # the prefill and the first token

    def _run(self, members: list[_Member], ahead: bool = True) -> None:
        """Run each request's own logic until it needs the next step (or finishes). Every draw they ask for on the
        way is launched before any token is read, and the tokens are read together: one host sync per round. With
        `ahead` (a decode step's round) and the lookahead on, the next step is queued before that read."""
        while members:
            for m in members:
                self._advance(m)
            members = [m for m in members if m.draw is not None]
            if not members:
                return
            try:
                if ahead and self.lookahead and self._can_go_ahead():
                    tokens = self._draw_and_queue_ahead(members)
                else:
                    tokens = draw_tokens([m.draw for m in members], self.sampler)
            except Exception as e:  # these requests fail, as if their own logic had raised
                for m in members:
                    m.core.close()
                    m.emit(e)
                    self._release(m)
                return
            for m, t in zip(members, tokens):
                m.draw, m.answer = None, t

    def _can_go_ahead(self) -> bool:
        """Whether the next step is known but for the drawn tokens: every request either draws an image token after a
        one-token step or already waits for a visual one-token step, and none is cancelled."""
        for m in self.members:
            if m.cancel.is_set():
                return False
            if m.draw is not None:
                if not (m.ahead_ok and m.last is not None and m.state.grammar.mode == "rows"):
                    return False
            elif m.need is None or m.need.ids.shape[1] != 1 or not m.need.visual:
                return False
        return True

    def _draw_and_queue_ahead(self, drawing: list[_Member]) -> list[int]:
        """Launch the draws, queue the next batched step with the drawing requests' ids taken from the draws on the
        device (their positions one on, every row valid, the slot after their last), then read the tokens back: the
        device runs the step while the requests' logic runs on the host. `step()` hands the queued step over only
        if every request asks for exactly what was predicted for it."""
        eng = self.engine
        picks, order = launch_draws([m.draw for m in drawing], self.sampler)
        pick_of = {order[k]: k for k in range(len(order))}  # index in `drawing` -> index in picks
        read = _read_later(picks)
        # every request is in the step (`_can_go_ahead`): the drawing ones at their predicted steps, whose ids are
        # filled in when the tokens are read, the others at the steps they wait for
        predicted = {id(m): eng._predict_step(m.last) for m in drawing}
        plan = {id(m): predicted.get(id(m), m.need) for m in self.members}
        hi, ints, valid, kv_len = self._inputs([(m, plan[id(m)]) for m in self.members])
        ids = _upload(ints[0], eng.device)
        rows = [r for m in drawing for r in range(m.rows.start, m.rows.stop)]
        which = [pick_of[i] for i, m in enumerate(drawing) for _ in range(m.rows.start, m.rows.stop)]
        index = _upload(torch.tensor([rows, which]), eng.device)
        ids[index[0], 0] = picks[index[1]] + eng.visual.start
        logits = self._forward(hi, ids, ints[1], valid, ints[2], kv_len, True)  # [hi, 1, V']
        tokens = read()  # the draws only, not the step queued after them
        out = [tokens[pick_of[i]] for i in range(len(drawing))]
        for i, m in enumerate(drawing):
            predicted[id(m)].ids.fill_(out[i] + eng.visual.start)
        # keyed by id, holding the member itself: a request that left cannot pass its id on while the plan lives
        self._ahead = dict(plan={id(m): (m, plan[id(m)]) for m in self.members}, logits=logits)
        return out

    def _inputs(self, needs: list[tuple[_Member, StepRequest]]) -> tuple:
        """One step's inputs for `needs` (each request and the step it needs), assembled on the host (pinned on CUDA):
        (rows spanned, ints [3, hi, T] = ids, pos, slot; valid [hi, T]; the attended KV length)."""
        eng = self.engine
        hi = max(m.rows.stop for m, _ in needs)
        T = max(n.ids.shape[1] for _, n in needs)  # > 1 when a request runs a Jacobi window
        pin = eng.device.type == "cuda"
        ints = torch.zeros(3, hi, T, dtype=torch.long, pin_memory=pin)  # ids, pos, slot
        valid = torch.zeros(hi, T, dtype=torch.bool, pin_memory=pin)
        a_ids, a_pos, a_slot = ints.numpy()
        a_valid = valid.numpy()
        a_ids[:] = eng.tok.pad_id
        for m, n in needs:
            t = n.ids.shape[1]
            # a request with fewer tokens repeats its last one (same slot, same values): a harmless double write
            cols = np.minimum(np.arange(T), t - 1)
            a_ids[m.rows], a_pos[m.rows] = n.ids.numpy()[:, cols], n.pos.numpy()[:, cols]
            a_valid[m.rows], a_slot[m.rows] = n.valid.numpy()[:, cols], n.slot + cols
        top = max(n.slot + n.ids.shape[1] - 1 for _, n in needs)
        return hi, ints, valid, eng.kv_bucket(top)

    def _advance(self, m: _Member) -> None:
        """Run the request's own logic until it needs a draw or the next step (or finishes)."""
        rows = 2 * max(p.pair for p in self.members) + 2  # the forward's span, at most
        m.state.window_cap = max(0, self.max_step_tokens // rows - 1)
        try:
            while True:
                item = m.core.send(m.answer)
                m.answer = None
                if isinstance(item, Draw):
                    m.draw = item
                    return
                if isinstance(item, StepRequest):
                    m.need = item
                    return
                m.emit(item)
        except StopIteration:
            self._release(m)
        except Exception as e:  # this request fails; the others go on
            m.emit(e)
            self._release(m)

    def _release(self, m: _Member) -> None:
        self.members.remove(m)
        self.free.append(m.pair)
        self.free.sort()
        m.need = m.draw = None
        m.done()

    def _forward(self, hi: int, ids, pos, valid, slot, kv_len: int, visual: bool) -> torch.Tensor:
        """Rows [0, hi), T tokens each (ids/pos/valid/slot [hi, T], CPU tensors: copied to the device without waiting
        for it) -> logits [hi, T, V']."""
        eng = self.engine
        if not self.cuda_graphs or ids.shape[1] > 1:
            return eng.forward(self.cache.rows(0, hi), ids, pos, slot, valid, kv_len, visual=visual)
        key = (hi, kv_len, visual)
        if key not in self._graphs:
            self._graphs[key] = self._capture(hi, kv_len, visual)
        graph, static, out = self._graphs[key]
        for s, x in zip(static, (ids, pos, valid, slot)):
            s.copy_(x, non_blocking=True)
        graph.replay()
        return out

    def _capture(self, hi: int, kv_len: int, visual: bool) -> tuple:
        """Capture one batched step. The warm-up writes slot kv_len - 1 of every row, at or after any row's next
        write (the bucket holds the highest slot), and the valid mask is restored: nothing a request reads changes."""
        eng, dev, view = self.engine, self.engine.device, self.cache.rows(0, hi)
        static = (
            torch.full((hi, 1), eng.tok.pad_id, dtype=torch.long, device=dev),
            torch.zeros(hi, 1, dtype=torch.long, device=dev),
            torch.zeros(hi, 1, dtype=torch.bool, device=dev),
            torch.full((hi, 1), kv_len - 1, dtype=torch.long, device=dev),
        )
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return capture_graph(eng.lm, view, static, kv_len, eng.visual if visual else None, self._pool)

    @torch.no_grad()
    def step(self) -> None:
        """One decode step: one forward over the rows of every running request, then every request draws its next
        token, all read back at once."""
        eng = self.engine
        # a cancelled request skips the forward: it sees its cancel Event before it would read the logits
        live = [m for m in self.members if m.need is not None and not m.cancel.is_set()]
        self.last = len(live)
        ahead, self._ahead = self._ahead, None
        if live:
            self.steps += 1
            self.peak = max(self.peak, len(live))
            if ahead is not None and all(_equal_steps(ahead["plan"].get(id(m), (m, None))[1], m.need) for m in live):
                logits, visual = ahead["logits"], True  # queued before the tokens were read: the same step
                self.ahead_used += 1
            else:
                # the step's inputs are assembled on the host (pinned on CUDA) and copied over once each
                hi, ints, valid, kv_len = self._inputs([(m, m.need) for m in live])
                visual = all(m.need.visual for m in live)
                logits = self._forward(hi, ints[0], ints[1], valid, ints[2], kv_len, visual)  # [hi, T, V']
            for m in live:
                t = m.need.ids.shape[1]
                lg = logits[m.rows, :t] if t > 1 else logits[m.rows, 0]
                m.answer = lg[..., eng.visual] if m.need.visual and not visual else lg
        waiting = [m for m in self.members if m.need is not None]
        for m in waiting:
            m.last = m.need if m.need.ids.shape[1] == 1 else None
            m.need = None
        self._run(waiting)
