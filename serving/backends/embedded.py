"""The SavedModel in this process as a `Backend`: `ModelManager` plus a micro-batcher.

The newest (or pinned) version under the base path is served and replaced when a newer one
appears; concurrent ``predict`` calls are merged into one model call by `Batcher`. This is the
only backend that runs TensorFlow.

Example::

    from serving.backends.embedded import EmbeddedBackend
    backend = EmbeddedBackend("models/fashion_mnist")
    backend.predict(batch).probabilities
    backend.close()

Build it after a server forks its workers: TensorFlow runtimes must not cross a fork.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import tensorflow as tf

from serving.backends.errors import (
    BackendInvalidRequest,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
)
from serving.backends.types import ClosesOnExit, PredictResult, VersionStatus
from serving.batching import Batcher, BatcherClosed, QueueFullError
from serving.contract import INPUT_KEY, MODEL_NAME, OUTPUT_PROBABILITIES, list_versions
from serving.savedmodel import (
    InvalidInput,
    ModelManager,
    ServableNotFound,
    VersionPolicy,
    make_loader,
)

__all__ = ["EmbeddedBackend"]

log = logging.getLogger(__name__)


class EmbeddedBackend(ClosesOnExit):
    """The versions of one model under ``base_path``, loaded in this process.

    ``version`` pins one version (else the newest is served); ``timeout`` bounds each
    ``predict`` (queueing included). ``batch_max_size`` and ``batch_timeout_ms`` shape the
    micro-batches, ``model_poll_seconds`` is how often the base path is checked for new
    versions, ``tf_intra_op_threads``/``tf_inter_op_threads`` size TensorFlow's thread pools
    (0 = TensorFlow's default). With ``prefer_tflite_model`` a version's ``model.tflite`` runs
    its ``serving_default`` (see `serving.litemodel`); without the file, the SavedModel does.
    """

    def __init__(
        self,
        base_path: str | os.PathLike[str],
        model_name: str = MODEL_NAME,
        *,
        version: int | None = None,
        timeout: float = 5.0,
        batch_max_size: int = 64,
        batch_timeout_ms: float = 2.0,
        model_poll_seconds: float = 2.0,
        tf_intra_op_threads: int = 1,
        tf_inter_op_threads: int = 1,
        prefer_tflite_model: bool = True,
    ) -> None:
        self.base_path = os.fspath(base_path)
        self.model_name = model_name
        self.version = version
        self.timeout = timeout
        _configure_tensorflow_threads(tf_intra_op_threads, tf_inter_op_threads)
        policy = (
            VersionPolicy.specific([version]) if version is not None else VersionPolicy.latest(1)
        )
        self.manager = ModelManager(
            model_name,
            self.base_path,
            policy,
            poll_interval_s=model_poll_seconds,
            loader=make_loader(prefer_tflite=prefer_tflite_model),
        )
        self.batcher = Batcher(
            self._run_batch,
            max_batch_size=batch_max_size,
            batch_timeout_s=batch_timeout_ms / 1000.0,
            name=f"embedded-{model_name}",
        )
        self._seen_available = False
        self._created = time.monotonic()
        if not list_versions(self.base_path):
            log.warning(
                "no SavedModel version under %s yet (absolute: %s); not ready until one appears",
                self.base_path,
                os.path.abspath(self.base_path),
            )
        self.manager.start()

    def __repr__(self) -> str:
        pin = f" version={self.version}" if self.version is not None else ""
        return f"EmbeddedBackend({self.base_path!r}, {self.model_name!r}{pin})"

    def _run_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        version, outputs = self.manager.predict({INPUT_KEY: batch}, version=self.version)
        probs = np.asarray(outputs[OUTPUT_PROBABILITIES], dtype=np.float32)
        # The version travels with the rows, so each caller learns which version answered it.
        return probs, np.full(len(probs), version, dtype=np.int64)

    def predict(self, batch: np.ndarray) -> PredictResult:
        """Queue ``batch`` for the next merged model call and wait (up to the timeout).

        One deadline covers the whole call: waiting for the first load, and the second run
        after a version swap.
        """
        deadline = time.monotonic() + self.timeout
        timeout = self.timeout
        if not self._seen_available:
            timeout = self._wait_first_load(timeout)
        try:
            probs, versions = self.batcher.submit(batch, timeout=timeout)
            if len(batch) > self.batcher.max_batch_size and versions.min() != versions.max():
                # The request was split into several model calls and a version swap fell
                # between them: run it again, so one version answers every row -- within
                # what is left of the same deadline.
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                probs, versions = self.batcher.submit(batch, timeout=left)
        except TimeoutError:
            raise BackendTimeout(f"model did not answer within {self.timeout:g}s") from None
        except ServableNotFound as exc:
            raise ModelNotFound(f"model {self.model_name} is not loaded yet: {exc}") from exc
        except InvalidInput as exc:
            raise BackendInvalidRequest(str(exc)) from exc
        except (QueueFullError, BatcherClosed) as exc:
            raise BackendUnavailable(str(exc)) from exc
        return PredictResult(probabilities=probs, model_version=int(versions[0]))

    def _wait_first_load(self, timeout: float) -> float:
        """Before the first version is AVAILABLE: wait for it (within ``timeout``) while one is
        loading; return the time left. Each gunicorn worker loads its own copy, so a request
        must not fail just because it reached the worker that is still loading."""
        started = time.monotonic()
        deadline = started + timeout
        states: set[str] = set()
        while time.monotonic() < deadline:
            states = {s.state for s in self.status()}
            if "AVAILABLE" in states:
                self._seen_available = True
                return max(0.001, deadline - time.monotonic())
            settling = self.manager.settling_versions()
            if "LOADING" not in states and not settling and time.monotonic() - self._created > 1.0:
                break  # nothing on its way: answer now instead of at the deadline
            time.sleep(0.05)
        raise ModelNotFound(
            f"model {self.model_name} has no AVAILABLE version under "
            f"{self.base_path} (states: {sorted(states) or 'none'})"
        )

    def status(self) -> list[VersionStatus]:
        """The manager's per-version states, newest first; empty before the first poll."""
        try:
            return self.manager.status(version=self.version)
        except ServableNotFound:
            return []

    def close(self) -> None:
        """Stop the batcher and the version poller; unload the model."""
        self.batcher.close(timeout=5.0)
        self.manager.close()


def _configure_tensorflow_threads(intra_op: int, inter_op: int) -> None:
    """Size TensorFlow's thread pools (possible only before TF runs its first op)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError as exc:  # TF already initialised in this process (tests, notebooks)
        log.info("TensorFlow thread pools left as they are: %s", exc)
