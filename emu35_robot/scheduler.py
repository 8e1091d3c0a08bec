"""A bounded request queue in front of the engine, drained by one decoding worker that batches requests.

RPC handlers submit jobs and stream the events the worker produces. The queue is the one place that decides admission
(RESOURCE_EXHAUSTED with a retry hint when full) and order. Generation requests (`submit_request`) join the running
batch of a `BatchEngine` at the next decode step, up to `max_batch` at once, and leave it when they finish; other jobs
(`submit`: Explore turns) run one at a time on the same thread, one event per batch step. Cancelling a job (client
gone, deadline passed, shutdown) sets its Event: a queued job is skipped, a running one stops within one decode step.
`max_batch=0` runs generation requests one at a time through `Engine.generate` (its CUDA graphs) instead.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc

from .errors import ServiceError
from .metrics import Metrics

log = logging.getLogger(__name__)
_DONE = object()


@dataclass
class Job:
    run: Callable[[threading.Event], Iterator] | None  # executed on the worker; yields events
    cancel: threading.Event = field(default_factory=threading.Event)
    out: queue.Queue = field(default_factory=queue.Queue)
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None
    engine: object = None  # with `request`: a generation request that joins the batch
    request: object = None
    on_event: Callable[[object, threading.Event], None] | None = None  # on the worker: (event, cancel) before streaming

    def events(self, is_active: Callable[[], bool] = lambda: True, poll_s: float = 0.05) -> Iterator:
        """The job's events as the worker produces them; re-raises the worker's exception. Stops (and cancels the job)
        when `is_active()` turns false: the client went away or the deadline passed."""
        while True:
            try:
                item = self.out.get(timeout=poll_s)
            except queue.Empty:
                if not is_active():
                    self.cancel.set()
                    return
                continue
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def emit(self, item) -> None:
        if self.on_event is not None and not isinstance(item, BaseException):
            self.on_event(item, self.cancel)
        self.out.put(item)

    def iterate(self) -> Iterator:
        """The events of a job run alone: its `run`, or its request through `Engine.generate`."""
        if self.run is not None:
            return self.run(self.cancel)
        return self.engine.generate(self.request, self.cancel)


class Scheduler:
    def __init__(self, max_queue: int, max_batch: int = 8, metrics: Metrics | None = None):
        self.max_queue, self.max_batch = max_queue, max_batch
        self.metrics = metrics
        self._q: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self._running = 0
        self._job_s = 1.0  # running mean of job durations, for the retry hint
        self.batch = None  # the BatchEngine, made for the first request's engine
        self._solo: tuple[Job, Iterator] | None = None  # the job running alone (an Explore turn), and its events
        self._thread = threading.Thread(target=self._work, name="decoder", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._q)

    def retry_after_ms(self) -> int:
        """When a slot is likely to free up: the queue ahead times the mean job duration, over the batch's width."""
        width = max(1, self.max_batch)
        return max(100, int(1000 * self._job_s * (len(self._q) + self._running) / width))

    def submit(self, run: Callable[[threading.Event], Iterator], cancel: threading.Event | None = None) -> Job:
        """A job that runs alone (not batched): `run(cancel)` yields its events."""
        return self._enqueue(Job(run, cancel or threading.Event()))

    def submit_request(self, engine, request, cancel: threading.Event | None = None, on_event=None) -> Job:
        """A generation request that joins the running batch."""
        job = Job(None, cancel or threading.Event(), engine=engine, request=request, on_event=on_event)
        return self._enqueue(job)

    def _enqueue(self, job: Job) -> Job:
        with self._cv:
            if self._closed:
                raise ServiceError(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
            if len(self._q) >= self.max_queue:
                hint = self.retry_after_ms()
                raise ServiceError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"request queue is full ({self.max_queue} waiting); retry in about {hint} ms",
                    (("retry-after-ms", str(hint)),),
                )
            self._q.append(job)
            self._set_depth()
            self._cv.notify()
        return job

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._q))
            self.metrics.in_flight.set(self._running)

    def _batched(self, job: Job) -> bool:
        return job.request is not None and self.max_batch > 0

    def _admit(self) -> list[Job]:
        """Under the lock: take jobs from the front of the queue while they fit (FIFO: a job that must wait blocks
        those behind it). Cancelled jobs are dropped."""
        taken = []
        while self._q:
            job = self._q[0]
            if job.cancel.is_set():
                self._q.popleft()
                job.out.put(_DONE)
                continue
            if self._batched(job):
                if self.batch is None or self.batch.engine is not job.engine:
                    if self.batch is not None and self.batch.active:
                        break  # another engine's batch is running (a test swapped engines): let it drain
                    from model.batching import BatchEngine

                    self.batch = BatchEngine(job.engine, self.max_batch)
                if self.batch.max_streams - self.batch.active - sum(map(self._batched, taken)) <= 0:
                    break
            elif self._solo is not None or any(not self._batched(j) for j in taken):
                break
            taken.append(self._q.popleft())
            self._running += 1
        self._set_depth()
        return taken

    def _finished(self, job: Job) -> None:
        job.out.put(_DONE)
        with self._cv:
            self._running -= 1
            self._job_s = 0.8 * self._job_s + 0.2 * (time.perf_counter() - job.started)
            self._set_depth()

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._running and not self._closed:
                    self._cv.wait()
                if self._closed and not self._q and not self._running:
                    return
                taken = self._admit()
            for job in taken:
                job.started = time.perf_counter()
                if self._batched(job):
                    try:
                        self.batch.add(job.request, job.emit, lambda job=job: self._finished(job), job.cancel)
                    except BaseException as e:  # a bad request: handed to its RPC thread; the worker lives on
                        job.out.put(e)
                        self._finished(job)
                else:
                    self._solo = (job, job.iterate())
            try:
                if self.batch is not None and self.batch.active:
                    self.batch.step()
                    if self.metrics is not None:
                        self.metrics.batch_streams.set(self.batch.last)
                self._step_solo()
            except BaseException as e:  # the batched forward failed: every request in the batch fails
                log.exception("decode step failed")
                for m in list(self.batch.members if self.batch else []):
                    m.emit(e)
                    self.batch._release(m)

    def _step_solo(self) -> None:
        """One event of the job running alone."""
        if self._solo is None:
            return
        job, events = self._solo
        try:
            job.emit(next(events))
            return
        except StopIteration:
            pass
        except BaseException as e:  # handed to the RPC thread, which maps it to a status; the worker lives on
            job.out.put(e)
        self._solo = None
        self._finished(job)

    def close(self, cancel_queued: bool = True) -> None:
        """Stop accepting jobs; queued ones are cancelled (or run, with cancel_queued=False); the worker exits once
        everything admitted has finished."""
        with self._cv:
            self._closed = True
            if cancel_queued:
                for job in self._q:
                    job.cancel.set()
            self._cv.notify_all()
        self._thread.join(timeout=30)
