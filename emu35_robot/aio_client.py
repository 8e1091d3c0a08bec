"""`AsyncPlannerClient`: the asyncio (grpc.aio) twin of `PlannerClient`, same methods, same typed results.

async with AsyncPlannerClient("localhost:50051") as client:
    plan = await client.plan("stack the blocks", [image], max_subgoals=3)
    async for event in client.plan_stream("stack the blocks", [image]):
        ...
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import grpc
from grpc import aio

from .auth import bearer_metadata
from .client import TASKS, ImageLike, _options, backoff_delays, channel_options, read_root_certs
from .convert import GenerationBuilder, PlanBuilder, TurnBuilder
from .images import to_input
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


class AsyncPlannerClient:
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
        opts = channel_options()
        if server_name:
            opts.append(("grpc.ssl_target_name_override", server_name))
        if tls:
            creds = grpc.ssl_channel_credentials(root_certificates=read_root_certs(tls))
            self.channel = aio.secure_channel(target, creds, options=opts)
        else:
            self.channel = aio.insecure_channel(target, options=opts)
        self.metadata = bearer_metadata(token)
        self.timeout, self.retries, self.backoff_s = timeout, retries, backoff_s
        self._planner = planner_pb2_grpc.PlannerStub(self.channel)
        self._generation = generation_pb2_grpc.GenerationStub(self.channel)
        self._exploration = exploration_pb2_grpc.ExplorationStub(self.channel)
        self._service = service_pb2_grpc.ServiceStub(self.channel)

    async def __aenter__(self) -> AsyncPlannerClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def _stream(self, call: Callable, request, timeout: float | None) -> AsyncIterator:
        delays = backoff_delays(self.retries, self.backoff_s)
        while True:
            started = False
            stream = call(request, timeout=timeout or self.timeout, metadata=self.metadata)
            try:
                async for ev in stream:
                    started = True
                    yield ev
                return
            except aio.AioRpcError as e:
                if started or e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
            finally:
                stream.cancel()

    async def info(self, timeout: float | None = None) -> service_pb2.ServerInfo:
        delays = backoff_delays(self.retries, self.backoff_s)
        while True:
            try:
                return await self._service.GetInfo(
                    service_pb2.GetInfoRequest(), timeout=timeout or self.timeout, metadata=self.metadata
                )
            except aio.AioRpcError as e:
                delay = next(delays, None)
                if e.code() != grpc.StatusCode.UNAVAILABLE or delay is None:
                    raise
                await asyncio.sleep(delay)

    async def plan_stream(
        self,
        instruction: str,
        images: Iterable[ImageLike],
        *,
        max_subgoals: int = 0,
        options: Options | None = None,
        timeout: float | None = None,
        **option_kw,
    ) -> AsyncIterator:
        req = planner_pb2.PlanRequest(
            instruction=instruction,
            images=[to_input(im) for im in images],
            max_subgoals=max_subgoals,
            options=_options(options, option_kw),
        )
        b = PlanBuilder(instruction)
        async for ev in self._stream(self._planner.Plan, req, timeout):
            out = b.typed(ev)
            if out is not None:
                yield out

    async def plan(self, instruction: str, images: Iterable[ImageLike], **kw) -> Plan:
        last = None
        async for last in self.plan_stream(instruction, images, **kw):  # noqa: B007
            pass
        if not isinstance(last, Plan):
            raise RuntimeError("the stream ended without a finished plan")
        return last

    async def generate_stream(
        self,
        task: str,
        prompt: str,
        images: Iterable[ImageLike] = (),
        *,
        options: Options | None = None,
        timeout: float | None = None,
        **option_kw,
    ) -> AsyncIterator:
        if task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
        req = generation_pb2.GenerateRequest(
            task=TASKS[task],
            prompt=prompt,
            images=[to_input(im) for im in images],
            options=_options(options, option_kw),
        )
        b = GenerationBuilder(task, prompt)
        async for ev in self._stream(self._generation.Generate, req, timeout):
            out = b.typed(ev)
            if out is not None:
                yield out

    async def generate(self, task: str, prompt: str, images: Iterable[ImageLike] = (), **kw) -> Generation:
        last = None
        async for last in self.generate_stream(task, prompt, images, **kw):  # noqa: B007
            pass
        if not isinstance(last, Generation):
            raise RuntimeError("the stream ended without a finished generation")
        return last

    async def explore(
        self,
        scene: str,
        images: Iterable[ImageLike],
        *,
        options: Options | None = None,
        timeout: float | None = None,
        **option_kw,
    ) -> AsyncExploreSession:
        """Open a session and run its first turn (`session.first`)."""
        start = exploration_pb2.ExploreStart(
            scene=scene, images=[to_input(im) for im in images], options=_options(options, option_kw)
        )
        s = AsyncExploreSession(self._exploration.Explore(timeout=timeout or self.timeout, metadata=self.metadata))
        await s._call.write(exploration_pb2.ExploreRequest(start=start))
        s.first = await s._collect(TurnBuilder(scene))
        return s


class AsyncExploreSession:
    def __init__(self, call):
        self._call = call
        self.turns: list[ExploreTurn] = []
        self.first: ExploreTurn | None = None

    async def _collect(self, b: TurnBuilder) -> ExploreTurn:
        while b.result is None:
            ev = await self._call.read()
            if ev is aio.EOF:
                raise RuntimeError("the session ended before the turn finished")
            b.typed(ev)
        self.turns.append(b.result)
        return b.result

    async def step(self, command: str) -> ExploreTurn:
        await self._call.write(exploration_pb2.ExploreRequest(command=exploration_pb2.ExploreCommand(text=command)))
        return await self._collect(TurnBuilder(command))

    async def close(self) -> None:
        await self._call.done_writing()
        await self._call.code()
