"""The four emu35.robot.v1 services on one engine: request checks, engine events -> proto events, status codes.

Every RPC goes through `Runtime.stream` / `Runtime.unary`, which map errors to status codes (ServiceError as given,
ValueError -> INVALID_ARGUMENT, anything else -> INTERNAL, logged) and count requests by method and code, so no request
can take the server down. Decoding runs on the scheduler's worker (Plan and Generate in its batch); a handler only
converts and streams events.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from model.engine import (
    MAX_GRID_SIDE,
    MAX_JACOBI_WINDOW,
    Engine,
    Finished,
    GenerationRequest,
    ImageFinished,
    ImageProgress,
    ImageStarted,
    TextDelta,
)
from model.prompts import TASKS
from model.results import split_chain_of_thought
from model.sampling import T2I_IMAGE_SAMPLING, TEXT_SAMPLING, SamplingParams

from . import __version__
from .errors import ServiceError, invalid
from .images import decode_images, to_proto
from .limits import Limits
from .metrics import Metrics
from .proto import (
    common_pb2,
    exploration_pb2,
    exploration_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    planner_pb2,
    planner_pb2_grpc,
    service_pb2,
    service_pb2_grpc,
)
from .scheduler import Scheduler

log = logging.getLogger(__name__)
TASK_NAMES = {
    generation_pb2.TASK_T2I: "t2i",
    generation_pb2.TASK_X2I: "x2i",
    generation_pb2.TASK_STORY: "story",
    generation_pb2.TASK_HOWTO: "howto",
}


def image_event(e, event_cls, started: str, progress: str):
    """The stream's proto event for an engine ImageStarted / ImageProgress, in `event_cls`'s `started` / `progress`
    field (each stream names them: keyframe_*, image_*, view_*); None for any other engine event."""
    if isinstance(e, ImageStarted):
        return event_cls(**{started: common_pb2.ImageStarted(index=e.index, grid_height=e.h, grid_width=e.w)})
    if isinstance(e, ImageProgress):
        return event_cls(**{progress: common_pb2.ImageProgress(index=e.index, rows_done=e.rows_done, rows_total=e.h)})
    return None


class Captions:
    """The text streamed before each image (its caption or narration, chain of thought split off), and after the
    last one, for Generate and Explore."""

    def __init__(self) -> None:
        self.raw, self.texts = "", []

    def add(self, text: str) -> None:
        self.raw += text

    def close(self) -> str:
        """The caption of the text since the last image (an image or the end closes it)."""
        caption = split_chain_of_thought(self.raw)[0]
        self.texts.append(caption)
        self.raw = ""
        return caption

    def joined(self) -> str:
        return "\n".join(t for t in self.texts if t)


@dataclasses.dataclass
class ModelInfo:
    name: str
    checkpoint: str
    random_weights: bool
    dtype: str
    parameters: int


class _Once:
    """Run the first callable given, ignore the rest (thread-safe)."""

    def __init__(self) -> None:
        self._lock, self._done = threading.Lock(), False

    def __call__(self, fn: Callable[[], object]) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        fn()


class Runtime:
    """What the handlers share: the engine (None until loaded), limits, the scheduler, metrics, session slots."""

    def __init__(self, limits: Limits, metrics: Metrics, auth_required: bool = False, tls: bool = False):
        self.limits, self.metrics = limits, metrics
        self.scheduler = Scheduler(limits.max_queue, limits.max_batch, metrics)
        self.engine: Engine | None = None
        self.model: ModelInfo | None = None
        self.auth_required, self.tls = auth_required, tls
        self.sessions = threading.BoundedSemaphore(limits.max_sessions)

    # ---- status mapping -------------------------------------------------------------------------------------
    def _finish(self, method: str, context, code: grpc.StatusCode, details: str = "", trailers=()) -> None:
        if code != grpc.StatusCode.OK:
            context.set_code(code)
            context.set_details(details)
            if trailers:
                context.set_trailing_metadata(trailers)
        self.metrics.requests.labels(method, code.name).inc()

    @staticmethod
    def _ended_code(context) -> grpc.StatusCode:
        remaining = context.time_remaining()
        expired = remaining is not None and remaining < 0.1  # client and server clocks for the deadline differ a bit
        return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED

    def stream(self, method: str, context, gen: Iterator) -> Iterator:
        t0, first, code, details, trailers = time.perf_counter(), True, grpc.StatusCode.OK, "", ()
        once = _Once()
        # gRPC stops pulling a stream whose client cancelled or whose deadline passed: its generator may never resume,
        # so the outcome is also counted from the termination callback (whichever comes first counts)
        context.add_callback(lambda: once(lambda: self._finish(method, context, self._ended_code(context))))
        try:
            for msg in gen:
                if first:
                    self.metrics.first_event.labels(method).observe(time.perf_counter() - t0)
                    first = False
                yield msg
            if not context.is_active():
                code = self._ended_code(context)
        except GeneratorExit:
            code = self._ended_code(context)
            raise
        except ServiceError as e:
            code, details, trailers = e.code, e.details, e.trailers
        except ValueError as e:
            code, details = grpc.StatusCode.INVALID_ARGUMENT, str(e)
        except Exception as e:
            if context.is_active():
                log.exception("%s failed", method)
                code, details = grpc.StatusCode.INTERNAL, f"internal error ({type(e).__name__}); see the server log"
            else:  # e.g. the request iterator of a cancelled stream
                code = self._ended_code(context)
        finally:
            gen.close()
            once(lambda: self._finish(method, context, code, details, trailers))

    def unary(self, method: str, context, fn: Callable[[], object]):
        try:
            out = fn()
        except ServiceError as e:
            self._finish(method, context, e.code, e.details, e.trailers)
            return None
        self._finish(method, context, grpc.StatusCode.OK)
        return out

    # ---- request pieces -------------------------------------------------------------------------------------
    def ready_engine(self) -> Engine:
        if self.engine is None:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "the model is still loading; retry shortly")
        return self.engine

    def text(self, value: str, field: str) -> str:
        if not value.strip():
            raise invalid(f"{field} is empty")
        if len(value) > self.limits.max_instruction_chars:
            raise invalid(f"{field} has {len(value)} characters; the limit is {self.limits.max_instruction_chars}")
        return value

    def options(self, o: common_pb2.GenerationOptions, task: str) -> dict:
        """GenerationOptions -> GenerationRequest keyword arguments; range errors name the field."""
        engine, lim = self.ready_engine(), self.limits
        kw: dict = {}
        if o.image_size.height or o.image_size.width:
            size = (o.image_size.height, o.image_size.width)
            if not all(1 <= x <= MAX_GRID_SIDE for x in size):
                raise invalid(f"options.image_size must be two token counts in [1, {MAX_GRID_SIDE}], got {size}")
            kw["image_size"] = size
        if o.aspect_ratio:
            kw["aspect_ratio"] = o.aspect_ratio
        # the images of every task but t2i default to the engine's: the checkpoint's own default, if it ships one
        image_default = T2I_IMAGE_SAMPLING if task == "t2i" else engine.image_sampling
        defaults = {"text_sampling": TEXT_SAMPLING, "image_sampling": image_default}
        for name, default in defaults.items():
            sp = getattr(o, name)
            fields = {f: getattr(sp, f) for f in ("temperature", "top_k", "top_p") if sp.HasField(f)}
            if fields:
                params = dataclasses.replace(default, **fields)
                if not math.isfinite(params.temperature):
                    raise invalid(f"options.{name}.temperature must be finite")
                params.validate(f"options.{name}")
                kw[name] = SamplingParams(params.temperature, params.top_k, params.top_p)
        if o.HasField("cfg_scale"):
            if not (math.isfinite(o.cfg_scale) and 1.0 <= o.cfg_scale <= 100.0):
                raise invalid(f"options.cfg_scale must be in [1, 100], got {o.cfg_scale}")
            kw["cfg_scale"] = o.cfg_scale
        if o.HasField("seed"):
            kw["seed"] = o.seed
        cap = min(lim.max_new_tokens, engine.max_len)
        if o.HasField("max_new_tokens"):
            if not 1 <= o.max_new_tokens <= cap:
                raise invalid(f"options.max_new_tokens must be in [1, {cap}], got {o.max_new_tokens}")
            kw["max_new_tokens"] = o.max_new_tokens
        else:
            kw["max_new_tokens"] = cap
        if len(o.logit_bias) > lim.max_logit_bias:
            raise invalid(f"options.logit_bias has {len(o.logit_bias)} entries; the limit is {lim.max_logit_bias}")
        vocab = engine.lm.config.vocab_size
        bad = [k for k, v in o.logit_bias.items() if k >= vocab or not math.isfinite(v) or abs(v) > 1000]
        if bad:
            raise invalid(f"options.logit_bias: token ids must be < {vocab} and biases finite in [-1000, 1000]: {bad}")
        kw["logit_bias"] = dict(o.logit_bias)
        if o.HasField("jacobi_window"):
            if o.jacobi_window > MAX_JACOBI_WINDOW:
                raise invalid(f"options.jacobi_window must be in [0, {MAX_JACOBI_WINDOW}], got {o.jacobi_window}")
            kw["jacobi_window"] = o.jacobi_window
        return kw

    def _cancel_event(self, context) -> threading.Event:
        cancel = threading.Event()
        if not context.add_callback(cancel.set):  # the RPC already ended
            cancel.set()
        return cancel

    def submit(self, run: Callable[[threading.Event], Iterator], context):
        """A job that decodes alone (an Explore turn)."""
        return self.scheduler.submit(run, self._cancel_event(context))

    def submit_request(self, engine: Engine, req: GenerationRequest, context, on_event=None):
        """A generation request that joins the running batch; `on_event(event, cancel)` sees each event first."""
        return self.scheduler.submit_request(engine, req, self._cancel_event(context), on_event)

    @staticmethod
    def usage(f: Finished, reason: str | None = None, queue_s: float = 0.0) -> common_pb2.Usage:
        timings = dict(f.timings, queue_s=queue_s)
        return common_pb2.Usage(
            reason=reason or f.reason,
            prompt_tokens=f.prompt_tokens,
            generated_tokens=f.generated_tokens,
            image_tokens=f.image_tokens,
            incomplete_image=f.incomplete_image,
            timings=timings,
        )

    def observe_speed(self, method: str, f: Finished) -> None:
        self.metrics.tokens.labels(method).inc(f.generated_tokens)
        if f.timings.get("decode_s", 0) > 0:
            self.metrics.tokens_per_s.labels(method).observe(f.generated_tokens / f.timings["decode_s"])

    def events(self, job, context) -> Iterator:
        try:
            yield from job.events(context.is_active)
        finally:
            job.cancel.set()  # a no-op when the job finished; frees the slot when the stream was abandoned


class PlannerServicer(planner_pb2_grpc.PlannerServicer):
    def __init__(self, rt: Runtime):
        self.rt = rt

    def Plan(self, request, context):
        return self.rt.stream("Plan", context, self._plan(request, context))

    def _plan(self, request: planner_pb2.PlanRequest, context) -> Iterator[planner_pb2.PlanEvent]:
        rt, lim, t0 = self.rt, self.rt.limits, time.perf_counter()
        engine = rt.ready_engine()
        instruction = rt.text(request.instruction, "instruction")
        images = decode_images(request.images, lim, required=True)
        n_max = request.max_subgoals or lim.default_max_subgoals
        if n_max > lim.max_subgoals:
            raise invalid(f"max_subgoals must be in [1, {lim.max_subgoals}], got {n_max}")
        req = GenerationRequest(task="vla", question=instruction, images=images, **rt.options(request.options, "vla"))
        enough, keyframes = threading.Event(), []

        def on_event(e, cancel: threading.Event) -> None:
            if isinstance(e, ImageFinished):
                keyframes.append(e.index)
                if len(keyframes) >= n_max:  # stop the request at its next step: the plan is complete
                    enough.set()
                    cancel.set()

        job = rt.submit_request(engine, req, context, on_event)
        raw, done, global_cot = "", [], ""
        for e in rt.events(job, context):
            ev = image_event(e, planner_pb2.PlanEvent, "keyframe_started", "keyframe_progress")
            if ev is not None:
                yield ev
            elif isinstance(e, TextDelta):
                raw += e.text
                yield planner_pb2.PlanEvent(subgoal_delta=planner_pb2.SubgoalDelta(index=len(done), text=e.text))
            elif isinstance(e, ImageFinished):
                if len(done) >= n_max:  # finished before the cancel took effect (tiny images): not asked for
                    continue
                text, glob, local = split_chain_of_thought(raw)
                raw = ""
                if glob:
                    global_cot = " ".join(filter(None, [global_cot, glob]))
                    yield planner_pb2.PlanEvent(chain_of_thought=planner_pb2.ChainOfThought(text=glob))
                sub = planner_pb2.Subgoal(index=len(done), text=text, chain_of_thought=local)
                done.append(planner_pb2.Subgoal(index=sub.index, text=text, chain_of_thought=local))
                sub.keyframe.CopyFrom(to_proto(e.image, e.codes))
                if len(done) == 1:
                    rt.metrics.first_subgoal.observe(time.perf_counter() - t0)
                yield planner_pb2.PlanEvent(subgoal_completed=planner_pb2.SubgoalCompleted(subgoal=sub))
            elif isinstance(e, Finished):
                text, glob, _ = split_chain_of_thought(raw)
                if glob:
                    global_cot = " ".join(filter(None, [global_cot, glob]))
                    yield planner_pb2.PlanEvent(chain_of_thought=planner_pb2.ChainOfThought(text=glob))
                rt.observe_speed("Plan", e)
                reason = "max_subgoals" if enough.is_set() and e.reason == "cancelled" else e.reason
                fin = planner_pb2.PlanFinished(
                    subgoals=done,
                    trailing_text=text,
                    global_chain_of_thought=global_cot,
                    usage=rt.usage(e, reason, (job.started or t0) - job.enqueued),
                )
                yield planner_pb2.PlanEvent(finished=fin)


class GenerationServicer(generation_pb2_grpc.GenerationServicer):
    def __init__(self, rt: Runtime):
        self.rt = rt

    def Generate(self, request, context):
        return self.rt.stream("Generate", context, self._generate(request, context))

    def _generate(self, request: generation_pb2.GenerateRequest, context) -> Iterator[generation_pb2.GenerateEvent]:
        rt, t0 = self.rt, time.perf_counter()
        engine = rt.ready_engine()
        task = TASK_NAMES.get(request.task)
        if task is None:
            raise invalid(f"task must be one of {', '.join(f'TASK_{t.upper()}' for t in TASK_NAMES.values())}")
        prompt = rt.text(request.prompt, "prompt")
        images = decode_images(request.images, rt.limits, required=task == "x2i")
        if task == "t2i" and images:
            raise invalid("images: TASK_T2I takes no images; use TASK_X2I to condition on images")
        req = GenerationRequest(task=task, question=prompt, images=images, **rt.options(request.options, task))
        job = rt.submit_request(engine, req, context)
        captions, n = Captions(), 0
        for e in rt.events(job, context):
            ev = image_event(e, generation_pb2.GenerateEvent, "image_started", "image_progress")
            if ev is not None:
                yield ev
            elif isinstance(e, TextDelta):
                captions.add(e.text)
                yield generation_pb2.GenerateEvent(text=common_pb2.TextDelta(text=e.text))
            elif isinstance(e, ImageFinished):
                img = generation_pb2.GeneratedImage(index=n, caption=captions.close(), image=to_proto(e.image, e.codes))
                n += 1
                yield generation_pb2.GenerateEvent(image=img)
            elif isinstance(e, Finished):
                captions.close()
                rt.observe_speed("Generate", e)
                fin = generation_pb2.GenerateFinished(
                    text=captions.joined(), usage=rt.usage(e, queue_s=(job.started or t0) - job.enqueued)
                )
                yield generation_pb2.GenerateEvent(finished=fin)


class ExplorationServicer(exploration_pb2_grpc.ExplorationServicer):
    def __init__(self, rt: Runtime):
        self.rt = rt

    def Explore(self, request_iterator, context):
        return self.rt.stream("Explore", context, self._explore(request_iterator, context))

    def _explore(self, requests, context) -> Iterator[exploration_pb2.ExploreEvent]:
        rt, lim = self.rt, self.rt.limits
        engine = rt.ready_engine()
        first = next(requests, None)
        if first is None:
            return
        if first.WhichOneof("request") != "start":
            raise invalid("the first ExploreRequest must be `start` (scene description and starting views)")
        scene = rt.text(first.start.scene, "start.scene")
        images = decode_images(first.start.images, lim, "start.images", required=True)
        req = GenerationRequest(task="explore", question=scene, images=images, **rt.options(first.start.options, ""))
        if not rt.sessions.acquire(blocking=False):
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{lim.max_sessions} Explore sessions are open; close one or retry later",
                (("retry-after-ms", str(rt.scheduler.retry_after_ms())),),
            )
        rt.metrics.sessions.inc()
        release = _Once()
        free = lambda: release(lambda: (rt.sessions.release(), rt.metrics.sessions.dec()))
        context.add_callback(free)  # a cancelled stream's generator may never resume to run `finally`
        session = None
        try:
            session = engine.session(req)
            yield from self._turn(session, None, context)
            for msg in requests:
                if msg.WhichOneof("request") != "command":
                    raise invalid("after `start`, every ExploreRequest must be a `command`")
                if session.turns > lim.max_turns:
                    raise ServiceError(grpc.StatusCode.OUT_OF_RANGE, f"session reached max_turns {lim.max_turns}")
                yield from self._turn(session, rt.text(msg.command.text, "command.text"), context)
        finally:
            if session is not None:
                session.close()
            free()

    def _turn(self, session, command: str | None, context) -> Iterator[exploration_pb2.ExploreEvent]:
        rt, t0, turn = self.rt, time.perf_counter(), session.turns
        engine = session.engine
        if command is not None:
            need = len(engine.tok.encode(f" USER: {command} ASSISTANT: <|extra_100|>")) + 2
            if session.context_tokens + need >= engine.max_len:
                raise ServiceError(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"session context is full ({session.context_tokens} of {engine.max_len} tokens); start a new one",
                )
        job = rt.submit(lambda cancel: session.turn(command, cancel), context)
        narration, n = Captions(), 0
        for e in rt.events(job, context):
            ev = image_event(e, exploration_pb2.ExploreEvent, "view_started", "view_progress")
            if ev is not None:
                yield ev
            elif isinstance(e, TextDelta):
                narration.add(e.text)
                yield exploration_pb2.ExploreEvent(narration=common_pb2.TextDelta(text=e.text))
            elif isinstance(e, ImageFinished):
                image = to_proto(e.image, e.codes)
                view = exploration_pb2.ExploreView(turn=turn, index=n, image=image, narration=narration.close())
                n += 1
                yield exploration_pb2.ExploreEvent(view=view)
            elif isinstance(e, Finished):
                narration.close()
                rt.observe_speed("Explore", e)
                fin = exploration_pb2.TurnFinished(
                    turn=turn,
                    narration=narration.joined(),
                    usage=rt.usage(e, queue_s=(job.started or t0) - job.enqueued),
                    context_tokens=session.context_tokens,
                    context_limit=engine.max_len,
                )
                yield exploration_pb2.ExploreEvent(turn_finished=fin)


class ServiceServicer(service_pb2_grpc.ServiceServicer):
    def __init__(self, rt: Runtime):
        self.rt = rt

    def GetInfo(self, request, context):
        return self.rt.unary("GetInfo", context, self._info)

    def _info(self) -> service_pb2.ServerInfo:
        rt = self.rt
        engine, m, lim = rt.ready_engine(), rt.model, rt.limits
        limits = service_pb2.Limits(
            **{k: v for k, v in lim.to_dict().items() if k != "max_batch"},
            context_tokens=engine.max_len,
            max_grid_side=MAX_GRID_SIDE,
        )
        return service_pb2.ServerInfo(
            model=m.name,
            checkpoint=m.checkpoint,
            random_weights=m.random_weights,
            tasks=list(TASKS),  # vla: Planner.Plan; explore: Exploration.Explore; the rest: Generation.Generate
            limits=limits,
            device=str(engine.device),
            dtype=m.dtype,
            version=__version__,
            parameters=m.parameters,
            auth_required=rt.auth_required,
            tls=rt.tls,
        )
