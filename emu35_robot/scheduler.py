"""A bounded request queue in front of the engine, drained by a pool of worker threads (one today).

RPC handlers submit jobs and stream the events a worker produces. The queue is the one place that decides admission
(RESOURCE_EXHAUSTED with a retry hint when full) and order, so a continuous-batching scheduler can replace the worker
pool later without touching the handlers. Cancelling a job (client gone, deadline passed, shutdown) sets its Event:
a queued job is skipped, a running one stops within one decode step.
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
    run: Callable[[threading.Event], Iterator]  # executed on a worker; yields events
    cancel: threading.Event = field(default_factory=threading.Event)
    out: queue.Queue = field(default_factory=queue.Queue)
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None

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


class Scheduler:
    def __init__(self, max_queue: int, workers: int = 1, metrics: Metrics | None = None):
        self.max_queue = max_queue
        self.metrics = metrics
        self._q: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self._running = 0
        self._job_s = 1.0  # running mean of job durations, for the retry hint
        self._threads = [threading.Thread(target=self._work, name=f"decoder-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    @property
    def depth(self) -> int:
        return len(self._q)

    def retry_after_ms(self) -> int:
        """When a slot is likely to free up: the queue ahead times the mean job duration."""
        return max(100, int(1000 * self._job_s * (len(self._q) + self._running) / max(1, len(self._threads))))

    def submit(self, run: Callable[[threading.Event], Iterator], cancel: threading.Event | None = None) -> Job:
        job = Job(run) if cancel is None else Job(run, cancel)
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

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._closed:
                    self._cv.wait()
                if not self._q:
                    return
                job = self._q.popleft()
                self._running += 1
                self._set_depth()
            job.started = time.perf_counter()
            try:
                if not job.cancel.is_set():
                    for e in job.run(job.cancel):
                        job.out.put(e)
            except BaseException as e:  # handed to the RPC thread, which maps it to a status; the worker lives on
                job.out.put(e)
            finally:
                job.out.put(_DONE)
                with self._cv:
                    self._running -= 1
                    self._job_s = 0.8 * self._job_s + 0.2 * (time.perf_counter() - job.started)
                    self._set_depth()

    def close(self, cancel_queued: bool = True) -> None:
        """Stop accepting jobs; queued ones are cancelled (or run, with cancel_queued=False); workers exit."""
        with self._cv:
            self._closed = True
            if cancel_queued:
                for job in self._q:
                    job.cancel.set()
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=30)
