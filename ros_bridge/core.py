"""The bridge logic shared by the rclpy node and the DDS mode, with no ROS import.

Goals come in as objects with the ROS field names of `emu35_robot_interfaces` (an rclpy goal, a dict parsed from the
DDS JSON request, or the dataclasses here); they become gRPC requests to the planning service; its stream events
become feedback and results carrying `ImageMsg` key-frames that each front end copies into its own message type.
Calls are cancellable from another thread because a ROS goal cancel arrives on a different callback than the one
iterating the stream.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import numpy as np

from emu35_robot.client import TASKS, ExploreSession, PlannerClient
from emu35_robot.convert import GenerationBuilder, PlanBuilder
from emu35_robot.images import to_input
from emu35_robot.proto import generation_pb2, generation_pb2_grpc, planner_pb2, planner_pb2_grpc
from emu35_robot.types import ExploreTurn, GeneratedImage, Generation, Options, Plan, SamplingParams, Subgoal

from .images import Header, ImageMsg, Time, any_to_rgb, pil_to_image

OPTION_KEYS = (
    "image_size",
    "aspect_ratio",
    "cfg_scale",
    "seed",
    "max_new_tokens",
    "logit_bias",
    "text_sampling",
    "image_sampling",
)


def make_options(options: dict | str | None, seed: int = -1) -> Options:
    """JSON options (as in `emu35-robot plan`) -> Options; a goal's `seed` >= 0 wins over options["seed"]."""
    if isinstance(options, str):
        options = json.loads(options) if options.strip() else {}
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; known: {list(OPTION_KEYS)}")
    o = Options()
    if "image_size" in options:
        h, w = options["image_size"]
        o.image_size = (int(h), int(w))
    for name, cast in (("aspect_ratio", str), ("cfg_scale", float), ("seed", int), ("max_new_tokens", int)):
        if options.get(name) is not None:
            setattr(o, name, cast(options[name]))
    for name in ("text_sampling", "image_sampling"):
        if options.get(name) is not None:
            setattr(o, name, SamplingParams(**options[name]))
    o.logit_bias = {int(k): float(v) for k, v in (options.get("logit_bias") or {}).items()}
    if seed is not None and int(seed) >= 0:
        o.seed = int(seed)
    return o


def stamped(frame_id: str) -> Header:
    return Header(Time.now(), frame_id)


class LatestFrame:
    """The newest camera message, kept unconverted: decoding happens only when a goal needs it."""

    def __init__(self):
        self._cond = threading.Condition()
        self._msg: Any = None
        self.count = 0

    def put(self, msg: Any) -> None:
        with self._cond:
            self._msg = msg
            self.count += 1
            self._cond.notify_all()

    def get(self, timeout: float) -> np.ndarray:
        """The newest frame as HxWx3 RGB, waiting up to `timeout` s for a first one."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._msg is not None, timeout):
                raise TimeoutError(f"no camera frame arrived within {timeout:g} s")
            msg = self._msg
        return any_to_rgb(msg)


def goal_images(images: list, latest: LatestFrame | None, timeout: float) -> list[np.ndarray]:
    """A goal's own images, or else the latest camera frame."""
    if images:
        return [any_to_rgb(m) for m in images]
    if latest is None:
        raise ValueError("the goal has no images and there is no camera topic")
    return [latest.get(timeout)]


# ---- Plan ------------------------------------------------------------------------------------------------------
@dataclass
class PlanGoal:
    """emu35_robot_interfaces/action/Plan goal; `images` are HxWx3 RGB arrays once resolved."""

    instruction: str
    images: list[np.ndarray] = field(default_factory=list)
    max_subgoals: int = 0
    seed: int = -1
    options: Options = field(default_factory=Options)
    request_id: str = ""

    @classmethod
    def from_msg(cls, goal: Any, latest: LatestFrame | None = None, timeout: float = 5.0) -> PlanGoal:
        """An rclpy Plan.Goal (or anything with its fields)."""
        return cls(
            goal.instruction,
            goal_images(list(goal.images), latest, timeout),
            int(goal.max_subgoals),
            int(goal.seed),
            make_options(goal.options_json, int(goal.seed)),
        )

    @classmethod
    def from_json(cls, text: str, latest: LatestFrame | None = None, timeout: float = 5.0) -> PlanGoal:
        """The DDS request: {"instruction": ..., "max_subgoals": 2, "seed": 0, "options": {...}, "id": "..."}."""
        d = json.loads(text)
        if not isinstance(d, dict) or not str(d.get("instruction", "")).strip():
            raise ValueError('a plan request is a JSON object with a non-empty "instruction"')
        seed = int(d.get("seed", -1))
        return cls(
            str(d["instruction"]),
            goal_images([], latest, timeout),
            int(d.get("max_subgoals", 0)),
            seed,
            make_options(d.get("options"), seed),
            str(d.get("id") or uuid.uuid4().hex[:12]),
        )


