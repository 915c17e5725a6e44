"""The gunicorn workers of a gateway started with ``loadtest.servers.start_gateway``.

- `worker_pids(server)`: the live worker processes (children of the gunicorn master, from /proc).
- `predictions_by_worker(metrics_dir)`: how many ``POST /v1/predict`` 200 answers each worker
  counted, read from that worker's own prometheus-client multiprocess file
  (``counter_<pid>.db``); the proof that a worker served traffic, which a scrape (summed over
  workers) cannot give.
"""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client.multiprocess import MultiProcessCollector

from loadtest.procstats import children, stat_fields
from loadtest.servers import Server

__all__ = [
    "PREDICT_OK_LABELS",
    "predictions_by_worker",
    "wait_for_workers",
    "worker_pids",
]

#: Labels of ``gateway_requests_total`` for a successful ``POST /v1/predict``.
PREDICT_OK_LABELS = {"endpoint": "/v1/predict", "method": "POST", "status": "200"}


def worker_pids(server: Server) -> set[int]:
    """Pids of the live child processes of ``server``'s process (the gunicorn workers)."""
    pids = set()
    for pid in children(server.proc.pid):
        fields = stat_fields(pid)
        if fields is not None and fields[0] != "Z":  # a zombie: a worker that died, not reaped
            pids.add(pid)
    return pids


def wait_for_workers(server: Server, n: int, timeout: float = 30.0) -> set[int]:
    """Block until ``server`` has exactly ``n`` live workers; return their pids."""
    deadline = time.monotonic() + timeout
    while len(pids := worker_pids(server)) != n:
        assert time.monotonic() < deadline, f"{server.name}: workers {sorted(pids)}, want {n}"
        time.sleep(0.1)
    return pids


def predictions_by_worker(metrics_dir: Path) -> dict[int, float]:
    """pid → ``POST /v1/predict`` 200 answers counted by that worker (dead workers included)."""
    counts: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        counts[pid] = sum(
            sample.value
            for metric in MultiProcessCollector.merge([str(path)], accumulate=False)
            for sample in metric.samples
            if sample.name == "gateway_requests_total" and sample.labels == PREDICT_OK_LABELS
        )
    return counts
