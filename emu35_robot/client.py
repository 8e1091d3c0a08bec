"""`PlannerClient`: the synchronous Python client of the emu35.robot.v1 services, with typed results.

    with PlannerClient("localhost:50051", token="...") as client:
        plan = client.plan("stack the red block on the blue block", [Image.open("scene.png")], max_subgoals=4)
        for s in plan.subgoals:
            print(s.index, s.text); s.image.save(f"step_{s.index}.png")

Streaming methods (`plan_stream`, `generate_stream`, `ExploreSession.step_stream`) yield `TextChunk` and
`ImageProgress` while decoding, then `Subgoal`/`GeneratedImage`/`ExploreView` as images finish, and the final
`Plan`/`Generation`/`ExploreTurn` last. UNAVAILABLE is retried with exponential backoff, only before the first event
arrives (a stream is never replayed half-way). Other errors are raised as `grpc.RpcError`.
"""

from __future__ import annotations

import queue
import random
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from model.sampling import SamplingParams

from .auth import bearer_metadata
from .consensus import Consensus, consensus
from .convert import GenerationBuilder, PlanBuilder, TurnBuilder
from .images import to_input
from .limits import Limits
from .proto import (
    exploration_pb2,
    exploration_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    planner_pb2,
    planner_pb2_grpc,
    service_pb2,
    service_pb2_grpc,
)
from .types import ExploreTurn, Generation, Options, Plan

# key-frames of the consensus candidates after the first: sampled, a little cooler than the spec's temperature 1
CONSENSUS_SAMPLING = SamplingParams(temperature=0.7, top_k=0, top_p=1.0)

ImageLike = Image.Image | np.ndarray | bytes | str
TASKS = {
    "t2i": generation_pb2.TASK_T2I,
    "x2i": generation_pb2.TASK_X2I,
    "story": generation_pb2.TASK_STORY,
    "howto": generation_pb2.TASK_HOWTO,
}


def channel_options(limits: Limits | None = None) -> list[tuple[str, int]]:
    limits = limits or Limits()
    return [
        ("grpc.max_receive_message_length", limits.max_send_message_bytes),
        ("grpc.max_send_message_length", limits.max_receive_message_bytes),
    ]


def read_root_certs(tls: bool | str | Path | bytes) -> bytes | None:
    """tls=True: system roots; a path or PEM bytes: that CA (e.g. a self-signed server certificate)."""
    if tls is True:
        return None
    if isinstance(tls, bytes):
        return tls
    return Path(tls).read_bytes()


def backoff_delays(retries: int, base_s: float, max_s: float = 5.0) -> Iterator[float]:
    for i in range(retries):
        yield min(max_s, base_s * 2**i) * (0.5 + random.random() / 2)  # jittered exponential backoff


def _options(options: Options | None, kw: dict):
    if options is None:
        options = Options(**kw)
    elif kw:
        raise TypeError("pass either options= or option keywords, not both")
    return options.to_proto()


