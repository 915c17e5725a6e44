"""gunicorn settings and hooks for the gateway, read from the ``GATEWAY_*`` environment.

Used by ``python -m serving.gateway`` and usable directly::

    GATEWAY_BACKEND=grpc://localhost:8500 gunicorn -c python:serving.gateway.gunicorn_conf

Choices that are not obvious:

- ``gevent`` workers by default (``GATEWAY_WORKER_CLASS``): the views block on the backend
  (gRPC/REST call or the embedded micro-batcher), so each worker serves many requests at once
  to keep its core busy and give the batcher concurrent requests to merge (into one model call,
  or into one RPC to a remote backend). `serving.gateway.gevent_worker.BufferingGeventWorker`
  does that with greenlets on one OS thread (no GIL hand-offs between request threads, the
  faster choice: docs/BENCHMARKS.md); ``gthread`` picks
  `serving.gateway.slow_clients.RequestBufferingWorker`, a pool of ``GATEWAY_THREADS``
  threads. Both read each request in full before the app runs (slow clients hold neither a
  thread nor the app) and close their listening sockets as soon as a graceful stop begins.
- ``preload_app = False``: the app (and so the backend) is built in each worker *after* the
  fork. gRPC channels and the TensorFlow runtime do not survive a fork, and prometheus-client
  must see ``PROMETHEUS_MULTIPROC_DIR`` before its first import.
- Metrics: ``on_starting`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh temporary directory
  (or empties the one given) before any worker starts; ``child_exit`` marks dead workers;
  ``on_exit`` removes the directory it created.
- ``worker_exit`` closes the worker's backend after gunicorn has drained its requests
  (``graceful_timeout``) on SIGTERM.

This module must not import Flask or prometheus-client at import time (it runs in the master).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from serving.gateway.config import WORKER_CLASSES, GatewayConfig

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_OWNED_ENV = "CONVSERVE_GATEWAY_OWNS_METRICS_DIR"

_cfg = GatewayConfig.from_env()

wsgi_app = "serving.gateway.app:create_app()"
bind = [f"[{_cfg.host}]:{_cfg.port}" if ":" in _cfg.host else f"{_cfg.host}:{_cfg.port}"]
workers = _cfg.workers
# Reading each request in full before the app serves it and refusing new connections at once
# when stopping (see both classes' docstrings).
worker_class = WORKER_CLASSES[_cfg.worker_class]
worker_connections = _cfg.worker_connections
threads = _cfg.threads
timeout = _cfg.worker_timeout_seconds
graceful_timeout = _cfg.graceful_timeout_seconds
keepalive = _cfg.keepalive_seconds
preload_app = False
errorlog = "-"
loglevel = _cfg.log_level.lower()
accesslog = "-" if _cfg.access_log else None
# Method and path only: a query string (or any header) may carry a secret.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'
# Heartbeat files on tmpfs: a slow or read-only /tmp must not make workers look dead.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
proc_name = "convserve-gateway"
# gunicorn 23+'s runtime control socket is not used; several gateways on one host (tests) and
# read-only root filesystems (k8s) would trip over its fixed default path.
control_socket_disable = True
# Request line/header limits (defaults are fine); the body limit is the app's GATEWAY_MAX_BODY_BYTES.


def prepare_metrics_dir() -> str:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` up: a fresh temp dir, or the given one emptied."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        path = tempfile.mkdtemp(prefix="convserve-gateway-metrics-")
        os.environ[MULTIPROC_ENV] = path
        os.environ[_OWNED_ENV] = path
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))
    return path


def remove_metrics_dir() -> None:
    """Delete the metrics directory if `prepare_metrics_dir` created it."""
    owned = os.environ.get(_OWNED_ENV)
    if owned and owned == os.environ.get(MULTIPROC_ENV):
        shutil.rmtree(owned, ignore_errors=True)


def on_starting(server: Any) -> None:
    """Master start-up, before any worker exists."""
    path = prepare_metrics_dir()
    server.log.info("metrics: multiprocess dir %s", path)


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited: drop its live gauges (in-flight requests, model info)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker, after it stopped serving: close the backend (channel, batcher, model)."""
    app = getattr(worker, "wsgi", None)
    state = getattr(app, "extensions", {}).get("gateway")
    if state is not None:
        state.close()


def on_exit(server: Any) -> None:
    """Master shutdown."""
    remove_metrics_dir()
