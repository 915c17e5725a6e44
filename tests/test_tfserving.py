"""serving.tfserving against small in-test servers: request encoding, response parsing,
error mapping, retries and deadlines (gRPC and REST). The end-to-end tests against the real
model server are in tests/test_tfserving_e2e.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from loadtest.servers import free_port
from serving.tfserving import (
    BackendError,
    BackendInvalidRequest,
    BackendTimeout,
    BackendUnavailable,
    GrpcClient,
    ModelNotFound,
    PredictResult,
    RestClient,
    VersionStatus,
)
from tests.support.fake_tfserving import fake_grpc_server, fake_probabilities, fake_rest_server, pb

ROOT = Path(__file__).resolve().parents[1]


def batch_of(n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    return rng.integers(0, 256, size=(n, 28, 28, 1)).astype(np.float32) / 255


@pytest.fixture(scope="module")
def grpc_server():
    with fake_grpc_server() as server:
        yield server


@pytest.fixture
def fake(grpc_server):
    servicer, target = grpc_server
    servicer.fail, servicer.delay, servicer.requests = [], 0.0, []
    servicer.use_float_val, servicer.next_details = False, None
    return servicer, target


@pytest.mark.parametrize("use_float_val", [False, True])
def test_grpc_predict_round_trip(fake, use_float_val):
    servicer, target = fake
    servicer.use_float_val = use_float_val
    batch = batch_of(3)
    with GrpcClient(target) as client:
        result = client.predict(batch)
    assert isinstance(result, PredictResult)
    assert result.model_version == 7
    assert result.probabilities.dtype == np.float32
    np.testing.assert_array_equal(result.probabilities, fake_probabilities(batch))
    (request,) = servicer.requests
    assert request.model_spec.name == "fashion_mnist"
    assert not request.model_spec.HasField("version") and request.model_spec.version_label == ""
    assert request.model_spec.signature_name == "serving_default"
    assert list(request.output_filter) == ["probabilities"]
    tensor = request.inputs["images"]
    assert tensor.dtype == pb.types_pb2.DT_FLOAT
    assert [d.size for d in tensor.tensor_shape.dim] == [3, 28, 28, 1]
    assert tensor.tensor_content == batch.tobytes() and len(tensor.float_val) == 0


def test_grpc_version_and_label_pinning(fake):
    servicer, target = fake
    with GrpcClient(target, "other_model", version=5) as client:
        client.predict(batch_of(1))
        client.model_status()
    with GrpcClient(target, label="stable") as client:
        client.predict(batch_of(1))
    pinned, status_request, labelled = servicer.requests
    assert pinned.model_spec.name == "other_model" and pinned.model_spec.version.value == 5
    assert status_request.model_spec.version.value == 5
    assert labelled.model_spec.version_label == "stable"
    assert not labelled.model_spec.HasField("version")
    with pytest.raises(ValueError, match="either a version or a label"):
        GrpcClient(target, version=1, label="stable")


def test_grpc_model_status(fake):
    _, target = fake
    with GrpcClient(target) as client:
        assert client.model_status() == [
            VersionStatus(3, "END", ""),
            VersionStatus(7, "AVAILABLE", ""),
            VersionStatus(8, "END", "Could not load: bad file"),
            VersionStatus(9, "LOADING", ""),
        ]


def test_grpc_unavailable_is_retried_then_succeeds(fake):
    servicer, target = fake
    servicer.fail = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
    with GrpcClient(target, retries=2) as client:
        assert client.predict(batch_of(2)).model_version == 7
    assert len(servicer.requests) == 3


def test_grpc_unavailable_retries_are_bounded(fake):
    servicer, target = fake
    servicer.fail = [grpc.StatusCode.UNAVAILABLE] * 5
    with GrpcClient(target, retries=2) as client, pytest.raises(BackendUnavailable) as info:
        client.predict(batch_of(1))
    assert len(servicer.requests) == 3
    assert str(info.value) == f"Predict fashion_mnist on {target}: scripted UNAVAILABLE"
    assert info.value.http_status == 503


@pytest.mark.parametrize(
    ("code", "error", "http_status"),
    [
        (grpc.StatusCode.NOT_FOUND, ModelNotFound, 503),
        (grpc.StatusCode.INVALID_ARGUMENT, BackendInvalidRequest, 400),
        (grpc.StatusCode.INTERNAL, BackendError, 502),
        (grpc.StatusCode.FAILED_PRECONDITION, BackendError, 502),
    ],
)
def test_grpc_errors_are_mapped_and_not_retried(fake, code, error, http_status):
    servicer, target = fake
    servicer.fail = [code]
    with GrpcClient(target, retries=3) as client, pytest.raises(error) as info:
        client.predict(batch_of(1))
    assert type(info.value) is error
    assert info.value.http_status == http_status
    assert f"scripted {code.name}" in str(info.value)
    assert len(servicer.requests) == 1


def test_grpc_deadline_is_backend_timeout(fake):
    servicer, target = fake
    servicer.delay = 1.0
    with GrpcClient(target, timeout=0.2) as client, pytest.raises(BackendTimeout) as info:
        client.predict(batch_of(1))
    assert "Deadline Exceeded" in str(info.value)
    assert info.value.http_status == 504 and info.value.code == "backend_timeout"
    assert len(servicer.requests) == 1


def test_grpc_nothing_listening_is_unavailable():
    target = f"127.0.0.1:{free_port()}"
    with GrpcClient(target, timeout=2.0, retries=1) as client:
        with pytest.raises(BackendUnavailable, match=r"Connection refused|failed to connect"):
            client.predict(batch_of(1))
        with pytest.raises(BackendUnavailable):
            client.model_status()


def test_bad_batches_are_caller_errors(fake):
    _, target = fake
    with GrpcClient(target) as client:
        with pytest.raises(ValueError, match="non-empty batch"):
            client.predict(np.zeros((0, 28, 28, 1), np.float32))
        with pytest.raises(ValueError, match="non-empty batch"):
            client.predict(np.zeros(28, np.float32))


def test_no_tensorflow_runtime_is_imported():
    code = (
        "import sys, numpy as np\n"
        "from serving.tfserving import GrpcClient, RestClient\n"
        "GrpcClient('127.0.0.1:1'); RestClient('http://127.0.0.1:1')\n"
        "import serving.preprocess, client\n"
        "loaded = sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith("
        "('tensorflow.python', 'keras')))\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow  # imports the TensorFlow runtime in a subprocess (~8-15 s)
def test_tensorflow_still_imports_after_the_protos(tmp_path):
    # Protos first (placeholder package), then the real runtime in the same process.
    code = (
        "from serving.tfserving import _protos\n"
        "p = _protos.load()\n"
        "import tensorflow as tf\n"
        "from tensorflow.core.framework import tensor_pb2\n"
        "t = tf.make_tensor_proto([1.0, 2.0])\n"
        "r = p.predict_pb2.PredictRequest(); r.inputs['x'].CopyFrom(t)\n"
        "print(float(tf.reduce_sum(tf.constant([1.0, 2.0]))), type(t) is tensor_pb2.TensorProto)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3.0 True"


# --- REST ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rest_server():
    with fake_rest_server() as server:
        yield server


@pytest.fixture
def rest(rest_server):
    state, url = rest_server
    state.script, state.delay, state.calls, state.row_format = [], 0.0, [], False
    state.versions = [(1, "AVAILABLE"), (2, "AVAILABLE"), (3, "LOADING")]
    return state, url


@pytest.mark.parametrize("row_format", [False, True])
def test_rest_predict_round_trip(rest, row_format):
    state, url = rest
    state.row_format = row_format
    batch = batch_of(2)
    with RestClient(url + "/") as client:
        result = client.predict(batch)
    np.testing.assert_allclose(result.probabilities, fake_probabilities(batch), rtol=1e-6)
    assert result.probabilities.dtype == np.float32
    assert result.model_version == 2  # highest AVAILABLE version from the status endpoint
    (post, get) = state.calls
    assert post[:2] == ("POST", "/v1/models/fashion_mnist:predict")
    assert post[2]["signature_name"] == "serving_default"
    assert np.asarray(post[2]["inputs"]["images"], np.float32).shape == (2, 28, 28, 1)
    assert get[:2] == ("GET", "/v1/models/fashion_mnist")


def test_rest_version_is_cached_briefly(rest):
    state, url = rest
    with RestClient(url, version_ttl=0.3) as client:
        assert client.predict(batch_of(1)).model_version == 2
        state.versions = [(2, "AVAILABLE"), (4, "AVAILABLE")]
        assert client.predict(batch_of(1)).model_version == 2  # cached
        time.sleep(0.35)
        assert client.predict(batch_of(1)).model_version == 4
    assert [c[0] for c in state.calls] == ["POST", "GET", "POST", "POST", "GET"]


def test_rest_pinned_version_and_label_urls(rest):
    state, url = rest
    with RestClient(url, version=1) as client:
        assert client.predict(batch_of(1)).model_version == 1
    with RestClient(url, "m", label="canary") as client:
        client.predict(batch_of(1))
        client.model_status()
    assert [c[:2] for c in state.calls] == [
        ("POST", "/v1/models/fashion_mnist/versions/1:predict"),  # pinned: no status call
        ("POST", "/v1/models/m/labels/canary:predict"),
        ("GET", "/v1/models/m/labels/canary"),
        ("GET", "/v1/models/m/labels/canary"),
    ]


def test_rest_model_status(rest):
    state, url = rest
    state.script = [
        (
            200,
            {
                "model_version_status": [
                    {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK"}},
                    {
                        "version": "1",
                        "state": "END",
                        "status": {"error_code": "NOT_FOUND", "error_message": "gone"},
                    },
                ]
            },
        )
    ]
    with RestClient(url) as client:
        assert client.model_status() == [
            VersionStatus(1, "END", "gone"),
            VersionStatus(2, "AVAILABLE", ""),
        ]


@pytest.mark.parametrize(
    ("status", "error", "http_status"),
    [
        (404, ModelNotFound, 503),
        (400, BackendInvalidRequest, 400),
        (500, BackendError, 502),
    ],
)
def test_rest_errors_are_mapped_and_not_retried(rest, status, error, http_status):
    state, url = rest
    state.script = [(status, {"error": "Servable not found for request: Latest(fashion_mnist)"})]
    with RestClient(url, retries=3) as client, pytest.raises(error) as info:
        client.predict(batch_of(1))
    assert type(info.value) is error and info.value.http_status == http_status
    assert str(info.value) == (
        f"POST {url}/v1/models/fashion_mnist:predict: HTTP {status}: "
        "Servable not found for request: Latest(fashion_mnist)"
    )
    assert len(state.calls) == 1


def test_rest_503_is_retried_and_bounded(rest):
    state, url = rest
    state.script = [(503, {"error": "busy"})] * 2
    with RestClient(url, version=1, retries=2) as client:
        assert client.predict(batch_of(1)).model_version == 1
    assert len(state.calls) == 3
    state.calls.clear()
    state.script = [(503, {"error": "busy"})] * 3
    with RestClient(url, version=1, retries=2) as client, pytest.raises(BackendUnavailable):
        client.predict(batch_of(1))
    assert len(state.calls) == 3


def test_rest_non_json_answers(rest):
    state, url = rest
    state.script = [(502, b"<html>bad gateway</html>"), (200, b"not json")]
    with RestClient(url, version=1, retries=0) as client:
        with pytest.raises(BackendUnavailable, match=r"HTTP 502: <html>bad gateway</html>$"):
            client.predict(batch_of(1))
        with pytest.raises(BackendError, match=r"response is not JSON$"):
            client.predict(batch_of(1))


def test_rest_wrong_shape_is_backend_error(rest):
    state, url = rest
    state.script = [(200, {"outputs": {"probabilities": [[0.1] * 10]}})]
    with RestClient(url, version=1) as client, pytest.raises(BackendError) as info:
        client.predict(batch_of(2))
    assert str(info.value).endswith("'probabilities' has shape [1, 10] for a batch of 2")


def test_rest_deadline_is_backend_timeout(rest):
    state, url = rest
    state.delay = 1.0
    with RestClient(url, version=1, timeout=0.2) as client, pytest.raises(BackendTimeout):
        client.predict(batch_of(1))
    assert len(state.calls) == 1


def test_rest_nothing_listening_is_unavailable():
    url = f"http://127.0.0.1:{free_port()}"
    with RestClient(url, retries=1) as client, pytest.raises(BackendUnavailable) as info:
        client.model_status()
    assert str(info.value) == f"GET {url}/v1/models/fashion_mnist: connection refused"


def test_rest_rejects_bad_urls():
    with pytest.raises(ValueError, match="must start with http"):
        RestClient("localhost:8501")


@pytest.mark.parametrize("n", [1, 3])
def test_rest_json_encoding_is_exact(n):
    from serving.tfserving.rest_client import encode_batch_json

    levels = batch_of(n)  # values k/255: the lookup-table fast path
    assert np.array_equal(np.asarray(json.loads(encode_batch_json(levels)), np.float32), levels)
    other = np.random.default_rng(n).random((n, 28, 28, 1)).astype(np.float32)  # general floats
    assert np.array_equal(np.asarray(json.loads(encode_batch_json(other)), np.float32), other)


def test_unknown_label_is_model_not_found(fake, rest):
    servicer, target = fake
    servicer.fail = [grpc.StatusCode.INVALID_ARGUMENT]
    servicer_details = "Unrecognized servable version label: nope"
    servicer.next_details = servicer_details
    with GrpcClient(target, label="nope") as client, pytest.raises(ModelNotFound):
        client.predict(batch_of(1))
    state, url = rest
    state.script = [(400, {"error": servicer_details})]
    with RestClient(url, label="nope") as client, pytest.raises(ModelNotFound) as info:
        client.predict(batch_of(1))
    assert str(info.value).endswith(f"HTTP 400: {servicer_details}")
