"""The gateway's Flask app factory and views.

Example (tests; production runs it under gunicorn with ``python -m serving.gateway``)::

    from serving.gateway import create_app
    app = create_app({"backend": "grpc://localhost:8500"})
    client = app.test_client()
    client.post("/v1/predict", data=png_bytes, content_type="image/png").json

Nothing is built at import time: the config, backend, metrics and OpenAPI document are created
by `create_app` and hang off ``app.extensions["gateway"]`` (a `GatewayState`).
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from importlib import resources
from typing import Any

import numpy as np
from flask import Flask, Response, g, request

from serving.gateway import errors
from serving.gateway.backends import Backend, make_backend
from serving.gateway.config import GatewayConfig
from serving.gateway.log import configure_logging
from serving.gateway.metrics import GatewayMetrics
from serving.labels import CLASS_NAMES

log = logging.getLogger(__name__)

#: Content types accepted as a raw image body (DESIGN.md).
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp"})
JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
ACCEPTED_TYPES_TEXT = "image/png, image/jpeg, image/webp, image/gif, image/bmp, multipart/form-data or application/json"

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
_PROB_DECIMALS = 6


class Readiness:
    """``/readyz`` answers, cached for ``ttl`` seconds so probes do not hammer the backend."""

    def __init__(self, backend: Backend, config: GatewayConfig):
        self.backend = backend
        self.ttl = config.ready_cache_seconds
        self.pinned = config.model_version
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._value: tuple[bool, list[int], str] = (False, [], "not checked yet")

    def check(self) -> tuple[bool, list[int], str]:
        """(ready, available versions, reason when not ready)."""
        with self._lock:
            now = time.monotonic()
            if now - self._at < self.ttl:
                return self._value
            from serving.tfserving.errors import BackendError

            try:
                statuses = self.backend.status()
            except BackendError as exc:
                log.warning("readiness: backend status failed: %s", exc)
                value = (False, [], f"backend: {errors.public_backend_message(exc)}")
            else:
                available = sorted(
                    int(s.version)
                    for s in statuses
                    if s.state == "AVAILABLE" and (self.pinned is None or s.version == self.pinned)
                )
                if available:
                    value = (True, available, "")
                else:
                    states = ", ".join(f"{s.version}: {s.state}" for s in statuses) or "none"
                    want = f"version {self.pinned}" if self.pinned is not None else "a version"
                    value = (
                        False,
                        [],
                        f"{want} of the model is not AVAILABLE (versions: {states})",
                    )
            self._value, self._at = value, time.monotonic()
            return value


class GatewayState:
    """Everything one app owns: config, backend, metrics, readiness cache, OpenAPI bytes."""

    def __init__(self, config: GatewayConfig, backend: Backend):
        self.config = config
        self.backend = backend
        self.metrics = GatewayMetrics(CLASS_NAMES)
        self.readiness = Readiness(backend, config)
        self.openapi = resources.files("serving.gateway").joinpath("openapi.json").read_bytes()

    def close(self) -> None:
        """Close the backend."""
        self.backend.close()


def _resolve_config(config: GatewayConfig | Mapping[str, Any] | None) -> GatewayConfig:
    if isinstance(config, GatewayConfig):
        return config
    base = GatewayConfig.from_env()
    return base.with_overrides(config) if config else base


def create_app(
    config: GatewayConfig | Mapping[str, Any] | None = None, *, backend: Backend | None = None
) -> Flask:
    """Build the gateway app.

    ``config``: a `GatewayConfig`, or a dict of field overrides applied on top of the
    ``GATEWAY_*`` environment, or None for the environment alone. ``backend``: an object
    implementing `serving.gateway.backends.Backend` (tests); by default the one the config
    names is built. Raises `serving.gateway.config.ConfigError` on a bad config.
    """
    cfg = _resolve_config(config)
    configure_logging(cfg.log_level)
    app = Flask("serving.gateway")
    app.config["GATEWAY"] = cfg
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    # Parsed JSON bodies are limited by max_body_bytes already; keep Flask's JSON compact.
    app.json.compact = True  # type: ignore[attr-defined]
    state = GatewayState(cfg, backend if backend is not None else make_backend(cfg))
    app.extensions["gateway"] = state
    errors.register(app)
    _register_hooks(app, state)
    _register_views(app, state)
    return app


# -- request bookkeeping: request id, metrics ----------------------------------------------------
def _register_hooks(app: Flask, state: GatewayState) -> None:
    metrics = state.metrics
    # Generated request ids: a random per-app (so per-worker) prefix plus a counter, 32 hex
    # digits like a uuid4 but without a getrandom() syscall per request.
    prefix = os.urandom(8).hex()
    counter = itertools.count(1)

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
        endpoint = rule.rule if rule is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        metrics.requests.labels(endpoint, method, str(resp.status_code)).inc()
        t0 = g.get("t0")
        if t0 is not None:
            metrics.latency.labels(endpoint, method).observe(time.perf_counter() - t0)
        err = g.get("api_error")
        if err is not None and err.reason is not None:
            metrics.backend_errors.labels(err.reason).inc()
        return resp

    @app.teardown_request
    def _teardown(_exc: BaseException | None) -> None:
        if g.pop("in_flight", False):
            metrics.in_flight.dec()


# -- input parsing ------------------------------------------------------------------------------
def _check_count(n: int, cfg: GatewayConfig) -> None:
    if n == 0:
        raise errors.bad_request("the request holds no images", "no_images")
    if n > cfg.max_batch:
        raise errors.too_large(
            f"{n} images in one request; the limit is {cfg.max_batch}", "too_many_images"
        )


def _decode(data: bytes, cfg: GatewayConfig, where: str | None) -> np.ndarray:
    from serving.preprocess import PreprocessError, decode_image

    if not data:
        raise errors.bad_request(f"{where or 'request body'} is empty", "invalid_image")
    try:
        return decode_image(data, max_pixels=cfg.max_pixels)
    except PreprocessError as exc:
        if where is None:
            raise
        # Same class, message prefixed with which input failed.
        raise type(exc)(f"{where}: {exc}") from None


def _check_request_pixels(blobs: list[bytes], names: list[str], cfg: GatewayConfig) -> None:
    """413 when a request's images declare more pixels in total than ``max_request_pixels``.

    Only the headers are read, before anything is decoded. Unreadable data is left for
    `_decode` to report with its usual message.
    """
    if len(blobs) < 2:
        return  # one image: the per-image limit applies
    from serving.preprocess import PreprocessError, image_pixels

    total = 0
    for data, where in zip(blobs, names, strict=True):
        try:
            total += image_pixels(data) if data else 0
        except PreprocessError:
            continue  # `_decode` reports it, in order
        if total > cfg.max_request_pixels:
            raise errors.too_large(
                f"the request's images hold more than {cfg.max_request_pixels} pixels in "
                f"total (reached at {where}); send fewer or smaller images per request",
                "image_too_large",
            )


def _parse_json(body: bytes, cfg: GatewayConfig) -> list[np.ndarray]:
    from serving.preprocess import PreprocessError, array_to_input

    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.bad_request(f"request body is not valid JSON: {exc}", "invalid_json") from None
    except RecursionError:
        raise errors.bad_request("request body is nested too deeply", "invalid_json") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
        raise errors.bad_request(
            'JSON body must be an object with an "instances" list', "invalid_json"
        )
    instances = doc["instances"]
    _check_count(len(instances), cfg)
    # First pass: validate the shape of every instance and decode base64, so the pixel budget
    # is checked from the image headers before any image is decoded.
    images: dict[int, bytes] = {}
    for i, inst in enumerate(instances):
        if isinstance(inst, dict):
            where = f"instance {i}"
            b64 = inst.get("b64")
            if set(inst) != {"b64"} or not isinstance(b64, str):
                raise errors.bad_request(
                    f'{where}: an object instance must be {{"b64": "<base64 image>"}}',
                    "invalid_json",
                )
            try:
                images[i] = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise errors.bad_request(
                    f"{where}: b64 is not valid base64", "invalid_image"
                ) from None
    _check_request_pixels(list(images.values()), [f"instance {i}" for i in images], cfg)
    out = []
    for i, inst in enumerate(instances):
        where = f"instance {i}"
        if i in images:
            out.append(_decode(images[i], cfg, where))
        elif isinstance(inst, list):
            try:
                out.append(array_to_input(inst))
            except PreprocessError as exc:
                raise type(exc)(f"{where}: {exc}") from None
        else:
            raise errors.bad_request(
                f'{where}: expected {{"b64": ...}} or a 28x28 array of 0-255 values',
                "invalid_json",
            )
    return out


def _buffer_unsized_body(limit: int) -> None:
    """Read a body sent without Content-Length (chunked) into memory, at most ``limit`` bytes.

    Werkzeug caps such a stream at the limit but then stops reading silently, so an oversized
    chunked body would be cut short and processed. Buffering it here (before ``request.stream``
    exists) turns it into a sized body, or into a 413.
    """
    env = request.environ
    if request.content_length is not None or not env.get("wsgi.input_terminated"):
        return
    raw, parts, size = env["wsgi.input"], [], 0
    while size <= limit:
        chunk = raw.read(min(65536, limit + 1 - size))
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    if size > limit:
        raise errors.too_large(
            f"request body is larger than the limit of {limit} bytes", "body_too_large"
        )
    env["wsgi.input"] = io.BytesIO(b"".join(parts))
    env["CONTENT_LENGTH"] = str(size)
    env.pop("HTTP_TRANSFER_ENCODING", None)
    env.pop("wsgi.input_terminated", None)
    request.__dict__.pop("content_length", None)  # a cached_property: recompute from the headers


def _read_inputs(cfg: GatewayConfig) -> list[np.ndarray]:
    """The request's images as model inputs, in order (raises ApiError / PreprocessError)."""
    _buffer_unsized_body(cfg.max_body_bytes)
    length = request.content_length
    if length is not None and length > cfg.max_body_bytes:
        raise errors.too_large(
            f"request body of {length} bytes is larger than the limit of {cfg.max_body_bytes}",
            "body_too_large",
        )
    mimetype = request.mimetype
    if mimetype in IMAGE_TYPES:
        return [_decode(request.get_data(cache=False), cfg, None)]
    if mimetype == MULTIPART_TYPE:
        files = [f for _, f in request.files.items(multi=True)]
        _check_count(len(files), cfg)
        blobs = [f.read() for f in files]
        names = [f"file {i} ({f.filename or f.name})" for i, f in enumerate(files)]
        _check_request_pixels(blobs, names, cfg)
        return [_decode(data, cfg, where) for data, where in zip(blobs, names, strict=True)]
    if mimetype == JSON_TYPE:
        return _parse_json(request.get_data(cache=False), cfg)
    got = mimetype or "none"
    raise errors.unsupported_media_type(
        f"Content-Type {got} is not supported; send {ACCEPTED_TYPES_TEXT}"
    )


