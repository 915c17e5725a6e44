"""A remote backend whose concurrent small requests travel as one RPC: `MergingBackend`.

Each gateway worker serves many requests at once on its threads; sent one by one, every image
costs a gRPC (or REST) round trip and its per-call work on both sides, in Python here and in
the model server. `MergingBackend` puts a `serving.batching.Batcher` in front of the wrapped
backend, so requests arriving within ``batch_timeout_ms`` of each other go out as one Predict
of up to ``batch_max_size`` rows, and each caller gets its own rows back. TF Serving's own
batching still merges those calls across gateway workers.

- A request larger than ``batch_max_size`` rows goes out alone, as before (one RPC; TF
  Serving splits large batches itself), so one version answers all of its rows.
- A failure of a merged call reaches every caller whose rows were in it, as the same
  `serving.backends.errors.BackendError` the wrapped backend raised.
- Two merged calls can be in flight at once (``num_batch_threads``), so a slow call does not
  hold every other request of the worker behind it.
- A caller waits at most ``timeout``; its rows may still go out after it gave up (the merged
  call has its own deadline, the wrapped backend's).
- ``status`` and ``close`` are the wrapped backend's; ``close`` first lets queued calls finish
  (for up to ``timeout``).

Example::

    from serving.backends import connect
    from serving.backends.merging import MergingBackend
    backend = MergingBackend(connect("grpc://localhost:8500"), batch_max_size=64,
                             batch_timeout_ms=2.0)
"""

from __future__ import annotations

import numpy as np

from serving.backends.errors import BackendTimeout, BackendUnavailable
from serving.backends.types import Backend, ClosesOnExit, PredictResult, VersionStatus, check_batch
from serving.batching import Batcher, BatcherClosed, QueueFullError

__all__ = ["MergingBackend"]


class MergingBackend(ClosesOnExit):
    """``inner`` with concurrent ``predict`` calls of up to ``batch_max_size`` rows merged.

    ``timeout`` bounds a caller's wait (queueing and the merged call, whose own deadline and
    retries are the wrapped backend's); by default the wrapped backend's ``timeout`` plus the
    batching delay.
    """

    def __init__(
        self,
        inner: Backend,
        *,
        batch_max_size: int = 64,
        batch_timeout_ms: float = 2.0,
        timeout: float | None = None,
        num_batch_threads: int = 2,
    ) -> None:
        self.inner = inner
        inner_timeout = float(getattr(inner, "timeout", 5.0))
        self.timeout = timeout if timeout is not None else inner_timeout + batch_timeout_ms / 1000
        self.batcher = Batcher(
            self._run_batch,
            max_batch_size=batch_max_size,
            batch_timeout_s=batch_timeout_ms / 1000.0,
            num_batch_threads=num_batch_threads,
            name="merging-backend",
        )

    def __repr__(self) -> str:
        return f"MergingBackend({self.inner!r}, batch_max_size={self.batcher.max_batch_size})"

    def _run_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self.inner.predict(batch)
        # The version travels with the rows: every caller learns which version answered it.
        versions = np.full(len(result.probabilities), result.model_version, dtype=np.int64)
        return result.probabilities, versions

    def predict(self, batch: np.ndarray) -> PredictResult:
        """Queue ``batch`` for the next merged call (or send it alone when it is large)."""
        arr = check_batch(batch)
        if len(arr) > self.batcher.max_batch_size:
            return self.inner.predict(arr)
        try:
            probabilities, versions = self.batcher.submit(arr, timeout=self.timeout)
        except TimeoutError:
            raise BackendTimeout(f"backend did not answer within {self.timeout:g}s") from None
        except (QueueFullError, BatcherClosed) as exc:
            raise BackendUnavailable(str(exc)) from exc
        return PredictResult(probabilities=probabilities, model_version=int(versions[0]))

    def status(self) -> list[VersionStatus]:
        """The wrapped backend's version statuses."""
        return self.inner.status()

    def close(self) -> None:
        """Run what is queued (waiting up to ``timeout``), then close the wrapped backend."""
        self.batcher.close(timeout=self.timeout)
        self.inner.close()
