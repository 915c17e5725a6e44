"""serving.backends' gRPC and REST backends against small in-test servers: request encoding,
response parsing, error mapping, retries and deadlines; `connect`'s address parsing. The
end-to-end tests against the real model server are in tests/test_client_e2e.py."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from loadtest.servers import free_port
from serving.backends import (
    Backend,
    BackendConfigError,
    BackendError,
    BackendInvalidRequest,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
    PredictResult,
    VersionStatus,
    connect,
    parse_address,
)
from serving.backends.address import Address
from serving.backends.embedded import EmbeddedBackend
from serving.backends.grpc import GrpcBackend
from serving.backends.rest import RestBackend
from tests.support.fake_tfserving import fake_probabilities, pb

ROOT = Path(__file__).resolve().parents[1]


def batch_of(n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    return rng.integers(0, 256, size=(n, 28, 28, 1)).astype(np.float32) / 255


@pytest.mark.parametrize("use_float_val", [False, True])
def test_grpc_predict_round_trip(fake, use_float_val):
    servicer, target = fake
    servicer.use_float_val = use_float_val
    batch = batch_of(3)
    with GrpcBackend(target) as client:
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
    with GrpcBackend(target, "other_model", version=5) as client:
        client.predict(batch_of(1))
        client.status()
    with GrpcBackend(target, label="stable") as client:
        client.predict(batch_of(1))
    pinned, status_request, labelled = servicer.requests
    assert pinned.model_spec.name == "other_model" and pinned.model_spec.version.value == 5
    assert status_request.model_spec.version.value == 5
    assert labelled.model_spec.version_label == "stable"
    assert not labelled.model_spec.HasField("version")
    with pytest.raises(ValueError, match="either a version or a label"):
        GrpcBackend(target, version=1, label="stable")


def test_grpc_model_status(fake):
    _, target = fake
    with GrpcBackend(target) as client:
        assert client.status() == [  # newest first, whatever order the server used
            VersionStatus(9, "LOADING", ""),
            VersionStatus(8, "END", "Could not load: bad file"),
            VersionStatus(7, "AVAILABLE", ""),
            VersionStatus(3, "END", ""),
        ]


def test_grpc_unavailable_is_retried_then_succeeds(fake):
    servicer, target = fake
    servicer.fail = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
    with GrpcBackend(target, retries=2) as client:
        assert client.predict(batch_of(2)).model_version == 7
    assert len(servicer.requests) == 3


def test_grpc_unavailable_retries_are_bounded(fake):
    servicer, target = fake
    servicer.fail = [grpc.StatusCode.UNAVAILABLE] * 5
    with GrpcBackend(target, retries=2) as client, pytest.raises(BackendUnavailable) as info:
        client.predict(batch_of(1))
    assert len(servicer.requests) == 3
    assert str(info.value) == f"Predict fashion_mnist on {target}: scripted UNAVAILABLE"
    assert info.value.code == "backend_unavailable"


@pytest.mark.parametrize(
    ("code", "error", "error_code"),
    [
        (grpc.StatusCode.NOT_FOUND, ModelNotFound, "model_not_ready"),
        (grpc.StatusCode.INVALID_ARGUMENT, BackendInvalidRequest, "invalid_request"),
        (grpc.StatusCode.INTERNAL, BackendError, "backend_error"),
        (grpc.StatusCode.FAILED_PRECONDITION, BackendError, "backend_error"),
    ],
)
def test_grpc_errors_are_mapped_and_not_retried(fake, code, error, error_code):
    servicer, target = fake
    servicer.fail = [code]
    with GrpcBackend(target, retries=3) as client, pytest.raises(error) as info:
        client.predict(batch_of(1))
    assert type(info.value) is error
    assert info.value.code == error_code
    assert f"scripted {code.name}" in str(info.value)
    assert len(servicer.requests) == 1


def test_grpc_deadline_is_backend_timeout(fake):
    servicer, target = fake
    servicer.delay = 1.0
    with GrpcBackend(target, timeout=0.2) as client, pytest.raises(BackendTimeout) as info:
        client.predict(batch_of(1))
    assert "Deadline Exceeded" in str(info.value)
    assert info.value.code == "backend_timeout"
    assert len(servicer.requests) == 1


def test_grpc_nothing_listening_is_unavailable():
    target = f"127.0.0.1:{free_port()}"
    with GrpcBackend(target, timeout=2.0, retries=1) as client:
        with pytest.raises(BackendUnavailable, match=r"Connection refused|failed to connect"):
            client.predict(batch_of(1))
        with pytest.raises(BackendUnavailable):
            client.status()


def test_grpc_reconnect_attempts_stay_frequent_while_the_backend_is_down():
    """gRPC waits out its reconnect backoff before connecting again (calls fail meanwhile), so
    the backoff's cap is how long a restarted model server goes unused. Count the channel's
    connection attempts to a listener that drops each one: after 6 s of failures they must
    still come at most ~0.6 s apart (500 ms cap, +20 % jitter; gRPC's default grows to 120 s)."""
    attempts: list[float] = []
    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.05)

        def drop_connections() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                attempts.append(time.monotonic())
                conn.close()

        target = f"127.0.0.1:{listener.getsockname()[1]}"
        with ThreadPoolExecutor(1) as pool, GrpcBackend(target, timeout=0.5, retries=0) as client:
            accepting = pool.submit(drop_connections)
            try:
                end = time.monotonic() + 6.0
                while time.monotonic() < end:
                    with pytest.raises((BackendUnavailable, BackendTimeout)):
                        client.predict(batch_of(1))
                    time.sleep(0.02)
            finally:
                stop.set()
            accepting.result()
    gaps = np.diff(attempts)
    assert len(attempts) >= 10, attempts
    assert gaps.max() < 0.5 * 1.2 + 0.15, gaps.round(3).tolist()


