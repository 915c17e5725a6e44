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


def render_predictions(
    model_name: str, probabilities: np.ndarray, model_version: int
) -> tuple[bytes, list[int]]:
    """The ``/v1/predict`` body for a ``[N, 10]`` probability array, and each row's class id.

    Probabilities are rounded to 6 decimals in NumPy and serialised by the C JSON encoder; the
    class id is the first highest probability, as ``argmax`` picks it. The ids are found on
    Python lists rather than with ``argmax`` and fancy indexing: those NumPy calls release the
    GIL even for 10 numbers, and under a worker's concurrent threads each release is a thread
    switch (docs/BENCHMARKS.md, "GIL releases").
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    rows = np.round(probs, _PROB_DECIMALS).tolist()
    ids = [row.index(max(row)) for row in probs.tolist()]
    preds = [
        {"class_id": c, "label": CLASS_NAMES[c], "confidence": r[c], "probabilities": r}
        for c, r in zip(ids, rows, strict=True)
    ]
    body = {"model_name": model_name, "model_version": int(model_version), "predictions": preds}
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode(), ids


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``body`` as compact JSON."""
    resp = Response(json.dumps(body, separators=(",", ":")), status, mimetype=JSON_TYPE)
    if headers:
        resp.headers.update(headers)
    return resp