@dataclass
class PlanFeedback:
    """Plan.action feedback: one finished subgoal with its key-frame."""

    subgoal_index: int
    text: str
    keyframe: ImageMsg
    chain_of_thought: str = ""

    def to_json(self, request_id: str = "") -> str:
        return json.dumps(
            {
                "request_id": request_id,
                "index": self.subgoal_index,
                "text": self.text,
                "chain_of_thought": self.chain_of_thought,
            }
        )


@dataclass
class PlanResult:
    """Plan.action result; `plan_json` is what the plan topic carries."""

    subgoals: list[str]
    keyframes: list[ImageMsg]
    success: bool
    message: str
    plan_json: str = ""
    cancelled: bool = False


def plan_to_json(goal: PlanGoal, plan: Plan | None, subgoals: list[Subgoal], success: bool, message: str) -> str:
    d = {
        "request_id": goal.request_id,
        "instruction": goal.instruction,
        "success": success,
        "message": message,
        "subgoals": [{"index": s.index, "text": s.text, "chain_of_thought": s.chain_of_thought} for s in subgoals],
    }
    if plan is not None:
        d["trailing_text"] = plan.trailing_text
        d["chain_of_thought"] = plan.chain_of_thought
        d["usage"] = asdict(plan.usage)
    return json.dumps(d)


class _Call:
    """A server-streaming gRPC call that `cancel()` (any thread) stops; iteration then ends as cancelled."""

    def __init__(self, call: grpc.Call):
        self._call = call
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()
        self._call.cancel()

    def events(self) -> Iterator:
        try:
            yield from self._call
        finally:
            self._call.cancel()  # a no-op once finished

    def failure(self, e: grpc.RpcError) -> tuple[str, bool]:
        """(message, cancelled) for a failed stream."""
        if e.code() == grpc.StatusCode.CANCELLED and self.cancelled.is_set():
            return "cancelled", True
        return f"{e.code().name}: {e.details()}", False


class PlanCall(_Call):
    """One Plan request in flight. `run()` blocks, calling `on_feedback` as each key-frame finishes."""

    def __init__(self, client: PlannerClient, goal: PlanGoal, frame_id: str = "", timeout: float | None = None):
        self.goal, self.frame_id = goal, frame_id
        req = planner_pb2.PlanRequest(
            instruction=goal.instruction,
            images=[to_input(im) for im in goal.images],
            max_subgoals=goal.max_subgoals,
            options=goal.options.to_proto(),
        )
        stub = planner_pb2_grpc.PlannerStub(client.channel)
        super().__init__(stub.Plan(req, timeout=timeout or client.timeout, metadata=client.metadata))

    def run(self, on_feedback: Callable[[PlanFeedback], None] | None = None) -> PlanResult:
        builder, done, keyframes = PlanBuilder(self.goal.instruction), [], []
        try:
            for ev in self.events():
                out = builder.typed(ev)
                if isinstance(out, Subgoal):
                    fb = PlanFeedback(
                        out.index, out.text, pil_to_image(out.image, stamped(self.frame_id)), out.chain_of_thought
                    )
                    done.append(out)
                    keyframes.append(fb.keyframe)
                    if on_feedback is not None:
                        on_feedback(fb)
                elif isinstance(out, Plan):
                    msg = f"{len(done)} subgoal(s), stopped by {out.usage.reason}"
                    js = plan_to_json(self.goal, out, done, True, msg)
                    return PlanResult([s.text for s in done], keyframes, True, msg, js)
            message, cancelled = "the stream ended without a finished plan", False
        except grpc.RpcError as e:
            message, cancelled = self.failure(e)
        js = plan_to_json(self.goal, None, done, False, message)
        return PlanResult([s.text for s in done], keyframes, False, message, js, cancelled)