def test_bad_batches_are_caller_errors(fake):
    _, target = fake
    with GrpcBackend(target) as client:
        with pytest.raises(ValueError, match="non-empty batch"):
            client.predict(np.zeros((0, 28, 28, 1), np.float32))
        with pytest.raises(ValueError, match="non-empty batch"):
            client.predict(np.zeros(28, np.float32))


def test_no_tensorflow_runtime_is_imported():
    code = (
        "import sys, numpy as np\n"
        "import serving.backends.grpc, serving.backends.rest\n"
        "from serving.backends import connect\n"
        "connect('grpc://127.0.0.1:1'); connect('http://127.0.0.1:1')\n"
        "import serving.preprocess, serving.gateway.app, client\n"
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
        "from serving.backends import _protos\n"
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


@pytest.mark.parametrize("row_format", [False, True])
def test_rest_predict_round_trip(rest, row_format):
    state, url = rest
    state.row_format = row_format
    batch = batch_of(2)
    with RestBackend(url + "/") as client:
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
    with RestBackend(url, version_ttl=0.3) as client:
        assert client.predict(batch_of(1)).model_version == 2
        state.versions = [(2, "AVAILABLE"), (4, "AVAILABLE")]
        assert client.predict(batch_of(1)).model_version == 2  # cached
        time.sleep(0.35)
        assert client.predict(batch_of(1)).model_version == 4
    assert [c[0] for c in state.calls] == ["POST", "GET", "POST", "POST", "GET"]


def test_rest_pinned_version_and_label_urls(rest):
    state, url = rest
    with RestBackend(url, version=1) as client:
        assert client.predict(batch_of(1)).model_version == 1
    with RestBackend(url, "m", label="canary") as client:
        client.predict(batch_of(1))
        client.status()
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
    with RestBackend(url) as client:
        assert client.status() == [
            VersionStatus(2, "AVAILABLE", ""),
            VersionStatus(1, "END", "gone"),
        ]


@pytest.mark.parametrize(
    ("status", "error", "error_code"),
    [
        (404, ModelNotFound, "model_not_ready"),
        (400, BackendInvalidRequest, "invalid_request"),
        (500, BackendError, "backend_error"),
    ],
)
def test_rest_errors_are_mapped_and_not_retried(rest, status, error, error_code):
    state, url = rest
    state.script = [(status, {"error": "Servable not found for request: Latest(fashion_mnist)"})]
    with RestBackend(url, retries=3) as client, pytest.raises(error) as info:
        client.predict(batch_of(1))
    assert type(info.value) is error and info.value.code == error_code
    assert str(info.value) == (
        f"POST {url}/v1/models/fashion_mnist:predict: HTTP {status}: "
        "Servable not found for request: Latest(fashion_mnist)"
    )
    assert len(state.calls) == 1


def test_rest_503_is_retried_and_bounded(rest):
    state, url = rest
    state.script = [(503, {"error": "busy"})] * 2
    with RestBackend(url, version=1, retries=2) as client:
        assert client.predict(batch_of(1)).model_version == 1
    assert len(state.calls) == 3
    state.calls.clear()
    state.script = [(503, {"error": "busy"})] * 3
    with RestBackend(url, version=1, retries=2) as client, pytest.raises(BackendUnavailable):
        client.predict(batch_of(1))
    assert len(state.calls) == 3


def test_rest_non_json_answers(rest):
    state, url = rest
    state.script = [(502, b"<html>bad gateway</html>"), (200, b"not json")]
    with RestBackend(url, version=1, retries=0) as client:
        with pytest.raises(BackendUnavailable, match=r"HTTP 502: <html>bad gateway</html>$"):
            client.predict(batch_of(1))
        with pytest.raises(BackendError, match=r"response is not JSON$"):
            client.predict(batch_of(1))


def test_rest_wrong_shape_is_backend_error(rest):
    state, url = rest
    state.script = [(200, {"outputs": {"probabilities": [[0.1] * 10]}})]
    with RestBackend(url, version=1) as client, pytest.raises(BackendError) as info:
        client.predict(batch_of(2))
    assert str(info.value).endswith("'probabilities' has shape [1, 10] for a batch of 2")


def test_rest_deadline_is_backend_timeout(rest):
    state, url = rest
    state.delay = 1.0
    with RestBackend(url, version=1, timeout=0.2) as client, pytest.raises(BackendTimeout):
        client.predict(batch_of(1))
    assert len(state.calls) == 1


def test_rest_version_lookup_shares_the_predict_deadline(rest):
    state, url = rest
    state.delay = 0.3  # each answer takes 0.3 s: the prediction, then the status (for the version)
    with RestBackend(url, timeout=1.0) as client:
        assert client.predict(batch_of(1)).model_version == 2  # 0.6 s in all: in time
    state.calls = []
    with RestBackend(url, timeout=0.5) as client:
        started = time.monotonic()
        with pytest.raises(BackendTimeout):
            client.predict(batch_of(1))
        assert time.monotonic() - started < 0.5 + 0.15  # not 0.5 s more for the lookup
    assert [c[0] for c in state.calls] == ["POST", "GET"]


def test_rest_nothing_listening_is_unavailable():
    url = f"http://127.0.0.1:{free_port()}"
    with RestBackend(url, retries=1) as client, pytest.raises(BackendUnavailable) as info:
        client.status()
    assert str(info.value) == f"GET {url}/v1/models/fashion_mnist: connection refused"


def test_rest_rejects_bad_urls():
    with pytest.raises(ValueError, match="must start with http"):
        RestBackend("localhost:8501")


@pytest.mark.parametrize("n", [1, 3])
def test_rest_json_encoding_is_exact(n):
    from serving.backends.rest import encode_batch_json

    levels = batch_of(n)  # values k/255: the lookup-table fast path
    assert np.array_equal(np.asarray(json.loads(encode_batch_json(levels)), np.float32), levels)
    other = np.random.default_rng(n).random((n, 28, 28, 1)).astype(np.float32)  # general floats
    assert np.array_equal(np.asarray(json.loads(encode_batch_json(other)), np.float32), other)


def test_unknown_label_is_model_not_found(fake, rest):
    servicer, target = fake
    servicer.fail = [grpc.StatusCode.INVALID_ARGUMENT]
    servicer_details = "Unrecognized servable version label: nope"
    servicer.next_details = servicer_details
    with GrpcBackend(target, label="nope") as client, pytest.raises(ModelNotFound):
        client.predict(batch_of(1))
    state, url = rest
    state.script = [(400, {"error": servicer_details})]
    with RestBackend(url, label="nope") as client, pytest.raises(ModelNotFound) as info:
        client.predict(batch_of(1))
    assert str(info.value).endswith(f"HTTP 400: {servicer_details}")


# -- connect -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("address", "kind", "target"),
    [
        ("grpc://tfserving:8500", "grpc", "tfserving:8500"),
        ("grpc://[::1]:8500/", "grpc", "[::1]:8500"),
        ("http://tfserving:8501/", "http", "http://tfserving:8501"),
        ("https://models.example", "http", "https://models.example"),
        ("embedded:models/fashion_mnist", "embedded", "models/fashion_mnist"),
    ],
)
def test_addresses_are_parsed(address, kind, target):
    assert parse_address(address) == Address(kind, target)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        (
            "tfserving:8500",
            "'tfserving:8500': expected grpc://host:port, http://host:port or embedded:<path>",
        ),
        ("grpc://tfserving", "'grpc://tfserving': expected grpc://host:port"),
        ("http://", "'http://': expected http://host:port"),
        ("embedded:", "'embedded:': expected embedded:<path to the model base dir>"),
    ],
)
def test_a_bad_address_names_the_accepted_forms(address, message):
    with pytest.raises(BackendConfigError) as info:
        connect(address)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_connect_is_lazy_and_builds_the_named_backend():
    port = free_port()  # nothing listens there: building must not fail, the first call must
    grpc_backend = connect(f"grpc://127.0.0.1:{port}", version=3, timeout=1.0, retries=0)
    rest_backend = connect(f"http://127.0.0.1:{port}", label="canary", timeout=1.0, retries=0)
    try:
        assert isinstance(grpc_backend, GrpcBackend) and isinstance(grpc_backend, Backend)
        assert (grpc_backend.target, grpc_backend.version) == (f"127.0.0.1:{port}", 3)
        assert isinstance(rest_backend, RestBackend) and isinstance(rest_backend, Backend)
        assert rest_backend.label == "canary"
        for backend in (grpc_backend, rest_backend):
            with pytest.raises(BackendUnavailable):
                backend.predict(batch_of(1))
    finally:
        grpc_backend.close()
        rest_backend.close()


