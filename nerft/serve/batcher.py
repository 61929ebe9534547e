"""Requests in, shared decode calls out: a bounded queue drained by one worker thread.

One worker thread decodes, so concurrent requests share decode calls instead of taking turns
on the engine's lock. Concurrent requests wait in the queue; the worker takes the oldest, waits up to
`max_wait` seconds for more sentences to arrive (never longer than the oldest has waited), and
decodes up to `max_batch` sentences in one call. The call is filled round-robin, one sentence
from each waiting request in turn, so a request of 64 sentences is decoded in pieces beside
everyone else's instead of holding the worker alone. With batching off it takes one request
at a time and never waits: the baseline the load test compares against.

A call that fails is retried request by request, so one sentence the decoder cannot take fails
only the request that sent it. A cancelled request (its client went away, or its wait timed
out) has its sentences not yet decoded dropped from the queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("uvicorn.error")


class QueueFull(Exception):
    """The queue holds `max_queue` sentences already: the client should retry later."""


class Draining(Exception):
    """The service is shutting down and accepts no new work."""


@dataclass(eq=False)
class _Job:
    texts: list[str]
    decode: Callable[[list[str]], list]
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    results: list = field(default_factory=list)
    taken: int = 0  # sentences handed to the decoder so far
    done: int = 0  # sentences with an answer

    def __post_init__(self):
        self.results = [None] * len(self.texts)

    @property
    def left(self) -> int:
        return len(self.texts) - self.taken


@dataclass
class BatchStats:
    """Hooks for metrics; the defaults do nothing."""

    on_batch: Callable[[int, float], None] = lambda sentences, seconds: None
    on_depth: Callable[[int], None] = lambda sentences: None
    on_error: Callable[[str], None] = lambda kind: None


def _settle(future: Future, result=None, error: BaseException | None = None) -> None:
    """Set a future's outcome unless it was cancelled meanwhile (its waiter has gone)."""
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except InvalidStateError:
        pass


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

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs (False after close, or if it died)."""
        return self._thread.is_alive()

    def submit(self, texts: list[str], decode: Callable[[list[str]], list] | None = None) -> Future:
        """Queue `texts`; the future's result is decode(texts), in order (`decode`: this request's
        function, default the batcher's; requests share a call only with the same function)."""
        with self._cond:
            if self._closing:
                raise Draining("the service is shutting down")
            if not self.alive:
                raise Draining("the decode worker has stopped; restart the service")
            # Requests of more than one call's worth may fill only half the queue, so that a few
            # of them never leave the one-sentence requests of everyone else without room.
            big = len(texts) > self.max_batch
            limit = max(self.max_queue // 2, 1) if big else self.max_queue
            if self._pending and self._pending + len(texts) > limit:
                raise QueueFull(f"{self._pending} sentences already queued (limit {limit}"
                                + (f" for requests of more than {self.max_batch}" if big else "")
                                + ")")
            job = _Job(list(texts), decode or self.decode)
            self._jobs.append(job)
            self._pending += len(job.texts)
            self.stats.on_depth(self._pending)
            self._cond.notify_all()
            return job.future

    def cancel(self, future: Future) -> int:
        """Cancel the request of `future`: its sentences not yet decoded leave the queue (a decode
        call already running finishes). Returns how many sentences were dropped."""
        with self._cond:
            future.cancel()
            for job in self._jobs:
                if job.future is future:
                    dropped = job.left
                    self._drop(job)
                    if dropped:
                        self.stats.on_error("cancelled")
                    return dropped
        return 0

    def close(self, timeout: float | None = None) -> None:
        """Accept nothing new, finish every queued job, then stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _drop(self, job: _Job) -> None:
        """Remove `job` from the queue (caller holds the lock)."""
        if job in self._jobs:
            self._jobs.remove(job)
            self._pending -= job.left
            job.taken = len(job.texts)
            self.stats.on_depth(self._pending)

    def _take(self) -> list[tuple[_Job, int]] | None:
        """The next decode call: (job, sentence index) pairs, round-robin over waiting jobs."""
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
            for job in [j for j in self._jobs if j.future.cancelled()]:
                self._drop(job)
            taken: list[tuple[_Job, int]] = []
            if self._jobs and not self.batching:  # one whole request per call
                job = self._jobs[0]
                taken = [(job, i) for i in range(job.taken, len(job.texts))]
                job.taken = len(job.texts)
            # Only requests for the oldest one's decode function (its run) share this call.
            jobs = [j for j in self._jobs if j.decode == self._jobs[0].decode] \
                if self.batching and self._jobs else []
            while jobs and len(taken) < self.max_batch:
                for job in jobs[:self.max_batch - len(taken)]:
                    taken.append((job, job.taken))
                    job.taken += 1
                jobs = [j for j in jobs if j.left]
            self._jobs = deque(j for j in self._jobs if j.left)
            self._pending -= len(taken)
            self.stats.on_depth(self._pending)
            return taken

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            if not taken:
                continue
            try:
                self._decode(taken)
            except Exception:  # a bug in the bookkeeping must not kill the worker
                log.exception("decode worker: unexpected error")
                for job in {job for job, _ in taken}:
                    self._fail(job, RuntimeError("internal error in the decode worker"))

    def _decode(self, taken: list[tuple[_Job, int]]) -> None:
        texts = [job.texts[i] for job, i in taken]
        started = time.perf_counter()
        try:
            results = taken[0][0].decode(texts)
        except Exception as e:
            self.stats.on_error("decode")
            jobs = list(dict.fromkeys(job for job, _ in taken))
            if len(jobs) == 1:
                self._fail(jobs[0], e)
                return
            # Retry each request's sentences alone, so only the request that broke the call fails.
            for job in jobs:
                self._decode([(j, i) for j, i in taken if j is job])
            return
        self.stats.on_batch(len(texts), time.perf_counter() - started)
        for (job, i), result in zip(taken, results):
            job.results[i] = result
            job.done += 1
            if job.done == len(job.texts):
                _settle(job.future, job.results)

    def _fail(self, job: _Job, error: BaseException) -> None:
        with self._cond:
            self._drop(job)
        _settle(job.future, error=error)