# ---- Generate --------------------------------------------------------------------------------------------------
@dataclass
class GenerateGoal:
    """emu35_robot_interfaces/action/Generate goal."""

    task: str
    prompt: str
    images: list[np.ndarray] = field(default_factory=list)
    options: Options = field(default_factory=Options)

    @classmethod
    def from_msg(cls, goal: Any) -> GenerateGoal:
        if goal.task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {goal.task!r}")
        return cls(
            goal.task, goal.prompt, [any_to_rgb(m) for m in goal.images], make_options(goal.options_json, goal.seed)
        )


@dataclass
class GenerateFeedback:
    image_index: int
    caption: str
    image: ImageMsg


@dataclass
class GenerateResult:
    text: str
    images: list[ImageMsg]
    captions: list[str]
    success: bool
    message: str
    cancelled: bool = False


class GenerateCall(_Call):
    def __init__(self, client: PlannerClient, goal: GenerateGoal, frame_id: str = "", timeout: float | None = None):
        self.goal, self.frame_id = goal, frame_id
        req = generation_pb2.GenerateRequest(
            task=TASKS[goal.task],
            prompt=goal.prompt,
            images=[to_input(im) for im in goal.images],
            options=goal.options.to_proto(),
        )
        stub = generation_pb2_grpc.GenerationStub(client.channel)
        super().__init__(stub.Generate(req, timeout=timeout or client.timeout, metadata=client.metadata))

    def run(self, on_feedback: Callable[[GenerateFeedback], None] | None = None) -> GenerateResult:
        builder, images, captions = GenerationBuilder(self.goal.task, self.goal.prompt), [], []
        try:
            for ev in self.events():
                out = builder.typed(ev)
                if isinstance(out, GeneratedImage):
                    fb = GenerateFeedback(out.index, out.caption, pil_to_image(out.image, stamped(self.frame_id)))
                    images.append(fb.image)
                    captions.append(out.caption)
                    if on_feedback is not None:
                        on_feedback(fb)
                elif isinstance(out, Generation):
                    return GenerateResult(out.text, images, captions, True, f"stopped by {out.usage.reason}")
            message, cancelled = "the stream ended without a finished generation", False
        except grpc.RpcError as e:
            message, cancelled = self.failure(e)
        return GenerateResult("", images, captions, False, message, cancelled)


# ---- Explore ---------------------------------------------------------------------------------------------------
@dataclass
class ExploreReply:
    """emu35_robot_interfaces/srv/Explore response."""

    success: bool
    message: str
    session_id: str = ""
    turn: int = 0
    narration: str = ""
    views: list[ImageMsg] = field(default_factory=list)
    context_tokens: int = 0
    context_limit: int = 0


class ExploreSessions:
    """Explore sessions by id, for a request/response front end (a ROS service): start, step, close."""

    def __init__(self, client: PlannerClient, frame_id: str = ""):
        self.client, self.frame_id = client, frame_id
        self._sessions: dict[str, ExploreSession] = {}
        self._lock = threading.Lock()

    def _reply(self, sid: str, t: ExploreTurn) -> ExploreReply:
        views = [pil_to_image(v.image, stamped(self.frame_id)) for v in t.views]
        return ExploreReply(True, "", sid, t.turn, t.narration, views, t.context_tokens, t.context_limit)

    def handle(self, req: Any, latest: LatestFrame | None = None, timeout: float = 5.0) -> ExploreReply:
        """req has session_id (empty: start), scene, images, command, close, options_json."""
        sid = req.session_id
        try:
            if not sid:
                images = goal_images(list(req.images), latest, timeout)
                session = self.client.explore(req.scene, images, options=make_options(req.options_json))
                sid = uuid.uuid4().hex
                with self._lock:
                    self._sessions[sid] = session
                return self._reply(sid, session.first)
            with self._lock:
                session = self._sessions.get(sid)
            if session is None:
                return ExploreReply(False, f"no open session {sid!r}", sid)
            if req.close:
                with self._lock:
                    self._sessions.pop(sid, None)
                session.close()
                return ExploreReply(True, "closed", sid)
            return self._reply(sid, session.step(req.command))
        except grpc.RpcError as e:
            if sid:
                with self._lock:
                    self._sessions.pop(sid, None)  # the server ended the stream; the session is gone
            return ExploreReply(False, f"{e.code().name}: {e.details()}", sid)
        except (ValueError, TimeoutError, RuntimeError) as e:
            return ExploreReply(False, str(e), sid)

    def close_all(self) -> None:
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            try:
                s.close()
            except grpc.RpcError:
                pass  # already ended by the server
