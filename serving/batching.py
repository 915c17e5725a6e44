"""Thread-based micro-batching across concurrent callers (no TensorFlow import).

Each caller submits its own batch (rows along axis 0); a worker thread merges what is queued
into one call of ``fn`` -- up to ``max_batch_size`` rows, waiting at most ``batch_timeout_s``
after the oldest queued request -- and hands every caller its own slice of the outputs, in
order. This is TF Serving's batching scheme (``max_batch_size``, ``batch_timeout_micros``,
``max_enqueued_batches``, ``num_batch_threads``) in plain Python threads; ``fn`` is expected
to release the GIL (TensorFlow and NumPy do), so waiting callers cost nothing.

Example::

    batcher = Batcher(lambda x: model.predict({"images": x}), max_batch_size=64,
                      batch_timeout_s=0.002)
    outputs = batcher.submit(images)   # from many threads at once
    batcher.close()

Inputs and outputs may be a single ``np.ndarray`` or a mapping of name -> array (split per
key, all with the same number of rows). A request with more rows than ``max_batch_size`` is
split into several batches and reassembled (TF Serving's ``enable_large_batch_splitting``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Batch = np.ndarray | Mapping[str, np.ndarray]


class BatchingError(Exception):
    """Base class of the batcher's own errors."""


class QueueFullError(BatchingError):
    """The queue holds ``max_enqueued_batches`` batches already; the caller should back off."""


class BatcherClosed(BatchingError):
    """``submit`` after ``close``."""


def _rows(batch: Batch) -> int:
    if isinstance(batch, Mapping):
        if not batch:
            raise ValueError("a batch mapping needs at least one array")
        sizes = {k: _leading(v, k) for k, v in batch.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"arrays of one batch differ in rows: {sizes}")
        return next(iter(sizes.values()))
    return _leading(batch, "batch")


def _leading(arr: Any, name: str) -> int:
    if not isinstance(arr, np.ndarray) or arr.ndim == 0:
        raise ValueError(f"{name} must be a NumPy array with a batch axis")
    return int(arr.shape[0])


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    if isinstance(batch, Mapping):
        return {k: v[start:stop] for k, v in batch.items()}
    return batch[start:stop]


def _concat(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, Mapping):
        keys = list(first)
        for p in parts[1:]:
            if not isinstance(p, Mapping) or list(p) != keys:
                raise ValueError("batched requests must all use the same input names")
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in keys}
    if isinstance(first, tuple):  # fn returned a tuple of arrays: join each position
        return tuple(np.concatenate([p[j] for p in parts], axis=0) for j in range(len(first)))
    return np.concatenate(parts, axis=0)


@dataclass
class _Request:
    """One caller's submission: its chunks complete independently.

    ``done`` is a lock held from the start and released once, when the last chunk is in: the
    caller blocks acquiring it. A bare lock is one C-level wait and wake; a
    ``threading.Event`` is a Condition with Python-level locking on both sides (measured here:
    0.65 against 4.2 µs for the create-signal-wait cycle).
    """

    n_chunks: int
    results: list[Any]
    error: BaseException | None = None
    remaining: int = 0
    done: Any = None  # threading.Lock (a factory function, not a type)

    def __post_init__(self) -> None:
        self.remaining = self.n_chunks
        self.done = threading.Lock()
        self.done.acquire()


@dataclass
class _Task:
    request: _Request
    index: int
    data: Batch
    rows: int
    enqueued: float


@dataclass
class BatcherStats:
    """Counters since start: batches run, rows run, requests completed, largest batch."""

    batches: int = 0
    rows: int = 0
    requests: int = 0
    max_rows: int = 0


