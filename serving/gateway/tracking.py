"""Per-request bookkeeping: the request id, and the request/latency/in-flight metrics."""

from __future__ import annotations

import itertools
import os
import re
import time
from typing import Any

from flask import Flask, Response, g, request

from serving.gateway.state import GatewayState

__all__ = ["install"]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})


def install(app: Flask, state: GatewayState) -> None:
    """Register the before/after/teardown hooks on ``app``."""
    metrics = state.metrics
    # Generated request ids: a random per-app (so per-worker) prefix plus a counter, 32 hex
    # digits like a uuid4 but without a getrandom() syscall per request.
    prefix = os.urandom(8).hex()
    counter = itertools.count(1)
    # (endpoint, method, status) -> its request counter and latency histogram: looking a
    # labelled series up costs more than updating it. Bounded: the app's routes, methods, codes.
    children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    @app.before_request
    def _start() -> None:
        g.t0 = time.perf_counter()
        metrics.in_flight.inc()
        g.in_flight = True
        rid = request.headers.get("X-Request-ID")
        g.request_id = rid if rid and _REQUEST_ID.match(rid) else f"{prefix}{next(counter):016x}"

    @app.after_request
    def _finish(resp: Response) -> Response:
        resp.headers["X-Request-ID"] = g.get("request_id") or f"{prefix}{next(counter):016x}"
        rule = request.url_rule
        method = request.method if request.method in _METHODS else "other"
        key = (rule.rule if rule is not None else "unmatched", method, resp.status_code)
        series = children.get(key)
        if series is None:
            series = children[key] = _series(metrics, *key)
        series[0].inc()
        t0 = g.get("t0")
        if t0 is not None:
            series[1].observe(time.perf_counter() - t0)
        err = g.get("api_error")
        if err is not None and err.reason is not None:
            metrics.backend_errors.labels(err.reason).inc()
        return resp

    @app.teardown_request
    def _teardown(_exc: BaseException | None) -> None:
        if g.pop("in_flight", False):
            metrics.in_flight.dec()


def _series(metrics: Any, endpoint: str, method: str, status: int) -> tuple[Any, Any]:
    """The request counter and latency histogram of one endpoint, method and status."""
    return (
        metrics.requests.labels(endpoint, method, str(status)),
        metrics.latency.labels(endpoint, method),
    )
