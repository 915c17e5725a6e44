"""Gateway test helper: a scriptable in-process backend.

Usage::

    from tests.support.gateway import FakeBackend

    backend = FakeBackend()                       # implements serving.gateway.backends.Backend
    app = create_app({"max_batch": 4}, backend=backend)

Real gateway processes are started with ``loadtest.servers.start_gateway``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from serving.labels import NUM_CLASSES
from serving.tfserving import PredictResult, VersionStatus


class FakeBackend:
    """A backend whose answers are a deterministic function of the input (or a scripted error).

    Probabilities: a softmax whose winner and spread depend on the mean pixel value, so
    different inputs give different, reproducible answers; ``expected(batch)`` gives what ``predict``
    returns. Set ``error`` to an exception to raise it from ``predict`` and ``status``;
    ``states`` is what ``status`` reports. Calls are recorded in ``calls`` (batch shapes).
    """

    def __init__(self, version: int = 3, states: list[VersionStatus] | None = None):
        self.version = version
        self.states = states if states is not None else [VersionStatus(version, "AVAILABLE", "")]
        self.error: BaseException | None = None
        self.calls: list[tuple[int, ...]] = []
        self.status_calls = 0
        self.closed = False
        self.hook: Callable[[np.ndarray], None] | None = None
        self._lock = threading.Lock()

    @staticmethod
    def expected(batch: np.ndarray) -> np.ndarray:
        """The probabilities `predict` returns for ``batch`` (float32 ``[N, 10]``)."""
        means = batch.reshape(len(batch), -1).mean(axis=1, dtype=np.float64)
        # class (int(mean * 100) % 10) gets the largest logit
        winner = (means * 100).astype(np.int64) % NUM_CLASSES
        # the other logits scale with the mean too, so different inputs never tie exactly
        logits = np.linspace(0.0, 1.0, NUM_CLASSES)[None, :] * (1.0 + means[:, None])
        logits[np.arange(len(batch)), winner] = 3.0
        e = np.exp(logits)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict(self, batch: np.ndarray) -> PredictResult:
        """Record the call and answer (or raise ``error``)."""
        with self._lock:
            self.calls.append(tuple(batch.shape))
        if self.hook is not None:
            self.hook(batch)
        if self.error is not None:
            raise self.error
        assert batch.dtype == np.float32 and batch.shape[1:] == (28, 28, 1)
        return PredictResult(self.expected(batch), self.version)

    def status(self) -> list[VersionStatus]:
        """``states`` (or raise ``error``)."""
        with self._lock:
            self.status_calls += 1
        if self.error is not None:
            raise self.error
        return list(self.states)

    def close(self) -> None:
        """Mark closed."""
        self.closed = True