class Batcher:
    """Merges concurrent ``submit`` calls into batched calls of ``fn``.

    ``fn`` gets the concatenated inputs and must return an array (or a mapping of arrays, or a
    tuple of arrays) with the same number of rows. An exception in ``fn`` is raised in exactly
    the callers whose rows were in that batch. ``on_batch(rows)`` is called after each batch
    (e.g. to feed a histogram).
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        max_batch_size: int,
        batch_timeout_s: float,
        max_enqueued_batches: int = 100,
        num_batch_threads: int = 1,
        *,
        name: str = "batcher",
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if batch_timeout_s < 0:
            raise ValueError("batch_timeout_s must be >= 0")
        if max_enqueued_batches < 1:
            raise ValueError("max_enqueued_batches must be >= 1")
        if num_batch_threads < 1:
            raise ValueError("num_batch_threads must be >= 1")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.batch_timeout_s = batch_timeout_s
        self.max_enqueued_batches = max_enqueued_batches
        self.num_batch_threads = num_batch_threads
        self.name = name
        self._on_batch = on_batch
        self._queue: deque[_Task] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self.stats = BatcherStats()
        self._threads = [
            threading.Thread(target=self._worker, name=f"{name}-{i}", daemon=True)
            for i in range(num_batch_threads)
        ]
        for t in self._threads:
            t.start()

    # -- caller side --------------------------------------------------------------------------
    def submit(self, batch: Batch, timeout: float | None = None) -> Any:
        """Queue ``batch`` and block until its slice of the outputs is ready; return it.

        Raises `QueueFullError` when the queue is full, `BatcherClosed` after `close()`,
        ``TimeoutError`` if ``timeout`` seconds pass first (the rows still run), and whatever
        ``fn`` raised for the batch these rows were in.
        """
        rows = _rows(batch)
        if rows == 0:
            raise ValueError("cannot batch an empty request (0 rows)")
        n_chunks = math.ceil(rows / self.max_batch_size)
        request = _Request(n_chunks=n_chunks, results=[None] * n_chunks)
        now = time.monotonic()
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"{self.name} is closed")
            was_empty = not self._queue
            needed = math.ceil((self._queued_rows + rows) / self.max_batch_size)
            if needed > self.max_enqueued_batches:
                raise QueueFullError(
                    f"The batch scheduling queue to which this task was submitted is full "
                    f"({self.max_enqueued_batches} batches of up to {self.max_batch_size} rows)"
                )
            for i in range(n_chunks):
                start = i * self.max_batch_size
                stop = min(rows, start + self.max_batch_size)
                chunk = batch if n_chunks == 1 else _slice(batch, start, stop)
                self._queue.append(_Task(request, i, chunk, stop - start, now))
            self._queued_rows += rows
            # Wake the batch threads only when it changes what they wait for: the first
            # request (they sleep until one comes) or a full batch (no need to wait out the
            # timeout). Waking them on every request costs a thread switch each.
            if was_empty or self._queued_rows >= self.max_batch_size:
                self._cond.notify_all()
        if not request.done.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            raise TimeoutError(f"{self.name}: no result within {timeout}s")
        if request.error is not None:
            raise request.error
        return request.results[0] if n_chunks == 1 else _concat(request.results)

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting requests, run what is queued, and join the worker threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)

    @property
    def queued_rows(self) -> int:
        """Rows waiting in the queue right now."""
        with self._cond:
            return self._queued_rows

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker side ---------------------------------------------------------------------------
    def _next_batch(self) -> list[_Task] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._queue[0].enqueued + self.batch_timeout_s
            while self._queued_rows < self.max_batch_size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                if not self._queue:  # another worker took it
                    return []
            tasks: list[_Task] = []
            rows = 0
            while self._queue and rows + self._queue[0].rows <= self.max_batch_size:
                task = self._queue.popleft()
                rows += task.rows
                tasks.append(task)
            self._queued_rows -= rows
            if self._queue:
                self._cond.notify_all()  # let another worker start on the rest
            return tasks

    def _worker(self) -> None:
        while True:
            tasks = self._next_batch()
            if tasks is None:
                return
            if tasks:
                self._run(tasks)

    def _run(self, tasks: list[_Task]) -> None:
        total = sum(t.rows for t in tasks)
        try:
            inputs = _concat([t.data for t in tasks])
            outputs = self.fn(inputs)
            parts = _split(outputs, [t.rows for t in tasks], total)
        except Exception as exc:  # delivered to exactly the callers of this batch
            log.debug("%s: batch of %d rows failed: %s", self.name, total, exc)
            for t in tasks:
                self._finish(t, None, exc)
        else:
            for t, part in zip(tasks, parts, strict=True):
                self._finish(t, part, None)
        with self._cond:
            self.stats.batches += 1
            self.stats.rows += total
            self.stats.max_rows = max(self.stats.max_rows, total)
        if self._on_batch is not None:
            self._on_batch(total)

    def _finish(self, task: _Task, result: Any, error: BaseException | None) -> None:
        req = task.request
        with self._cond:
            if error is not None and req.error is None:
                req.error = error
            req.results[task.index] = result
            req.remaining -= 1
            done = req.remaining == 0
            if done:
                self.stats.requests += 1
        if done:
            req.done.release()


def _split(outputs: Any, sizes: list[int], total: int) -> list[Any]:
    """Split ``fn``'s outputs (array, mapping or tuple of arrays) into per-task slices."""
    bounds = np.cumsum([0, *sizes])

    def check(arr: Any, name: str) -> np.ndarray:
        if not isinstance(arr, np.ndarray) or arr.ndim == 0 or arr.shape[0] != total:
            got = getattr(arr, "shape", type(arr).__name__)
            raise BatchingError(
                f"batched function returned {name} with shape {got}, expected {total} rows"
            )
        return arr

    if isinstance(outputs, Mapping):
        arrays = {k: check(v, f"output {k!r}") for k, v in outputs.items()}
        return [
            {k: v[bounds[i] : bounds[i + 1]] for k, v in arrays.items()} for i in range(len(sizes))
        ]
    if isinstance(outputs, tuple):
        arrays_t = [check(v, f"output {j}") for j, v in enumerate(outputs)]
        return [tuple(v[bounds[i] : bounds[i + 1]] for v in arrays_t) for i in range(len(sizes))]
    arr = check(outputs, "an array")
    return [arr[bounds[i] : bounds[i + 1]] for i in range(len(sizes))]
