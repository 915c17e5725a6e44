"""Every error path of the gateway that a client can reach, with real backends in this process:
no answer names the model directory, a backend's host:port, a traceback or an exception class.

Backends: the embedded one over a copy of the session's model plus a corrupt version 2 (and
pinned to a version that does not exist, and over an empty directory); gRPC and REST ones at a
port nobody listens on, at a socket that never answers, and (REST) at a server whose error
texts are full of paths and tracebacks. Inputs: every kind of bad request.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loadtest.servers import free_port
from serving.gateway import create_app
from serving.gateway.errors import VERSION_FAILED
from tests.support.gateway import FakeBackend
from tests.support.leaks import leaks

ROOT = Path(__file__).resolve().parents[1]
PNG = (ROOT / "tests" / "support" / "images" / "bag.png").read_bytes()
PIXELS = [[0] * 28] * 28
# What a REST backend in trouble says: the gateway must keep it to its log.
NOISY_ERROR = (
    'Traceback (most recent call last):\n  File "/srv/secret/app.py", line 7\n'
    "ValueError: cannot open /srv/secret/models/fashion_mnist/3 on tfserving-0.internal:8501"
)


@pytest.fixture(scope="module")
def model_base(exported_model, tmp_path_factory) -> Path:
    """Version 1 of the session's model (a corrupt version 2 is added by a test)."""
    base = tmp_path_factory.mktemp("leaks") / "fashion_mnist"
    shutil.copytree(exported_model / "1", base / "1")
    return base


def _publish_corrupt(base: Path, version: int) -> None:
    """A version folder whose saved_model.pb is not one, published with a rename."""
    tmp = base / f".tmp-{version}"
    tmp.mkdir()
    (tmp / "saved_model.pb").write_bytes(b"\x08\x01 not a SavedModel")
    tmp.rename(base / str(version))


def _wait_for_states(client, want: dict[int, str]) -> list[dict]:
    deadline = time.monotonic() + 60
    while True:
        versions = client.get("/v1/models").get_json()["versions"]
        if {v["version"]: v["state"] for v in versions} == want:
            return versions
        assert time.monotonic() < deadline, versions
        time.sleep(0.2)


@contextlib.contextmanager
def _black_hole() -> Iterator[str]:
    """host:port of a socket that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@contextlib.contextmanager
def _noisy_rest() -> Iterator[str]:
    """A REST "TF Serving" whose every answer is an error full of internals."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            status = 500 if self.command == "POST" else 404
            body = json.dumps({"error": NOISY_ERROR}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _bad_requests() -> list[tuple[str, str, dict]]:
    """(method, path, test-client kwargs) of every kind of bad request."""
    multipart = {"content_type": "multipart/form-data"}
    return [
        ("POST", "/v1/predict", {"data": b"not an image", "content_type": "image/png"}),
        ("POST", "/v1/predict", {"data": PNG[:40], "content_type": "image/png"}),
        ("POST", "/v1/predict", {"data": b"", "content_type": "image/jpeg"}),
        ("POST", "/v1/predict", {"data": b"GIF89a" + b"\0" * 20, "content_type": "image/gif"}),
        ("POST", "/v1/predict", {"data": b"{", "content_type": "application/json"}),
        ("POST", "/v1/predict", {"data": b"\xff\xfe", "content_type": "application/json"}),
        ("POST", "/v1/predict", {"data": b"[" * 100_000, "content_type": "application/json"}),
        ("POST", "/v1/predict", {"json": {"instances": [{"b64": "@@@"}]}}),
        ("POST", "/v1/predict", {"json": {"instances": [{"b64": "aGk="}]}}),
        ("POST", "/v1/predict", {"json": {"instances": [[[300] * 28] * 28]}}),
        ("POST", "/v1/predict", {"json": {"instances": [[[0] * 3] * 28]}}),
        ("POST", "/v1/predict", {"json": {"instances": [[["x"] * 28] * 28]}}),
        ("POST", "/v1/predict", {"json": {"instances": [7]}}),
        ("POST", "/v1/predict", {"json": {"instances": []}}),
        ("POST", "/v1/predict", {"json": {"instances": [PIXELS] * 5}}),
        ("POST", "/v1/predict", {"json": [1, 2]}),
        ("POST", "/v1/predict", {"data": PNG * 400, "content_type": "image/png"}),
        ("POST", "/v1/predict", {"data": {"f": [(io.BytesIO(b"junk"), "a.png")]}, **multipart}),
        ("POST", "/v1/predict", {"data": {}, **multipart}),
        ("POST", "/v1/predict", {"data": b"x", "content_type": "text/csv"}),
        ("POST", "/v1/predict", {"data": PNG}),
        ("GET", "/v1/predict", {}),
        ("DELETE", "/v1/models", {}),
        ("GET", "/nowhere/../etc/passwd", {}),
        ("GET", "/v1/models/%00", {}),
    ]


def _every_path(client, requests: list[tuple[str, str, dict]]) -> list:
    good = [
        ("POST", "/v1/predict", {"data": PNG, "content_type": "image/png"}),
        ("POST", "/v1/predict", {"json": {"instances": [{"b64": base64.b64encode(PNG).decode()}]}}),
        ("GET", "/v1/models", {}),
        ("GET", "/readyz", {}),
        ("GET", "/healthz", {}),
    ]
    return [client.open(path, method=method, **kw) for method, path, kw in good + requests]


def _assert_clean(responses, secrets: list[str]) -> None:
    for resp in responses:
        text = resp.get_data(as_text=True) + "\n" + str(resp.headers)
        assert leaks(text, secrets) == [], (resp.status_code, text)
        if resp.status_code >= 400:
            body = resp.get_json()
            assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), text