# -- response rendering ---------------------------------------------------------------------------
def render_predictions(model_name: str, probabilities: np.ndarray, model_version: int) -> bytes:
    """The ``/v1/predict`` body for a ``[N, 10]`` probability array (no per-float Python work).

    Probabilities are rounded to 6 decimals in NumPy and serialised by the C JSON encoder.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    ids = probs.argmax(axis=1)
    rounded = np.round(probs, _PROB_DECIMALS)
    conf = rounded[np.arange(len(ids)), ids].tolist()
    rows = rounded.tolist()
    preds = [
        {"class_id": c, "label": CLASS_NAMES[c], "confidence": p, "probabilities": r}
        for c, p, r in zip(ids.tolist(), conf, rows, strict=True)
    ]
    body = {"model_name": model_name, "model_version": int(model_version), "predictions": preds}
    return json.dumps(body, separators=(",", ":")).encode()


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    resp = Response(json.dumps(body, separators=(",", ":")), status, mimetype=JSON_TYPE)
    if headers:
        resp.headers.update(headers)
    return resp


# -- views --------------------------------------------------------------------------------------
def _register_views(app: Flask, state: GatewayState) -> None:
    cfg = state.config
    metrics = state.metrics
    backend = state.backend
    from serving.preprocess import to_batch

    @app.post("/v1/predict")
    def predict() -> Response:
        t0 = time.perf_counter()
        inputs = _read_inputs(cfg)
        batch = to_batch(inputs)
        t1 = time.perf_counter()
        metrics.images.observe(len(inputs))
        metrics.observe_stage("preprocess", t1 - t0)
        result = backend.predict(batch)
        t2 = time.perf_counter()
        metrics.observe_stage("backend", t2 - t1)
        probs = result.probabilities
        if probs.shape != (len(inputs), len(CLASS_NAMES)):
            from serving.tfserving.errors import BackendError

            raise BackendError(
                f"backend returned probabilities of shape {probs.shape} for {len(inputs)} inputs"
            )
        body = render_predictions(cfg.model_name, probs, result.model_version)
        metrics.count_predictions(probs.argmax(axis=1).tolist())
        metrics.set_model(cfg.model_name, result.model_version)
        metrics.observe_stage("postprocess", time.perf_counter() - t2)
        return Response(body, mimetype=JSON_TYPE)

    @app.get("/v1/models")
    def models() -> Response:
        statuses = backend.status()
        versions = [
            {"version": int(s.version), "state": str(s.state), "error": str(s.error or "")}
            for s in statuses
        ]
        return _json(
            {
                "model_name": cfg.model_name,
                "backend": cfg.backend_kind,
                "pinned_version": cfg.model_version,
                "pinned_label": cfg.model_label,
                "versions": versions,
                "class_names": list(CLASS_NAMES),
            }
        )

    @app.get("/healthz")
    def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        ready, versions, reason = state.readiness.check()
        if ready:
            return _json({"status": "ready", "model_name": cfg.model_name, "versions": versions})
        raise errors.unavailable(
            f"model {cfg.model_name} is not ready: {reason}",
            cfg.retry_after_seconds,
            "not_ready",
        )

    @app.get("/metrics")
    def metrics_view() -> Response:
        data, content_type = metrics.render()
        return Response(data, content_type=content_type)

    @app.get("/openapi.json")
    def openapi() -> Response:
        return Response(state.openapi, mimetype=JSON_TYPE)
