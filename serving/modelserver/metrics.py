"""Prometheus metrics of the model server, under TF Serving's metric names.

TF Serving exports its monitoring counters with the ``/`` of their names replaced by ``:``:
``:tensorflow:serving:request_count{model_name, status}`` (a counter written without the
``_total`` suffix prometheus_client would add, hence the small custom collector) and
``:tensorflow:serving:request_latency{model_name, API, entrypoint}`` (a histogram in
microseconds). ``:convserve:modelserver:batch_size{model_name}`` is this server's own
histogram of the batch sizes the model ran with ``--enable_batching`` (its ``_count`` is the
number of model calls, its ``_sum`` the number of rows),
``:convserve:modelserver:model_loads_total{model_name, status}`` counts version loads that
succeeded or failed (a corrupt or incomplete version folder), and
``:convserve:modelserver:model_version_available`` a gauge per loaded version. Everything
lives in one private ``CollectorRegistry`` (never the global one).
"""

from __future__ import annotations

import threading

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# TF Serving's latency sampler uses exponential buckets (10 us x 1.8^i); these cover 10 us-10 s
LATENCY_BUCKETS_US = tuple(round(10 * 1.8**i) for i in range(24))
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _RequestCount:
    """``:tensorflow:serving:request_count``, written exactly as TF Serving writes it.

    prometheus_client writes counters as ``<name>_total``; TF Serving does not, and dashboards
    written for TF Serving query the plain name, so this one counter is rendered by hand.
    """

    name = ":tensorflow:serving:request_count"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def inc(self, model_name: str, status: str) -> None:
        with self._lock:
            key = (model_name, status)
            self._counts[key] = self._counts.get(key, 0) + 1

    def render(self) -> bytes:
        with self._lock:
            items = sorted(self._counts.items())
        lines = [
            f"# HELP {self.name} The total number of requests.",
            f"# TYPE {self.name} counter",
        ]
        lines += [
            f'{self.name}{{model_name="{_escape(m)}",status="{_escape(st)}"}} {v}'
            for (m, st), v in items
        ]
        return ("\n".join(lines) + "\n").encode()


class ServerMetrics:
    """The model server's metrics; `render()` gives the Prometheus text page."""

    def __init__(self) -> None:
        # TF Serving exports no *_created series; this switch is process-wide, and the model
        # server is the only user of this class in its process
        disable_created_metrics()
        self.registry = CollectorRegistry()
        self.request_count = _RequestCount()
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"],
            buckets=LATENCY_BUCKETS_US,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            ":convserve:modelserver:batch_size",
            "Rows per model call when --enable_batching merges concurrent requests.",
            ["model_name"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.model_loads = Counter(
            ":convserve:modelserver:model_loads",
            "Model version loads, by model and outcome (success, failure).",
            ["model_name", "status"],
            registry=self.registry,
        )
        self.version_available = Gauge(
            ":convserve:modelserver:model_version_available",
            "1 for each model version that is AVAILABLE.",
            ["model_name", "version"],
            registry=self.registry,
        )

    def record_request(
        self, model_name: str, api: str, entrypoint: str, status: str, seconds: float
    ) -> None:
        """Count one request and its latency (``status`` is a gRPC code name, e.g. ``OK``)."""
        self.request_count.inc(model_name, status)
        self.request_latency.labels(model_name, api, entrypoint).observe(seconds * 1e6)

    def set_versions(self, model_name: str, available: list[int], known: list[int]) -> None:
        """Update the availability gauge of a model's versions."""
        for v in known:
            self.version_available.labels(model_name, str(v)).set(1 if v in available else 0)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return self.request_count.render() + generate_latest(self.registry)