def test_embedded_backend_with_a_corrupt_version(model_base):
    app = create_app(
        {"backend": f"embedded:{model_base}", "model_poll_seconds": 0.2, "max_batch": 4}
    )
    client = app.test_client()
    try:
        _wait_for_states(client, {1: "AVAILABLE"})
        _publish_corrupt(model_base, 2)
        versions = _wait_for_states(client, {2: "END", 1: "AVAILABLE"})
        # The backend itself has the details (for its log), the client a fixed text.
        raw = {s.version: s.error for s in app.extensions["gateway"].backend.status()}
        assert str(model_base) in raw[2]
        assert versions == [
            {"version": 2, "state": "END", "error": VERSION_FAILED},
            {"version": 1, "state": "AVAILABLE", "error": ""},
        ]
        responses = _every_path(client, _bad_requests())
        assert responses[0].status_code == 200  # version 1 keeps serving
        assert responses[0].get_json()["model_version"] == 1
        _assert_clean(responses, [str(model_base), str(model_base.parent.parent)])
    finally:
        app.extensions["gateway"].close()


@pytest.mark.parametrize("where", ["pinned to a missing version", "an empty directory"])
def test_embedded_backend_without_the_model(exported_model, tmp_path, where):
    if where == "an empty directory":
        base, overrides = tmp_path / "fashion_mnist", {}
        base.mkdir()
    else:
        base, overrides = exported_model, {"model_version": 9}
    app = create_app({"backend": f"embedded:{base}", "model_poll_seconds": 0.2, **overrides})
    try:
        responses = _every_path(app.test_client(), [])
        assert [r.status_code for r in responses] == [503, 503, 200, 503, 200]
        _assert_clean(responses, [str(base), str(base.parent)])
    finally:
        app.extensions["gateway"].close()


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_remote_backends_down_hung_and_noisy(scheme):
    port = free_port()
    # The black hole needs a short timeout to be quick; the others answer at once, and get a
    # long one so that a loaded machine cannot turn their answer into a timeout.
    cases = [(f"127.0.0.1:{port}", [503, 503, 503, 503, 200], 10.0)]
    with _black_hole() as hole, _noisy_rest() as noisy:
        cases.append((hole, [504, 504, 504, 503, 200], 0.5))
        if scheme == "http":
            cases.append((noisy, [502, 502, 503, 503, 200], 10.0))
        for target, statuses, timeout in cases:
            app = create_app(
                {"backend": f"{scheme}://{target}", "timeout_seconds": timeout, "retries": 0}
            )
            try:
                responses = _every_path(app.test_client(), _bad_requests()[:3])
                assert [r.status_code for r in responses[:5]] == statuses, target
                secrets = [target, target.split(":")[1], "/srv/secret", "tfserving-0.internal"]
                _assert_clean(responses, secrets)
            finally:
                app.extensions["gateway"].close()


def test_unexpected_errors_say_nothing_of_themselves():
    backend = FakeBackend()
    backend.error = RuntimeError(NOISY_ERROR)
    client = create_app({"backend": "grpc://backend.invalid:8500"}, backend=backend).test_client()
    responses = _every_path(client, [])
    assert [r.status_code for r in responses[:3]] == [500, 500, 500]
    assert responses[0].get_json()["error"]["message"] == "internal server error"
    _assert_clean(responses, ["/srv/secret", "tfserving-0.internal", "backend.invalid"])
