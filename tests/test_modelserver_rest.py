"""In-process tests of the model server's front ends: connection handling of the REST server,
the batching queue's errors (full queue, ``--rest_api_timeout_in_ms``) and tensor limits."""

from __future__ import annotations

import socket
import threading
import time

import grpc
import numpy as np
import pytest
import requests

from serving.contract import MODEL_NAME
from serving.modelserver.config import BatchingSettings, single_model_config
from serving.modelserver.core import ServerCore
from serving.modelserver.grpc_service import create_grpc_server
from serving.modelserver.rest import RestServer
from tests.support.modelserver import model_base_for_tests

pytestmark = pytest.mark.slow

PREDICT = f"/v1/models/{MODEL_NAME}:predict"
# max 2 rows per batch and 1 queued batch: 3 rows fill the queue at once; a lone request waits
# 0.5 s for company, longer than the REST timeout of 0.1 s
BATCHING = BatchingSettings(
    max_batch_size=2, batch_timeout_micros=500_000, max_enqueued_batches=1, num_batch_threads=1
)


@pytest.fixture(scope="module")
def core(request):
    base = model_base_for_tests(request)
    core = ServerCore(
        single_model_config(MODEL_NAME, str(base)), batching=BATCHING, enable_warmup=False
    )
    core.start()
    yield core
    core.close()


@pytest.fixture(scope="module")
def rest(core):
    server = RestServer(("127.0.0.1", 0), core, timeout_s=0.1)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.drain(5)


@pytest.fixture(scope="module")
def channel(core):
    server, port = create_grpc_server(core, "127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    server.stop(0)


def images(n: int) -> list:
    return np.zeros((n, 28, 28, 1), np.float32).tolist()


def raw_exchange(url: str, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send ``payload`` on one connection; everything the server answers until it closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                return b"".join(chunks)
            chunks.append(data)
    raise AssertionError(f"connection not closed; got {b''.join(chunks)!r}")


SMUGGLED = f"GET /v1/models/{MODEL_NAME} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def test_oversized_body_closes_the_connection(rest):
    head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n"
    out = raw_exchange(rest, head.encode() + SMUGGLED)
    assert out.count(b"HTTP/1.1 ") == 1, out
    assert out.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in out
    assert b"exceeds the limit" in out


@pytest.mark.parametrize("header", ["Content-Length: 48", "Transfer-Encoding: chunked"])
def test_get_with_a_body_closes_the_connection(rest, header):
    body = b"30\r\n" + SMUGGLED + b"\r\n0\r\n\r\n" if "chunked" in header else SMUGGLED
    head = f"GET /v1/models/{MODEL_NAME} HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n"
    out = raw_exchange(rest, head.encode() + body)
    assert out.count(b"HTTP/1.1 ") == 1, out
    assert out.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in out


def test_keep_alive_still_works(rest):
    with requests.Session() as s:
        for _ in range(3):
            assert s.get(f"{rest}/v1/models/{MODEL_NAME}", timeout=10).status_code == 200


@pytest.mark.parametrize("method", ["PATCH", "OPTIONS", "HEAD"])
def test_methods_without_a_handler_answer_json(rest, method):
    r = requests.request(method, f"{rest}/v1/models/{MODEL_NAME}", timeout=10)
    assert r.status_code == 405
    assert r.headers["Content-Type"] == "application/json"
    if method != "HEAD":
        assert r.json() == {"error": f"Method not allowed: {method} /v1/models/{MODEL_NAME}"}


def test_full_batching_queue_is_unavailable_503(rest):
    r = requests.post(rest + PREDICT, json={"instances": images(3)}, timeout=10)
    assert r.status_code == 503, r.text
    assert r.json() == {
        "error": "The batch scheduling queue to which this task was submitted is full"
    }


def test_full_batching_queue_is_grpc_unavailable(channel):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((3, 28, 28, 1), np.float32)))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "batch scheduling queue" in err.value.details()


def test_rest_api_timeout_bounds_the_wait_in_the_batching_queue(rest):
    started = time.monotonic()
    r = requests.post(rest + PREDICT, json={"instances": images(1)}, timeout=10)
    assert r.status_code == 504, r.text
    assert r.json()["error"].startswith("Deadline Exceeded")
    assert time.monotonic() - started < 0.45  # did not wait for the 0.5 s batch timeout


def test_grpc_one_value_fill_of_a_huge_shape_is_invalid_argument(channel):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in (3000000, 28, 28, 1)]
    )
    request.inputs["images"].CopyFrom(
        tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=[0.5])
    )
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than the limit of 67108864" in err.value.details()