@pytest.mark.parametrize(
    ("address", "options", "message"),
    [
        ("grpc://127.0.0.1:1", {"version": 1, "label": "x"}, "pin either a version or a label"),
        ("grpc://127.0.0.1:1", {"timeout": 0}, "timeout must be > 0"),
        ("http://127.0.0.1:1", {"batch_max_size": 8}, "batch_max_size: only for an embedded:"),
        ("embedded:/nonexistent", {"label": "canary"}, "a version label needs a grpc://"),
    ],
)
def test_connect_rejects_options_that_do_not_fit(address, options, message):
    with pytest.raises(BackendConfigError, match=message):
        connect(address, **options)


# -- embedded ------------------------------------------------------------------------------------
@pytest.mark.slow  # loads the session's exported model in this process
def test_embedded_backend_serves_the_export_and_raises_backend_errors(exported_model, tmp_path):
    base = tmp_path / "fashion_mnist"
    shutil.copytree(exported_model, base)
    with connect(f"embedded:{base}", timeout=30.0, model_poll_seconds=0.2) as backend:
        assert isinstance(backend, EmbeddedBackend) and isinstance(backend, Backend)
        result = backend.predict(batch_of(3))
        assert result.model_version == 1
        assert result.probabilities.shape == (3, 10)
        np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-5)
        assert backend.status() == [VersionStatus(1, "AVAILABLE", "")]
        with pytest.raises(BackendInvalidRequest, match="expects shape"):
            backend.predict(np.zeros((1, 27, 28, 1), np.float32))
    with connect(f"embedded:{tmp_path / 'empty'}", timeout=2.0) as empty:
        assert empty.status() == []
        with pytest.raises(ModelNotFound, match="has no AVAILABLE version"):
            empty.predict(batch_of(1))
