"""JSON answers: the ``/v1/predict`` body and compact JSON responses."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from flask import Response

from serving.contract import CLASS_NAMES

__all__ = ["JSON_TYPE", "json_response", "render_predictions"]

JSON_TYPE = "application/json"
_PROB_DECIMALS = 6


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
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``body`` as compact JSON."""
    resp = Response(json.dumps(body, separators=(",", ":")), status, mimetype=JSON_TYPE)
    if headers:
        resp.headers.update(headers)
    return resp
