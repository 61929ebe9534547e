"""The batching worker on its own, with a plain decode function: order, batch bounds, queue
limit, errors, and draining on close."""

import threading
import time

import pytest

from nerft.serve.batcher import BatchStats, Batcher, Draining, QueueFull


def until_taken(batcher):
    """Wait until the worker has taken everything queued (it then blocks on its gate)."""
    deadline = time.monotonic() + 10
    while batcher.pending:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def recording_decode(calls, gate=None):
    def decode(texts):
        if gate is not None:
            gate.wait(10)
        calls.append(list(texts))
        return [t.upper() for t in texts]
    return decode


def test_concurrent_jobs_share_calls_in_order_and_within_max_batch():
    calls, gate = [], threading.Event()
    batcher = Batcher(recording_decode(calls, gate), max_batch=4, max_wait=0.05, max_queue=100)
    first = batcher.submit(["a"])  # the worker takes it and blocks on the gate
    until_taken(batcher)
    futures = [batcher.submit([f"x{i}", f"y{i}"]) for i in range(3)]  # 6 sentences queue up
    gate.set()
    assert first.result(10) == ["A"]
    assert [f.result(10) for f in futures] == [[f"X{i}", f"Y{i}"] for i in range(3)]
    assert calls[0] == ["a"] and calls[1] == ["x0", "y0", "x1", "y1"] and calls[2] == ["x2", "y2"]
    batcher.close(10)


def test_full_queue_and_closed_batcher_refuse_work():
    calls, gate = [], threading.Event()
    depths = []
    batcher = Batcher(recording_decode(calls, gate), max_batch=1, max_wait=0, max_queue=2,
                      stats=BatchStats(on_depth=depths.append))
    running = batcher.submit(["a"])
    until_taken(batcher)  # the queue is empty again
    queued = batcher.submit(["b", "c"])
    with pytest.raises(QueueFull, match="2 sentences already queued"):
        batcher.submit(["d"])
    gate.set()
    batcher.close(10)  # drains: the queued job still gets its answer
    assert running.result(1) == ["A"] and queued.result(1) == ["B", "C"]
    assert max(depths) == 2 and depths[-1] == 0
    with pytest.raises(Draining):
        batcher.submit(["e"])


def test_a_failed_decode_fails_every_request_in_the_call():
    def decode(texts):
        raise RuntimeError("out of memory")

    errors = []
    batcher = Batcher(decode, max_batch=8, max_wait=0.05, stats=BatchStats(on_error=errors.append))
    futures = [batcher.submit([t]) for t in "ab"]
    for f in futures:
        with pytest.raises(RuntimeError, match="out of memory"):
            f.result(10)
    assert errors == ["decode"]
    batcher.close(10)


def test_without_batching_each_request_is_its_own_call():
    calls, gate = [], threading.Event()
    batcher = Batcher(recording_decode(calls, gate), max_batch=8, max_wait=1, batching=False)
    futures = [batcher.submit([t]) for t in "abc"]
    gate.set()
    assert [f.result(10) for f in futures] == [["A"], ["B"], ["C"]]
    assert calls == [["a"], ["b"], ["c"]]
    batcher.close(10)
