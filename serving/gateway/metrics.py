"""Prometheus metrics of the gateway, correct under several gunicorn workers.

One `GatewayMetrics` per app (never module-level metric objects, so several apps can live in
one test process). When ``PROMETHEUS_MULTIPROC_DIR`` is set (``python -m serving.gateway`` sets
it up) prometheus-client's multiprocess mode is used: each worker writes its values to files in
that directory and ``/metrics`` aggregates all of them, so every scrape sees the whole server,
whichever worker answers it. gunicorn's ``child_exit`` hook (gunicorn_conf.py) tells
prometheus-client when a worker is gone.

Metric names (all prefixed ``gateway_``): ``requests_total{endpoint,method,status}``,
``request_duration_seconds{endpoint,method}``, ``stage_duration_seconds{stage}`` (``preprocess``,
``backend``, ``postprocess``), ``images_per_request``, ``predictions_total{label}``,
``in_flight_requests``, ``backend_errors_total{reason}``, ``model_info{name,version}``,
``model_version_errors{version}`` (1 while the backend reports that version failed to load:
a corrupt or incomplete version folder; set by each status check, ``/readyz`` and
``/v1/models``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from serving.backends import VersionStatus

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
IMAGES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
STAGES = ("preprocess", "backend", "postprocess")


def multiprocess_dir() -> str | None:
    """The multiprocess directory when multiprocess mode is on, else None."""
    return os.environ.get(MULTIPROC_ENV) or None


class GatewayMetrics:
    """The gateway's metric objects plus `render()` for ``/metrics``."""

    def __init__(self, labels: tuple[str, ...]):
        self.multiprocess = multiprocess_dir() is not None
        if self.multiprocess and values.ValueClass is values.MutexValue:
            # prometheus-client picks its storage when first imported; too late to switch now.
            raise RuntimeError(
                f"{MULTIPROC_ENV} was set after prometheus_client was imported; set it before "
                "the workers import the app (python -m serving.gateway does)"
            )
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "gateway_requests",
            "HTTP requests answered, by endpoint, method and status.",
            ["endpoint", "method", "status"],
            registry=reg,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Time from request received to response ready, by endpoint and method.",
            ["endpoint", "method"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.stage = Histogram(
            "gateway_stage_duration_seconds",
            "Time spent in each stage of a prediction (preprocess, backend, postprocess).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=reg,
        )
        self.images = Histogram(
            "gateway_images_per_request",
            "Images in one prediction request.",
            buckets=IMAGES_BUCKETS,
            registry=reg,
        )
        self.predictions = Counter(
            "gateway_predictions",
            "Predictions returned, by predicted label.",
            ["label"],
            registry=reg,
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests",
            "Requests being handled right now.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.backend_errors = Counter(
            "gateway_backend_errors",
            "Failed backend calls, by reason (unavailable, timeout, model_not_found, ...).",
            ["reason"],
            registry=reg,
        )
        self.model_info = Gauge(
            "gateway_model_info",
            "1 for the model name and version that answered the latest prediction.",
            ["name", "version"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.version_errors = Gauge(
            "gateway_model_version_errors",
            "1 for each model version the backend reports as failed to load, else 0.",
            ["version"],
            registry=reg,
            multiprocess_mode="livemostrecent",
        )
        self._failed_versions: set[str] = set()
        # Pre-create the per-label and per-stage series so they show up (as 0) from the start.
        self._label_children = [self.predictions.labels(label=name) for name in labels]
        self._stage_children = {s: self.stage.labels(stage=s) for s in STAGES}
        self._model_lock = threading.Lock()
        self._model_current: tuple[str, str] | None = None

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Record the duration of one prediction stage."""
        self._stage_children[stage].observe(seconds)

    def count_predictions(self, class_ids: list[int]) -> None:
        """Count one prediction per class id."""
        children = self._label_children
        for cid in class_ids:
            children[cid].inc()

    def set_model(self, name: str, version: int) -> None:
        """Mark ``name``/``version`` as the model that answered (the previous one goes to 0)."""
        key = (name, str(version))
        if key == self._model_current:
            return
        with self._model_lock:
            if self._model_current is not None and self._model_current != key:
                self.model_info.labels(*self._model_current).set(0)
            self.model_info.labels(*key).set(1)
            self._model_current = key

    def observe_versions(self, statuses: Iterable[VersionStatus]) -> None:
        """Set ``model_version_errors`` from a backend status answer."""
        failed = {str(s.version) for s in statuses if s.error}
        with self._model_lock:
            for version in self._failed_versions - failed:
                self.version_errors.labels(version).set(0)
            for version in failed:
                self.version_errors.labels(version).set(1)
            self._failed_versions = failed

    def render(self) -> tuple[bytes, str]:
        """Exposition text of every worker's metrics (or this process's) and its content type."""
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
