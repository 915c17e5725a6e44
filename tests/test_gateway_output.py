"""A model answer with NaN or infinity is a 502 with the error shape on the gateway, never a
200 with invalid JSON: in-process backend, and the REST and gRPC backends against fake TF
Serving servers on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serving.backends import PredictResult
from serving.gateway import create_app
from serving.gateway.config import GatewayConfig
from serving.gateway.errors import BACKEND_MESSAGES
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


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_in_process_backend(value):
    backend = FakeBackend()
    backend.predict = lambda batch: PredictResult(bad_row(value), 3)  # type: ignore[method-assign]
    app = create_app(GatewayConfig(backend="grpc://backend.invalid:8500"), backend=backend)
    assert post(app) == (502, BAD_GATEWAY)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_rest_backend(token):
    with fake_rest_server() as (state, url):
        body = '{"outputs": {"probabilities": [[%s, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]]}}'
        state.script = [(200, (body % token).encode())]
        app = create_app(GatewayConfig(backend=url, model_version=1, timeout_seconds=5.0))
        assert post(app) == (502, BAD_GATEWAY)
        assert [c[0] for c in state.calls] == ["POST"]


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_grpc_backend(value):
    with fake_grpc_server() as (servicer, target):
        servicer.probabilities = bad_row(value)
        app = create_app(GatewayConfig(backend=f"grpc://{target}", timeout_seconds=5.0))
        assert post(app) == (502, BAD_GATEWAY)


def test_finite_answers_still_render():
    app = create_app(GatewayConfig(backend="grpc://backend.invalid:8500"), backend=FakeBackend())
    status, body = post(app)
    assert status == 200 and len(body["predictions"]) == 1
