"""A model answer with NaN or infinity is a 502 with the error shape on the gateway, never a
200 with invalid JSON: an in-process backend, the REST and gRPC backends against fake TF
Serving servers on loopback, and the embedded backend serving a SavedModel that answers NaN
(slow: TensorFlow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serving.backends import PredictResult
from serving.contract import CLASS_NAMES
from serving.gateway import create_app
from serving.gateway.config import GatewayConfig
from serving.gateway.errors import BACKEND_MESSAGES
from serving.gateway.render import render_predictions
from tests.support.fake_tfserving import fake_grpc_server, fake_rest_server
from tests.support.gateway import FakeBackend

PNG = (Path(__file__).parent / "support" / "images" / "bag.png").read_bytes()
BAD_GATEWAY = {"error": {"code": "backend_error", "message": BACKEND_MESSAGES["backend_error"]}}


def bad_row(value: float) -> np.ndarray:
    row = np.full((1, 10), 0.1, np.float32)
    row[0, 3] = value
    return row


def post(app):
    resp = app.test_client().post("/v1/predict", data=PNG, content_type="image/png")
    return resp.status_code, json.loads(resp.data)  # always valid JSON (no NaN tokens)


def assert_logged_as_non_finite(caplog) -> None:
    """The 502 is the non-finite check's (logged with the detail), not some other failure."""
    details = [r.getMessage() for r in caplog.records if r.name == "serving.gateway.errors"]
    assert details == [
        "backend error (backend_error): backend returned NaN or infinite probabilities"
    ]


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_in_process_backend(value, caplog):
    backend = FakeBackend()
    backend.predict = lambda batch: PredictResult(bad_row(value), 3)  # type: ignore[method-assign]
    app = create_app(GatewayConfig(backend="grpc://backend.invalid:8500"), backend=backend)
    assert post(app) == (502, BAD_GATEWAY)
    assert_logged_as_non_finite(caplog)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_rest_backend(token, caplog):
    with fake_rest_server() as (state, url):
        body = '{"outputs": {"probabilities": [[%s, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]]}}'
        state.script = [(200, (body % token).encode())]
        app = create_app(GatewayConfig(backend=url, model_version=1, timeout_seconds=5.0))
        assert post(app) == (502, BAD_GATEWAY)
        assert [c[0] for c in state.calls] == ["POST"]
        assert_logged_as_non_finite(caplog)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_grpc_backend(value, caplog):
    with fake_grpc_server() as (servicer, target):
        servicer.probabilities = bad_row(value)
        app = create_app(GatewayConfig(backend=f"grpc://{target}", timeout_seconds=5.0))
        assert post(app) == (502, BAD_GATEWAY)
        assert_logged_as_non_finite(caplog)


def test_finite_answers_still_render():
    app = create_app(GatewayConfig(backend="grpc://backend.invalid:8500"), backend=FakeBackend())
    status, body = post(app)
    assert status == 200 and len(body["predictions"]) == 1


def _numpy_reference(probs: np.ndarray) -> list[dict]:
    """The predictions as NumPy's argmax and rounding give them."""
    probs = np.asarray(probs, np.float64)
    ids = probs.argmax(axis=1)
    rounded = np.round(probs, 6)
    return [
        {
            "class_id": int(c),
            "label": CLASS_NAMES[c],
            "confidence": float(rounded[i, c]),
            "probabilities": rounded[i].tolist(),
        }
        for i, c in enumerate(ids)
    ]


@pytest.mark.parametrize("rows", [1, 3, 64])
def test_render_matches_numpy_argmax_and_rounding(rows):
    rng = np.random.default_rng(rows)
    probs = rng.dirichlet(np.ones(10), rows).astype(np.float32)
    probs[0] = [0.05, 0.3, 0.05, 0.3, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]  # a tie: the first wins
    body, ids = render_predictions("fashion_mnist", probs, 7)
    doc = json.loads(body)
    assert doc["model_name"] == "fashion_mnist" and doc["model_version"] == 7
    assert doc["predictions"] == _numpy_reference(probs)
    assert ids == probs.argmax(axis=1).tolist() and ids[0] == 1


def _export_nan_model(base: Path) -> None:
    """A SavedModel with the export contract's signature whose probabilities are all NaN."""
    import tensorflow as tf  # slow to import: only this test needs it

    from serving.contract import INPUT_KEY, OUTPUT_PROBABILITIES

    class NanModel(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, INPUT_KEY)])
        def serve(self, images):
            n = tf.shape(images)[0]
            probs = tf.fill([n, len(CLASS_NAMES)], float("nan"))
            ids = tf.zeros([n], tf.int64)
            return {
                OUTPUT_PROBABILITIES: probs,
                "class_ids": ids,
                "class_names": tf.gather(tf.constant(CLASS_NAMES), ids),
            }

    model = NanModel()
    tf.saved_model.save(model, str(base / "1"), signatures={"serving_default": model.serve})


@pytest.mark.slow
def test_embedded_backend(tmp_path, caplog):
    base = tmp_path / "fashion_mnist"
    _export_nan_model(base)
    app = create_app(GatewayConfig(backend=f"embedded:{base}", timeout_seconds=30.0))
    try:
        assert post(app) == (502, BAD_GATEWAY)
        assert_logged_as_non_finite(caplog)
    finally:
        app.extensions["gateway"].backend.close()
