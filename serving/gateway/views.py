"""The gateway's endpoints, as a Blueprint reading its state from ``current_app.extensions``."""

from __future__ import annotations

import time

import numpy as np
from flask import Blueprint, Response, request

from serving.backends import BackendBadResponse
from serving.contract import CLASS_NAMES
from serving.gateway import errors
from serving.gateway.inputs import read_inputs
from serving.gateway.render import JSON_TYPE, json_response, render_predictions
from serving.gateway.state import current_state
from serving.preprocess import to_batch

__all__ = ["bp"]

bp = Blueprint("gateway", __name__)


@bp.post("/v1/predict")
def predict() -> Response:
    state = current_state()
    cfg, metrics = state.config, state.metrics
    t0 = time.perf_counter()
    inputs = read_inputs(request, cfg)
    batch = to_batch(inputs, check_range=False)  # read_inputs' images are in range already
    t1 = time.perf_counter()
    metrics.images.observe(len(inputs))
    metrics.observe_stage("preprocess", t1 - t0)
    result = state.backend.predict(batch)
    t2 = time.perf_counter()
    metrics.observe_stage("backend", t2 - t1)
    probs = result.probabilities
    if probs.shape != (len(inputs), len(CLASS_NAMES)):
        raise BackendBadResponse(
            f"backend returned probabilities of shape {probs.shape} for {len(inputs)} inputs"
        )
    if not np.isfinite(probs).all():  # NaN/inf would render as invalid JSON: a 502 instead
        raise BackendBadResponse("backend returned NaN or infinite probabilities")
    body, class_ids = render_predictions(cfg.model_name, probs, result.model_version)
    metrics.count_predictions(class_ids)
    metrics.set_model(cfg.model_name, result.model_version)
    metrics.observe_stage("postprocess", time.perf_counter() - t2)
    return Response(body, mimetype=JSON_TYPE)


@bp.get("/v1/models")
def models() -> Response:
    state = current_state()
    cfg = state.config
    statuses = state.backend.status()
    state.metrics.observe_versions(statuses)
    versions = [
        {
            "version": int(s.version),
            "state": str(s.state),
            "error": errors.public_version_error(str(s.error or "")),
        }
        for s in statuses
    ]
    return json_response(
        {
            "model_name": cfg.model_name,
            "backend": cfg.backend_kind,
            "pinned_version": cfg.model_version,
            "pinned_label": cfg.model_label,
            "versions": versions,
            "class_names": list(CLASS_NAMES),
        }
    )


@bp.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    state = current_state()
    cfg = state.config
    ready, versions, reason = state.readiness.check()
    if ready:
        return json_response(
            {"status": "ready", "model_name": cfg.model_name, "versions": versions}
        )
    raise errors.unavailable(
        f"model {cfg.model_name} is not ready: {reason}",
        cfg.retry_after_seconds,
        "not_ready",
    )


@bp.get("/metrics")
def metrics_view() -> Response:
    data, content_type = current_state().metrics.render()
    return Response(data, content_type=content_type)


@bp.get("/openapi.json")
def openapi() -> Response:
    return Response(current_state().openapi, mimetype=JSON_TYPE)
