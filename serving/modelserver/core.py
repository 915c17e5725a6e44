"""The model server's core: the served models, their versions, batching and request handling.

`ServerCore` plays the part of TF Serving's ``ServerCore``: one `ModelManager` per model of the
``ModelServerConfig``; `apply_config` reconciles a new config (models added, removed, policy or
labels changed) as ``HandleReloadConfigRequest`` and ``--model_config_file_poll_wait_seconds``
do. Both front ends (gRPC and REST) call `predict`, `status` and `metadata` and map the
`ModelError` subclasses to their status codes in one place (`ModelError.code`).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tensorflow_serving.apis import get_model_status_pb2

from serving.backends.types import VersionStatus
from serving.batching import Batcher, BatcherClosed, QueueFullError
from serving.contract import SIGNATURE_NAME
from serving.modelserver.config import BatchingSettings, policy_of, validate_model_server_config
from serving.modelserver.metrics import ServerMetrics
from serving.savedmodel import (
    InvalidInput,
    LoadedModel,
    ModelError,
    ModelManager,
    ServableNotFound,
    make_loader,
)

log = logging.getLogger(__name__)


# TF Serving's shared batch scheduler answers a full queue with UNAVAILABLE and this message
QUEUE_FULL_MESSAGE = "The batch scheduling queue to which this task was submitted is full"


class Unavailable(ModelError):
    """The batching queue is full, the server is shutting down, or the version went away
    mid-request (HTTP 503)."""

    code = "UNAVAILABLE"


class DeadlineExceeded(ModelError):
    """The request waited longer than ``--rest_api_timeout_in_ms`` (HTTP 504)."""

    code = "DEADLINE_EXCEEDED"


# gRPC code name -> HTTP status, as TF Serving's http_server.cc maps them
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


def status_proto(statuses: list[VersionStatus]) -> Any:
    """A ``GetModelStatusResponse`` as TF Serving fills it (``status`` always present)."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for s in statuses:
        mvs = response.model_version_status.add()
        mvs.version = s.version
        mvs.state = get_model_status_pb2.ModelVersionStatus.State.Value(s.state)
        mvs.status.SetInParent()
        if s.error:
            mvs.status.error_code = 2  # UNKNOWN
            mvs.status.error_message = s.error
    return response


@dataclass(frozen=True)
class ServedPrediction:
    """What a predict call answers: the version and signature used, and all its outputs."""

    version: int
    signature_name: str
    outputs: dict[str, np.ndarray]


