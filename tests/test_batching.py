"""Unit tests for serving.batching.Batcher (pure NumPy, no TensorFlow)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.batching import Batcher, BatcherClosed, BatchingError, QueueFullError
from tests.support.concurrency import call_concurrently


class Recorder:
    """A batched function that records the batch sizes it saw and can block or fail."""

    def __init__(self, fail_on: float | None = None, delay: float = 0.0):
        self.sizes: list[int] = []
        self.fail_on = fail_on
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            self.sizes.append(len(x))
        self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and np.any(x == self.fail_on):
            raise RuntimeError(f"bad value {self.fail_on} in batch")
        return x * 2


def submit_concurrently(batcher: Batcher, arrays: list[np.ndarray]) -> list[object]:
    """Submit all arrays at (nearly) the same time; return result or exception per array."""
    return call_concurrently(batcher.submit, arrays)


def test_single_request_round_trip():
    fn = Recorder()
    with Batcher(fn, max_batch_size=8, batch_timeout_s=0.0) as b:
        out = b.submit(np.arange(3.0))
    np.testing.assert_array_equal(out, [0.0, 2.0, 4.0])
    assert fn.sizes == [3]


@pytest.mark.parametrize("timeout", [0.0, 0.05])
def test_submit_timeout_raises_and_the_rows_still_run(timeout):
    fn = Recorder()
    fn.gate.clear()  # the batch blocks until the gate opens
    with Batcher(fn, max_batch_size=8, batch_timeout_s=0.0) as b:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=rf"batcher: no result within {timeout}s"):
            b.submit(np.arange(2.0), timeout=timeout)
        assert time.monotonic() - started < timeout + 1.0
        fn.gate.set()
        np.testing.assert_array_equal(b.submit(np.arange(1.0), timeout=5), [0.0])
    assert sum(fn.sizes) == 3  # the timed-out rows ran too (merged or not with the next)


def test_concurrent_requests_merge_and_split_in_order():
    fn = Recorder()
    arrays = [np.full((i + 1, 2), float(i)) for i in range(6)]  # 21 rows in all
    with Batcher(fn, max_batch_size=64, batch_timeout_s=0.5) as b:
        fn.gate.clear()  # hold the first batch so the others queue up behind it
        results = submit_concurrently_with_gate(b, arrays, fn)
    for i, res in enumerate(results):
        assert isinstance(res, np.ndarray), res
        np.testing.assert_array_equal(res, np.full((i + 1, 2), 2.0 * i))
    assert sum(fn.sizes) == 21
    assert len(fn.sizes) < 6  # at least some requests were merged
    assert b.stats.rows == 21 and b.stats.requests == 6


def submit_concurrently_with_gate(b: Batcher, arrays: list[np.ndarray], fn: Recorder) -> list:
    def release() -> None:
        deadline = time.monotonic() + 5
        while b.queued_rows + sum(fn.sizes) < sum(len(a) for a in arrays):
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        fn.gate.set()

    t = threading.Thread(target=release)
    t.start()
    results = submit_concurrently(b, arrays)
    t.join()
    return results


def test_full_batch_runs_without_waiting_for_timeout():
    fn = Recorder()
    with Batcher(fn, max_batch_size=4, batch_timeout_s=30.0) as b:
        started = time.monotonic()
        results = submit_concurrently(b, [np.ones(2), np.ones(2)])
        elapsed = time.monotonic() - started
    assert all(isinstance(r, np.ndarray) for r in results)
    assert fn.sizes == [4]
    assert elapsed < 10  # far below the 30 s timeout: a full batch is run at once


def test_partial_batch_is_flushed_after_timeout():
    fn = Recorder()
    with Batcher(fn, max_batch_size=100, batch_timeout_s=0.2) as b:
        started = time.monotonic()
        out = b.submit(np.ones(3))
        elapsed = time.monotonic() - started
    np.testing.assert_array_equal(out, [2.0, 2.0, 2.0])
    assert fn.sizes == [3]
    assert elapsed >= 0.19  # it waited for company, then ran alone


def test_batches_never_exceed_max_batch_size():
    fn = Recorder()
    arrays = [np.full(3, float(i)) for i in range(10)]
    with Batcher(fn, max_batch_size=7, batch_timeout_s=0.05) as b:
        fn.gate.clear()
        results = submit_concurrently_with_gate(b, arrays, fn)
    assert max(fn.sizes) <= 7
    assert sum(fn.sizes) == 30
    for i, res in enumerate(results):
        np.testing.assert_array_equal(res, np.full(3, 2.0 * i))


def test_large_request_is_split_and_reassembled():
    fn = Recorder()
    with Batcher(fn, max_batch_size=4, batch_timeout_s=0.0) as b:
        out = b.submit(np.arange(10.0))
    np.testing.assert_array_equal(out, np.arange(10.0) * 2)
    assert sorted(fn.sizes) == [2, 4, 4]


def test_large_request_with_tuple_outputs_is_reassembled():
    # fn returns a tuple of arrays (the gateway's embedded backend: probabilities, versions)
    def fn(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x * 2, np.full(len(x), 7, dtype=np.int64)

    with Batcher(fn, max_batch_size=4, batch_timeout_s=0.0) as b:
        doubled, versions = b.submit(np.arange(10.0))
    np.testing.assert_array_equal(doubled, np.arange(10.0) * 2)
    np.testing.assert_array_equal(versions, np.full(10, 7))


def test_error_reaches_exactly_the_callers_of_the_failing_batch():
    fn = Recorder(fail_on=-1.0)
    with Batcher(fn, max_batch_size=2, batch_timeout_s=0.3) as b:
        # max_batch_size=2 and single-row requests: the bad row shares a batch with one other
        arrays = [np.array([float(i)]) for i in range(5)] + [np.array([-1.0])]
        fn.gate.clear()
        results = submit_concurrently_with_gate(b, arrays, fn)
    failed = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert 5 in failed
    assert len(failed) <= 2  # the bad request and at most its one batch-mate
    for i in failed:
        assert isinstance(results[i], RuntimeError)
        assert str(results[i]) == "bad value -1.0 in batch"
    for i, r in enumerate(results):
        if i not in failed:
            np.testing.assert_array_equal(r, [2.0 * i])


def test_batcher_keeps_working_after_an_error():
    fn = Recorder(fail_on=-1.0)
    with Batcher(fn, max_batch_size=8, batch_timeout_s=0.0) as b:
        with pytest.raises(RuntimeError, match="bad value"):
            b.submit(np.array([-1.0]))
        np.testing.assert_array_equal(b.submit(np.array([1.0])), [2.0])


def test_queue_full_raises_clear_error():
    fn = Recorder()
    fn.gate.clear()
    b = Batcher(fn, max_batch_size=2, batch_timeout_s=0.0, max_enqueued_batches=1)
    try:
        first = threading.Thread(target=b.submit, args=(np.ones(2),))
        first.start()
        deadline = time.monotonic() + 5
        while not fn.sizes and time.monotonic() < deadline:  # worker took it, is blocked
            time.sleep(0.005)
        second = threading.Thread(target=b.submit, args=(np.ones(2),))
        second.start()
        while b.queued_rows < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        with pytest.raises(QueueFullError, match=r"batch scheduling queue .* is full"):
            b.submit(np.ones(1))
    finally:
        fn.gate.set()
        b.close()
        first.join(5)
        second.join(5)
    assert fn.sizes == [2, 2]


def test_close_drains_queued_requests_then_refuses_new_ones():
    fn = Recorder(delay=0.05)
    b = Batcher(fn, max_batch_size=1, batch_timeout_s=0.0)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(b.submit, np.array([float(i)])) for i in range(4)]
        deadline = time.monotonic() + 5
        while b.queued_rows + len(fn.sizes) < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        b.close()
        outs = [f.result(5) for f in futures]
    assert [float(o[0]) for o in outs] == [0.0, 2.0, 4.0, 6.0]
    with pytest.raises(BatcherClosed):
        b.submit(np.ones(1))


def test_mapping_inputs_and_outputs():
    def fn(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"sum": inputs["a"] + inputs["b"], "a": inputs["a"]}

    with Batcher(fn, max_batch_size=8, batch_timeout_s=0.2) as b:
        results = submit_concurrently(
            b,
            [
                {"a": np.array([1, 2]), "b": np.array([10, 20])},
                {"a": np.array([3]), "b": np.array([30])},
            ],
        )
    np.testing.assert_array_equal(results[0]["sum"], [11, 22])
    np.testing.assert_array_equal(results[1]["sum"], [33])
    np.testing.assert_array_equal(results[1]["a"], [3])


def test_wrong_output_rows_is_an_error_for_the_callers():
    with (
        Batcher(lambda x: x[:1], max_batch_size=8, batch_timeout_s=0.0) as b,
        pytest.raises(BatchingError, match="expected 3 rows"),
    ):
        b.submit(np.ones(3))


def test_multiple_batch_threads_run_batches_in_parallel():
    fn = Recorder(delay=0.6)
    with Batcher(fn, max_batch_size=1, batch_timeout_s=0.0, num_batch_threads=2) as b:
        started = time.monotonic()
        submit_concurrently(b, [np.ones(1), np.ones(1)])
        elapsed = time.monotonic() - started
    assert fn.sizes == [1, 1]
    assert elapsed < 1.1  # two 0.6 s batches overlapped (one after the other: >= 1.2 s)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0, "batch_timeout_s": 0.0}, "max_batch_size"),
        ({"max_batch_size": 1, "batch_timeout_s": -1.0}, "batch_timeout_s"),
        ({"max_batch_size": 1, "batch_timeout_s": 0.0, "max_enqueued_batches": 0}, "enqueued"),
    ],
)
def test_bad_parameters_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Batcher(lambda x: x, **kwargs)


def test_bad_submissions_are_rejected():
    with Batcher(lambda x: x, max_batch_size=4, batch_timeout_s=0.0) as b:
        with pytest.raises(ValueError, match="empty"):
            b.submit(np.zeros((0, 3)))
        with pytest.raises(ValueError, match="batch axis"):
            b.submit(np.float32(1.0))
        with pytest.raises(ValueError, match="differ in rows"):
            b.submit({"a": np.ones(2), "b": np.ones(3)})
