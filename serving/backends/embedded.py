"""Where the gateway's predictions come from: TF Serving over gRPC or REST, or in-process.

All backends implement `Backend`: ``predict(batch) -> PredictResult`` (float32 ``[N,28,28,1]``
in, probabilities ``[N,10]`` and the version that answered out), ``status()`` (the model's
versions and their TF Serving state names) and ``close()``. Failures are raised as
``serving.tfserving.errors.BackendError`` subclasses, which `serving.gateway.errors` maps to
HTTP codes. `make_backend` picks the implementation from ``GATEWAY_BACKEND``:

- ``grpc://host:8500`` → `GrpcBackend` (``serving.tfserving.GrpcClient``);
- ``http://host:8501`` → `RestBackend` (``serving.tfserving.RestClient``);
- ``embedded:<base path>`` → `EmbeddedBackend` (``serving.savedmodel.ModelManager`` plus
  ``serving.batching.Batcher``; the only one that imports TensorFlow).

Build backends after gunicorn forks its workers (the app factory does, as the app is not
preloaded): gRPC channels and TensorFlow runtimes must not cross a fork.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Protocol, runtime_checkable

import numpy as np

# None of these import TensorFlow (savedmodel loads it lazily, on the first model load).
from serving.batching import Batcher, BatcherClosed, QueueFullError
from serving.gateway.config import GatewayConfig
from serving.savedmodel import (
    InvalidInput,
    ModelManager,
    ServableNotFound,
    VersionPolicy,
    list_versions,
)
from serving.tfserving.base import PredictResult
from serving.tfserving.errors import (
    BackendInvalidRequest,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
)

log = logging.getLogger(__name__)


@runtime_checkable
class Backend(Protocol):
    """The interface the gateway's views use."""

    def predict(self, batch: np.ndarray) -> Any:
        """Probabilities for ``batch``: a ``PredictResult(probabilities, model_version)``."""

    def status(self) -> list[Any]:
        """Versions of the model as ``VersionStatus(version, state, error)``, newest first."""

    def close(self) -> None:
        """Release connections, threads and models."""


class GrpcBackend:
    """TF Serving's gRPC ``PredictionService``/``ModelService`` through ``GrpcClient``."""

    kind = "grpc"

    def __init__(self, config: GatewayConfig):
        self.client = self._client_class()(
            config.backend_target,
            config.model_name,
            version=config.model_version,
            label=config.model_label,
            timeout=config.timeout_seconds,
            retries=config.retries,
        )

    @staticmethod
    def _client_class() -> type:
        from serving.tfserving import GrpcClient

        return GrpcClient

    def predict(self, batch: np.ndarray) -> Any:
        """One ``Predict`` call for the whole batch."""
        return self.client.predict(batch)

    def status(self) -> list[Any]:
        """``GetModelStatus`` of the configured model."""
        return self.client.model_status()

    def close(self) -> None:
        """Close the channel."""
        self.client.close()


class RestBackend(GrpcBackend):
    """TF Serving's REST API (``/v1/models/<name>:predict``) through ``RestClient``."""

    kind = "http"

    @staticmethod
    def _client_class() -> type:
        from serving.tfserving import RestClient

        return RestClient


class EmbeddedBackend:
    """The SavedModel in this process: newest (or pinned) version, reloaded when a newer one
    appears, with concurrent requests merged into one model call by a micro-batcher."""

    kind = "embedded"

    def __init__(self, config: GatewayConfig):
        self.config = config
        _configure_tensorflow_threads(config)
        policy = (
            VersionPolicy.specific([config.model_version])
            if config.model_version is not None
            else VersionPolicy.latest(1)
        )
        self.manager = ModelManager(
            config.model_name,
            config.backend_target,
            policy,
            poll_interval_s=config.model_poll_seconds,
        )
        self.batcher = Batcher(
            self._run_batch,
            max_batch_size=config.batch_max_size,
            batch_timeout_s=config.batch_timeout_ms / 1000.0,
            name=f"embedded-{config.model_name}",
        )
        self._seen_available = False
        self._created = time.monotonic()
        if not list_versions(config.backend_target):
            log.warning(
                "no SavedModel version under %s yet (absolute: %s); not ready until one appears",
                config.backend_target,
                os.path.abspath(config.backend_target),
            )
        self.manager.start()

    def _run_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        version, outputs = self.manager.predict(
            {"images": batch}, version=self.config.model_version
        )
        probs = np.asarray(outputs["probabilities"], dtype=np.float32)
        # The version travels with the rows, so each caller learns which version answered it.
        return probs, np.full(len(probs), version, dtype=np.int64)

    def predict(self, batch: np.ndarray) -> Any:
        """Queue ``batch`` for the next merged model call and wait (up to the timeout)."""
        timeout = self.config.timeout_seconds
        if not self._seen_available:
            timeout = self._wait_first_load(timeout)
        try:
            probs, versions = self.batcher.submit(batch, timeout=timeout)
            if len(batch) > self.batcher.max_batch_size and versions.min() != versions.max():
                # The request was split into several model calls and a version swap fell
                # between them: run it again, so one version answers every row.
                probs, versions = self.batcher.submit(batch, timeout=timeout)
        except TimeoutError:
            raise BackendTimeout(
                f"model did not answer within {self.config.timeout_seconds:g}s"
            ) from None
        except ServableNotFound as exc:
            raise ModelNotFound(f"model {self.config.model_name} is not loaded yet: {exc}") from exc
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
            if "LOADING" not in states and time.monotonic() - self._created > 1.0:
                break  # nothing on its way: answer now instead of at the deadline
            time.sleep(0.05)
        raise ModelNotFound(
            f"model {self.config.model_name} has no AVAILABLE version under "
            f"{self.config.backend_target} (states: {sorted(states) or 'none'})"
        )

    def status(self) -> list[Any]:
        """The manager's per-version states (newest first); empty before the first poll."""
        try:
            return self.manager.status(version=self.config.model_version)
        except ServableNotFound:
            return []

    def close(self) -> None:
        """Stop the batcher and the version poller; unload the model."""
        self.batcher.close(timeout=5.0)
        self.manager.close()


def _configure_tensorflow_threads(config: GatewayConfig) -> None:
    """Size TensorFlow's thread pools (possible only before TF runs its first op)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(config.tf_intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(config.tf_inter_op_threads)
    except RuntimeError as exc:  # TF already initialised in this process (tests, notebooks)
        log.info("TensorFlow thread pools left as they are: %s", exc)


def make_backend(config: GatewayConfig) -> Backend:
    """Build the backend ``config.backend`` names."""
    kind = config.backend_kind
    log.info("backend: %s (%s)", kind, config.backend_target)
    if kind == "grpc":
        return GrpcBackend(config)
    if kind == "http":
        return RestBackend(config)
    return EmbeddedBackend(config)
