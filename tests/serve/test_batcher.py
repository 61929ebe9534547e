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
    # Filled round-robin, one sentence of each waiting request in turn.
    assert calls[0] == ["a"] and calls[1] == ["x0", "x1", "x2", "y0"] and calls[2] == ["y1", "y2"]
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
    assert set(errors) == {"decode"}
    batcher.close(10)


def test_one_bad_sentence_fails_only_its_own_request():
    """Issue 28 item 3: the failed call is retried request by request."""
    calls, gate = [], threading.Event()

    def decode(texts):
        gate.wait(10)
        calls.append(list(texts))
        if "bad" in texts:
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return [t.upper() for t in texts]

    batcher = Batcher(decode, max_batch=8, max_wait=0.05)
    first = batcher.submit(["a"])
    until_taken(batcher)
    good, bad, other = batcher.submit(["b", "c"]), batcher.submit(["bad"]), batcher.submit(["d"])
    gate.set()
    assert first.result(10) == ["A"] and good.result(10) == ["B", "C"] and other.result(10) == ["D"]
    with pytest.raises(UnicodeEncodeError):
        bad.result(10)
    assert calls[1] == ["b", "bad", "d", "c"]  # the shared call failed, then each alone
    assert calls[2:] == [["b", "c"], ["bad"], ["d"]]
    batcher.close(10)


def test_a_big_request_is_decoded_in_pieces_beside_small_ones():
    """Issue 28 item 4: 64 sentences do not hold the worker ahead of a later one-sentence request."""
    calls, gate = [], threading.Event()
    batcher = Batcher(recording_decode(calls, gate), max_batch=8, max_wait=0.05, max_queue=100)
    first = batcher.submit(["a"])
    until_taken(batcher)
    big = batcher.submit([f"b{i}" for i in range(64)])
    small = batcher.submit(["small"])
    gate.set()
    assert small.result(10) == ["SMALL"] and first.result(10) == ["A"]
    assert big.result(10) == [f"B{i}" for i in range(64)]
    assert all(len(c) <= 8 for c in calls)
    assert "small" in calls[1], calls[1]  # in the first call after the big request arrived
    batcher.close(10)


def test_a_cancelled_request_leaves_the_queue():
    """Issue 28 item 4: a request whose client went away is not decoded further."""
    calls, gate = [], threading.Event()
    batcher = Batcher(recording_decode(calls, gate), max_batch=2, max_wait=0, max_queue=100)
    first = batcher.submit(["a"])
    until_taken(batcher)
    doomed = batcher.submit([f"d{i}" for i in range(10)])
    assert batcher.cancel(doomed) == 10 and batcher.pending == 0
    after = batcher.submit(["z"])
    gate.set()
    assert first.result(10) == ["A"] and after.result(10) == ["Z"]
    assert not any(t.startswith("d") for c in calls for t in c)
    batcher.close(10)


def test_worker_survives_a_future_cancelled_while_decoding():
    """Issue 28 item 7: setting the result of a cancelled future must not kill the worker."""
    calls, gate = [], threading.Event()
    batcher = Batcher(recording_decode(calls, gate), max_batch=4, max_wait=0)
    running = batcher.submit(["a"])
    until_taken(batcher)
    running.cancel()  # what a shutdown timeout does to the waiting request
    gate.set()
    assert batcher.submit(["b"]).result(10) == ["B"]
    assert batcher.alive
    batcher.close(10)
    assert not batcher.alive


def test_without_batching_each_request_is_its_own_call():
    calls, gate = [], threading.Event()
    batcher = Batcher(recording_decode(calls, gate), max_batch=8, max_wait=1, batching=False)
    futures = [batcher.submit([t]) for t in "abc"]
    gate.set()
    assert [f.result(10) for f in futures] == [["A"], ["B"], ["C"]]
    assert calls == [["a"], ["b"], ["c"]]
    batcher.close(10)


def test_big_requests_leave_room_in_the_queue_for_small_ones():
    """Issue 28 item 4: requests of more than max_batch sentences fill at most half the queue."""
    calls, gate = [], threading.Event()
    batcher = Batcher(recording_decode(calls, gate), max_batch=2, max_wait=0, max_queue=8)
    running = batcher.submit(["a"])
    until_taken(batcher)
    big = batcher.submit(["b1", "b2", "b3", "b4"])
    with pytest.raises(QueueFull, match="limit 4 for requests of more than 2"):
        batcher.submit(["c1", "c2", "c3", "c4"])
    small = [batcher.submit([f"s{i}"]) for i in range(4)]  # the other half stays theirs
    gate.set()
    assert running.result(10) == ["A"] and big.result(10) == ["B1", "B2", "B3", "B4"]
    assert [f.result(10) for f in small] == [[f"S{i}"] for i in range(4)]
    batcher.close(10)


def test_a_call_never_mixes_two_runs_decode_functions():
    """`nerft serve A B`: requests for different runs wait for separate calls, in arrival order."""
    calls_a, calls_b, gate = [], [], threading.Event()
    decode_a, decode_b = recording_decode(calls_a, gate), recording_decode(calls_b)
    batcher = Batcher(decode_a, max_batch=8, max_wait=0.05, max_queue=100)
    first = batcher.submit(["a0"])  # holds the worker until the gate opens
    time.sleep(0.1)
    futures = [batcher.submit([f"a{i}"]) if i % 2 else batcher.submit([f"b{i}"], decode=decode_b)
               for i in range(1, 7)]
    gate.set()
    assert first.result(5) == ["A0"]
    assert [f.result(5) for f in futures] == [["A1"], ["B2"], ["A3"], ["B4"], ["A5"], ["B6"]]
    # The oldest waiting request was run a's: its call takes a's three, the next call b's three.
    assert calls_a == [["a0"], ["a1", "a3", "a5"]] and calls_b == [["b2", "b4", "b6"]]
    batcher.close()
