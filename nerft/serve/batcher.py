"""Requests in, shared decode calls out: a bounded queue drained by one worker thread.

One worker thread decodes, so concurrent requests share decode calls instead of taking turns
on the engine's lock. Concurrent requests wait in the queue; the worker takes the oldest, waits up to
`max_wait` seconds for more sentences to arrive (never longer than the oldest has waited), and
decodes up to `max_batch` sentences in one call. With batching off it takes one request at a
time and never waits: the baseline the load test compares against.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable


class QueueFull(Exception):
    """The queue holds `max_queue` sentences already: the client should retry later."""


class Draining(Exception):
    """The service is shutting down and accepts no new work."""


@dataclass
class _Job:
    texts: list[str]
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """Hooks for metrics; the defaults do nothing."""

    on_batch: Callable[[int, float], None] = lambda sentences, seconds: None
    on_depth: Callable[[int], None] = lambda sentences: None
    on_error: Callable[[str], None] = lambda kind: None


class Batcher:
    def __init__(self, decode: Callable[[list[str]], list], *, max_batch: int = 16,
                 max_wait: float = 0.01, max_queue: int = 256, batching: bool = True,
                 stats: BatchStats | None = None):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.decode, self.max_batch, self.max_wait = decode, max_batch, max_wait
        self.max_queue, self.batching = max_queue, batching
        self.stats = stats or BatchStats()
        self._jobs: deque[_Job] = deque()
        self._pending = 0  # sentences queued, not yet taken by the worker
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="nerft-decode", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, texts: list[str]) -> Future:
        """Queue `texts`; the future's result is decode(texts), in order."""
        with self._cond:
            if self._closing:
                raise Draining("the service is shutting down")
            if self._pending and self._pending + len(texts) > self.max_queue:
                raise QueueFull(f"{self._pending} sentences already queued (limit {self.max_queue})")
            job = _Job(list(texts))
            self._jobs.append(job)
            self._pending += len(job.texts)
            self.stats.on_depth(self._pending)
            self._cond.notify_all()
            return job.future

    def close(self, timeout: float | None = None) -> None:
        """Accept nothing new, finish every queued job, then stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._jobs:
                if self._closing:
                    return None
                self._cond.wait()
            if self.batching:
                deadline = self._jobs[0].enqueued + self.max_wait
                while (self._pending < self.max_batch and not self._closing
                       and (left := deadline - time.monotonic()) > 0):
                    self._cond.wait(left)
            taken = [self._jobs.popleft()]
            size = len(taken[0].texts)
            while self.batching and self._jobs and size + len(self._jobs[0].texts) <= self.max_batch:
                size += len(self._jobs[0].texts)
                taken.append(self._jobs.popleft())
            self._pending -= size
            self.stats.on_depth(self._pending)
            return taken

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            texts = [t for job in jobs for t in job.texts]
            started = time.perf_counter()
            try:
                results = self.decode(texts)
            except Exception as e:  # handed to every waiting request, which answers 500
                self.stats.on_error("decode")
                for job in jobs:
                    job.future.set_exception(e)
                continue
            self.stats.on_batch(len(texts), time.perf_counter() - started)
            at = 0
            for job in jobs:
                job.future.set_result(results[at:at + len(job.texts)])
                at += len(job.texts)
