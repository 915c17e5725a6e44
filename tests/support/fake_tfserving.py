"""Scriptable stand-ins for TF Serving (gRPC and REST) for unit tests of the clients.

Usage::

    with fake_grpc_server() as (servicer, target):
        servicer.fail = [grpc.StatusCode.UNAVAILABLE]     # answer the next call with this
        GrpcBackend(target).predict(batch)
    with fake_rest_server() as (state, url):
        state.script = [(404, {"error": "..."})]
        RestBackend(url).predict(batch)

Both answer :func:`fake_probabilities` of the input batch, so a test can check round trips.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np

from serving.backends import _protos

pb = _protos.load()


def fake_probabilities(batch: np.ndarray) -> np.ndarray:
    """Deterministic [N, 10] probabilities from the input: class = round(9 x mean brightness)."""
    means = batch.reshape(len(batch), -1).astype(np.float64).mean(axis=1)
    logits = -((np.arange(10)[None, :] - 9 * means[:, None]) ** 2) * 4
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


# --- gRPC ---------------------------------------------------------------------------------


class FakeTFServing(
    pb.prediction_service_pb2_grpc.PredictionServiceServicer,
    pb.model_service_pb2_grpc.ModelServiceServicer,
):
    """Scriptable Predict/GetModelStatus: ``fail`` is a list of status codes to answer first."""

    def __init__(self) -> None:
        self.fail: list[grpc.StatusCode] = []
        self.delay = 0.0
        self.requests: list = []
        self.use_float_val = False
        self.version = 7
        #: when set, answered instead of the computed probabilities (e.g. NaN)
        self.probabilities: np.ndarray | None = None

    #: when set, the details text of scripted failures (default "scripted <CODE>")
    next_details: str | None = None

    def _maybe_fail(self, context) -> None:
        if self.fail:
            code = self.fail.pop(0)
            context.abort(code, self.next_details or f"scripted {code.name}")
        if self.delay:
            time.sleep(self.delay)

    def Predict(self, request, context):
        self.requests.append(request)
        self._maybe_fail(context)
        tensor = request.inputs["images"]
        shape = [d.size for d in tensor.tensor_shape.dim]
        batch = np.frombuffer(tensor.tensor_content, dtype="<f4").reshape(shape)
        probs = fake_probabilities(batch) if self.probabilities is None else self.probabilities
        response = pb.predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = request.model_spec.signature_name
        out = response.outputs["probabilities"]
        out.dtype = pb.types_pb2.DT_FLOAT
        out.tensor_shape.dim.add(size=probs.shape[0])
        out.tensor_shape.dim.add(size=probs.shape[1])
        if self.use_float_val:
            out.float_val.extend(probs.ravel().tolist())
        else:
            out.tensor_content = probs.tobytes()
        return response

    def GetModelStatus(self, request, context):
        self.requests.append(request)
        self._maybe_fail(context)
        response = pb.get_model_status_pb2.GetModelStatusResponse()
        for version, state, code, message in [
            (3, "END", 0, ""),
            (9, "LOADING", 0, ""),
            (7, "AVAILABLE", 0, ""),
            (8, "END", 3, "Could not load: bad file"),
        ]:
            status = response.model_version_status.add()
            status.version = version
            status.state = type(status).State.Value(state)
            status.status.error_code = code
            status.status.error_message = message
        return response


@contextlib.contextmanager
def fake_grpc_server() -> Iterator[tuple[FakeTFServing, str]]:
    """A gRPC server with :class:`FakeTFServing` on a free port; yields (servicer, target)."""
    servicer = FakeTFServing()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    pb.model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


class FakeRest:
    """Behaviour of the in-test REST server; ``script`` is a list of (status, body) to answer first."""

    def __init__(self) -> None:
        self.script: list[tuple[int, object]] = []
        self.delay = 0.0
        self.calls: list[tuple[str, str, object]] = []
        self.versions = [(1, "AVAILABLE"), (2, "AVAILABLE"), (3, "LOADING")]
        self.row_format = False


def make_handler(state: FakeRest):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def _send(self, status: int, body: object) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _scripted(self) -> bool:
            if state.delay:
                time.sleep(state.delay)
            if state.script:
                self._send(*state.script.pop(0))
                return True
            return False

        def do_GET(self):
            state.calls.append(("GET", self.path, None))
            if self._scripted():
                return
            self._send(
                200,
                {
                    "model_version_status": [
                        {
                            "version": str(v),
                            "state": s,
                            "status": {"error_code": "OK", "error_message": ""},
                        }
                        for v, s in state.versions
                    ]
                },
            )

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.calls.append(("POST", self.path, body))
            if self._scripted():
                return
            probs = fake_probabilities(np.asarray(body["inputs"]["images"], np.float32))
            if state.row_format:
                self._send(200, {"predictions": [{"probabilities": p} for p in probs.tolist()]})
            else:
                self._send(200, {"outputs": {"probabilities": probs.tolist()}})

    return Handler


@contextlib.contextmanager
def fake_rest_server() -> Iterator[tuple[FakeRest, str]]:
    """A TF-Serving-like REST server on a free port; yields (state, base URL)."""
    state = FakeRest()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