class PlannerClient:
    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: bool | str | Path | bytes = False,
        server_name: str | None = None,
        timeout: float | None = None,
        retries: int = 3,
        backoff_s: float = 0.2,
    ):
        """target "host:port"; tls False (plaintext), True (system roots) or a CA cert path/PEM; timeout: default
        deadline of each call in seconds (None: no deadline); retries: UNAVAILABLE retries before the first event."""
        opts = channel_options()
        if server_name:
            opts.append(("grpc.ssl_target_name_override", server_name))
        if tls:
            creds = grpc.ssl_channel_credentials(root_certificates=read_root_certs(tls))
            self.channel = grpc.secure_channel(target, creds, options=opts)
        else:
            self.channel = grpc.insecure_channel(target, options=opts)
        self.metadata = bearer_metadata(token)
        self.timeout, self.retries, self.backoff_s = timeout, retries, backoff_s
        self._planner = planner_pb2_grpc.PlannerStub(self.channel)
        self._generation = generation_pb2_grpc.GenerationStub(self.channel)
        self._exploration = exploration_pb2_grpc.ExplorationStub(self.channel)
        self._service = service_pb2_grpc.ServiceStub(self.channel)

    def __enter__(self) -> PlannerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    # ---- plumbing -------------------------------------------------------------------------------------------
    def _stream(self, call: Callable, request, timeout: float | None) -> Iterator:
        """Server-streaming call with retries on UNAVAILABLE until the first event arrives."""
        delays = backoff_delays(self.retries, self.backoff_s)
        while True:
            started = False
            stream = call(request, timeout=timeout or self.timeout, metadata=self.metadata, wait_for_ready=False)
            try:
                for ev in stream:
                    started = True
                    yield ev
                return
            except grpc.RpcError as e:
                if started or e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise
                time.sleep(delay)
            finally:
                stream.cancel()  # a no-op after completion; stops decoding when the caller breaks out early

    # ---- Service --------------------------------------------------------------------------------------------
    def info(self, timeout: float | None = None) -> service_pb2.ServerInfo:
        delays = backoff_delays(self.retries, self.backoff_s)
        while True:
            try:
                return self._service.GetInfo(
                    service_pb2.GetInfoRequest(), timeout=timeout or self.timeout, metadata=self.metadata
                )
            except grpc.RpcError as e:
                delay = next(delays, None)
                if e.code() != grpc.StatusCode.UNAVAILABLE or delay is None:
                    raise
                time.sleep(delay)

    # ---- Planner --------------------------------------------------------------------------------------------
    def plan_stream(
        self,
        instruction: str,
        images: Iterable[ImageLike],
        *,
        max_subgoals: int = 0,
        options: Options | None = None,
        timeout: float | None = None,
        **option_kw,
    ) -> Iterator:
        req = planner_pb2.PlanRequest(
            instruction=instruction,
            images=[to_input(im) for im in images],
            max_subgoals=max_subgoals,
            options=_options(options, option_kw),
        )
        b = PlanBuilder(instruction)
        for ev in self._stream(self._planner.Plan, req, timeout):
            out = b.typed(ev)
            if out is not None:
                yield out

    def plan(self, instruction: str, images: Iterable[ImageLike], **kw) -> Plan:
        """Plan and wait for the whole plan. Keywords: max_subgoals, options / Options fields, timeout."""
        last = None
        for last in self.plan_stream(instruction, images, **kw):  # noqa: B007
            pass
        if not isinstance(last, Plan):
            raise RuntimeError("the stream ended without a finished plan")
        return last

    def plan_consensus(
        self,
        instruction: str,
        images: Iterable[ImageLike],
        candidates: int = 5,
        *,
        sampling: SamplingParams = CONSENSUS_SAMPLING,
        options: Options | None = None,
        max_subgoals: int = 0,
        timeout: float | None = None,
        admissible: Callable[[Plan], bool] | None = None,
    ) -> Consensus:
        """Ask for `candidates` plans of the scene at once (the service decodes them in one batch) and return their
        `Consensus`: `.plan` the medoid (`emu35_robot.consensus.medoid`), `.candidates` all of them, `.chosen`,
        `.distances`. Candidate 0 is decoded with `options` as given
        (the server's key-frame default unless they say otherwise); the others draw their key-frames with `sampling`
        and seeds `seed + i` (seed from `options`, else random; modulo 2^64, the proto's uint64), so they differ.
        `admissible`: only plans that pass it are kept when any does (`emu35_robot.consensus.consensus`)."""
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        images = list(images)
        for im in images:  # a lazily opened file decodes on first use, which threads must not race for
            if isinstance(im, Image.Image):
                im.load()
        base = options or Options()
        seed = base.seed if base.seed is not None else random.randrange(2**62)
        opts = [replace(base, seed=seed)] + [
            replace(base, seed=(seed + i) % 2**64, image_sampling=sampling) for i in range(1, candidates)
        ]
        call = lambda o: self.plan(instruction, images, max_subgoals=max_subgoals, options=o, timeout=timeout)  # noqa: E731
        with ThreadPoolExecutor(candidates) as pool:
            plans = list(pool.map(call, opts))
        return consensus(plans, admissible)

    # ---- Generation -----------------------------------------------------------------------------------------
    def generate_stream(
        self,
        task: str,
        prompt: str,
        images: Iterable[ImageLike] = (),
        *,
        options: Options | None = None,
        timeout: float | None = None,
        **option_kw,
    ) -> Iterator:
        if task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
        req = generation_pb2.GenerateRequest(
            task=TASKS[task],
            prompt=prompt,
            images=[to_input(im) for im in images],
            options=_options(options, option_kw),
        )
        b = GenerationBuilder(task, prompt)
        for ev in self._stream(self._generation.Generate, req, timeout):
            out = b.typed(ev)
            if out is not None:
                yield out

    def generate(self, task: str, prompt: str, images: Iterable[ImageLike] = (), **kw) -> Generation:
        last = None
        for last in self.generate_stream(task, prompt, images, **kw):  # noqa: B007
            pass
        if not isinstance(last, Generation):
            raise RuntimeError("the stream ended without a finished generation")
        return last

    # ---- Exploration ----------------------------------------------------------------------------------------
    def explore(
        self,
        scene: str,
        images: Iterable[ImageLike],
        *,
        options: Options | None = None,
        timeout: float | None = None,
        **option_kw,
    ) -> ExploreSession:
        """Open a session; its first turn (the starting scene) runs right away: `session.first`."""
        start = exploration_pb2.ExploreStart(
            scene=scene, images=[to_input(im) for im in images], options=_options(options, option_kw)
        )
        return ExploreSession(self, start, timeout)


class ExploreSession:
    """One Exploration.Explore stream. `step(command)` sends a command and waits for its turn; `close()` ends it."""

    def __init__(self, client: PlannerClient, start: exploration_pb2.ExploreStart, timeout: float | None):
        self._requests: queue.Queue = queue.Queue()
        self._requests.put(exploration_pb2.ExploreRequest(start=start))
        self._call = client._exploration.Explore(
            self._iter_requests(), timeout=timeout or client.timeout, metadata=client.metadata
        )
        self._events = iter(self._call)
        self.turns: list[ExploreTurn] = []
        self.first = self._collect(TurnBuilder(start.scene))

    def _iter_requests(self):
        while True:
            msg = self._requests.get()
            if msg is None:
                return
            yield msg

    def _turn_stream(self, b: TurnBuilder) -> Iterator:
        for ev in self._events:
            out = b.typed(ev)
            if out is not None:
                yield out
            if b.result is not None:
                self.turns.append(b.result)
                return
        raise RuntimeError("the session ended before the turn finished")

    def _collect(self, b: TurnBuilder) -> ExploreTurn:
        for _ in self._turn_stream(b):
            pass
        return b.result

    def step_stream(self, command: str) -> Iterator:
        self._requests.put(exploration_pb2.ExploreRequest(command=exploration_pb2.ExploreCommand(text=command)))
        yield from self._turn_stream(TurnBuilder(command))

    def step(self, command: str) -> ExploreTurn:
        last = None
        for last in self.step_stream(command):  # noqa: B007
            pass
        return last

    def close(self) -> None:
        self._requests.put(None)
        for _ in self._events:  # drain to the server's OK
            pass

    def __enter__(self) -> ExploreSession:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._call.cancel()