class ServerCore:
    """All served models; thread-safe."""

    def __init__(
        self,
        config: Any,
        *,
        poll_interval_s: float = 1.0,
        batching: BatchingSettings | None = None,
        metrics: ServerMetrics | None = None,
        enable_warmup: bool = True,
        prefer_tflite: bool = False,
    ):
        validate_model_server_config(config)
        self.poll_interval_s = poll_interval_s
        self.batching = batching
        self.metrics = metrics
        self.enable_warmup = enable_warmup
        self._load_version = make_loader(prefer_tflite=prefer_tflite, warmup=enable_warmup)
        self._lock = threading.RLock()
        self._managers: dict[str, ModelManager] = {}
        self._base_paths: dict[str, str] = {}
        self._batchers: dict[tuple[str, int, str], Batcher] = {}
        self._config = config
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Create the managers of the config and start polling their base paths."""
        with self._lock:
            self._started = True
            self.apply_config(self._config)

    def close(self) -> None:
        """Stop polling, drain batchers, unload everything."""
        with self._lock:
            managers = list(self._managers.values())
            self._managers.clear()
            batchers = list(self._batchers.values())
            self._batchers.clear()
        for b in batchers:
            b.close()
        for m in managers:
            m.close()

    def _loader(self, name: str, path: Path, version: int) -> LoadedModel:
        try:
            model = self._load_version(path, version)
        except Exception:  # counted here, reported by the ModelManager (state END + error)
            if self.metrics is not None:
                self.metrics.model_loads.labels(name, "failure").inc()
            raise
        if self.metrics is not None:
            self.metrics.model_loads.labels(name, "success").inc()
        return model

    def apply_config(self, config: Any) -> None:
        """Serve exactly the models of ``config`` (a ``ModelServerConfig``)."""
        validate_model_server_config(config)
        wanted = {m.name: m for m in config.model_config_list.config}
        with self._lock:
            self._config = config
            if not self._started:
                return
            for name in list(self._managers):
                if name not in wanted or self._base_paths[name] != wanted[name].base_path:
                    log.info("model %s: removed from the config (or base path changed)", name)
                    self._managers.pop(name).close()
                    self._base_paths.pop(name)
            for name, mc in wanted.items():
                labels = dict(mc.version_labels)
                if name in self._managers:
                    self._managers[name].update(policy=policy_of(mc), labels=labels)
                    continue
                manager = ModelManager(
                    name,
                    mc.base_path,
                    policy_of(mc),
                    poll_interval_s=self.poll_interval_s,
                    labels=labels,
                    loader=functools.partial(self._loader, name),
                    on_change=self._on_versions_changed,
                )
                self._managers[name] = manager
                self._base_paths[name] = mc.base_path
                if self.metrics is not None:  # both series from the start, at 0
                    for outcome in ("success", "failure"):
                        self.metrics.model_loads.labels(name, outcome)
                try:  # like TF Serving, load what is there before answering requests
                    manager.poll_until_settled()
                except OSError as exc:
                    log.warning("model %s: cannot read %s: %s", name, mc.base_path, exc)
                manager.start()

    def _on_versions_changed(self, manager: ModelManager) -> None:
        available = set(manager.available_versions())
        with self._lock:
            stale = [k for k in self._batchers if k[0] == manager.name and k[1] not in available]
            batchers = [self._batchers.pop(k) for k in stale]
        for b in batchers:
            b.close()
        if self.metrics is not None:
            known = [s.version for s in manager.status()]
            self.metrics.set_versions(manager.name, sorted(available), known)

    def model_names(self) -> list[str]:
        """Names of the served models."""
        with self._lock:
            return sorted(self._managers)

    # -- requests ----------------------------------------------------------------------------
    def status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        """Version states of a model (GetModelStatus)."""
        with self._lock:
            manager = self._managers.get(name)
        if manager is None:
            raise ServableNotFound(f"Could not find any versions of model {name}")
        statuses = manager.status(version, label)
        if not statuses:
            raise ServableNotFound(f"Could not find any versions of model {name}")
        return statuses

    def metadata(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """(version, SignatureDef protos) of a model version (GetModelMetadata)."""
        manager = self.manager_for_request(name, version, label)
        with manager.acquire(version, label) as model:
            return model.version, model.signature_defs

    def manager_for_request(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> ModelManager:
        """The manager of a model named by a request; `ServableNotFound` (worded as TF
        Serving words it for the version or label asked for) when the model is not served."""
        with self._lock:
            manager = self._managers.get(name)
        if manager is None:
            if label:
                raise ServableNotFound(f"Servable not found for request: Specific({name}, {label})")
            if version is not None:
                raise ServableNotFound(
                    f"Servable not found for request: Specific({name}, {version})"
                )
            raise ServableNotFound(f"Servable not found for request: Latest({name})")
        return manager

    def predict(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: int | None = None,
        label: str | None = None,
        signature_name: str = "",
        output_filter: list[str] | None = None,
        timeout_s: float | None = None,
    ) -> ServedPrediction:
        """Run a prediction; batched across concurrent callers when batching is on."""
        manager = self.manager_for_request(name, version, label)
        sig_name = signature_name or SIGNATURE_NAME
        with manager.acquire(version, label) as model:
            sig = model.signature(sig_name)
            if output_filter:
                unknown = [o for o in output_filter if o not in sig.outputs]
                if unknown:
                    raise InvalidInput(
                        f"output tensor alias not found in signature: {unknown[0]} "
                        f"Outputs expected to be in the set {{{','.join(sig.outputs)}}}."
                    )
            checked = model.check_inputs(inputs, sig_name)
            rows = {a.shape[0] if a.ndim else -1 for a in checked.values()}
            if self.batching is not None and len(rows) == 1 and min(rows) > 0:
                outputs = self._batched(model, name, sig_name, checked, timeout_s)
            else:
                outputs = model.predict(checked, sig_name)
        if output_filter:
            outputs = {k: v for k, v in outputs.items() if k in output_filter}
        return ServedPrediction(model.version, sig_name, outputs)

    def _batched(
        self,
        model: LoadedModel,
        name: str,
        sig_name: str,
        inputs: dict[str, np.ndarray],
        timeout_s: float | None,
    ) -> dict[str, np.ndarray]:
        key = (name, model.version, sig_name)
        with self._lock:
            batcher = self._batchers.get(key)
            if batcher is None:
                settings = self.batching
                assert settings is not None
                metrics = self.metrics
                batcher = Batcher(
                    lambda batch: model.predict(batch, sig_name),
                    max_batch_size=settings.max_batch_size,
                    batch_timeout_s=settings.batch_timeout_s,
                    max_enqueued_batches=settings.max_enqueued_batches,
                    num_batch_threads=settings.num_batch_threads,
                    name=f"batch-{name}-{model.version}",
                    on_batch=(
                        (lambda rows: metrics.batch_size.labels(name).observe(rows))
                        if metrics is not None
                        else None
                    ),
                )
                self._batchers[key] = batcher
        try:
            return batcher.submit(inputs, timeout=timeout_s)
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"Deadline Exceeded: no result within {timeout_s:g}s (batching queue)"
            ) from exc
        except QueueFullError as exc:
            raise Unavailable(QUEUE_FULL_MESSAGE) from exc
        except BatcherClosed as exc:
            raise Unavailable(f"model {name} version {model.version} is being unloaded") from exc
