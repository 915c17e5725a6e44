"""The OpenAPI document against real gateways (gunicorn via ``loadtest.servers``).

- schemathesis generates requests from serving/gateway/openapi.json (valid and invalid ones)
  for a gateway on the embedded backend with the session's model and an API key: no 5xx, every
  status, content type, header and body as documented, schema-invalid requests refused, and no
  answer naming the model directory or showing a traceback or an exception class. A short run
  is in the default suite, a long one is marked slow.
- Every status the document lists is reached, on a real gateway in front of a scriptable gRPC
  stand-in (backend failures on demand), and each answer checked against the document.
- After all that traffic, the gateway's log (access log on, DEBUG) holds no key, no request
  body and no query string.
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from loadtest.servers import Server, http_ok, start_gateway
from tests.support.fake_tfserving import fake_grpc_server
from tests.support.leaks import leaks

ROOT = Path(__file__).resolve().parents[1]
DOC_PATH = ROOT / "serving" / "gateway" / "openapi.json"
DOC = json.loads(DOC_PATH.read_text())
PNG = (ROOT / "tests" / "support" / "images" / "bag.png").read_bytes()
PIXELS = [[0] * 28] * 28
KEY = "fuzz-test-key-0123456789abcdef"
AUTH = {"X-API-Key": KEY}
# Bodies and query strings the log must never show.
BODY_MARKER = "body-marker-4f1c2a"
QUERY_MARKER = "query-marker-9b7e3d"

# - A schema cannot say "a decodable image": schema-valid bytes that are no image are rightly
#   refused with 400, so "valid data must be accepted" does not hold for /v1/predict.
# - Schema-invalid requests are refused with the gateway's documented 4xx: 400, or 413 for too
#   many images, or 415 for a type it does not take.
CONFIG = schemathesis.Config.from_str(
    """
[checks.positive_data_acceptance]
enabled = false

[checks.negative_data_rejection]
expected-statuses = ["400", "413", "415"]
"""
)
schema = schemathesis.openapi.from_path(DOC_PATH, config=CONFIG)
# schemathesis has no serializer of its own for image/bmp: send those bodies as the bytes they are.
schemathesis.serializer.alias("image/bmp", "application/octet-stream")
FUZZ_SETTINGS = {
    "deadline": None,
    "suppress_health_check": list(HealthCheck),
    "derandomize": True,
}


@pytest.fixture(scope="module")
def model_base(exported_model, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("fuzz") / "fashion_mnist"
    shutil.copytree(exported_model / "1", base / "1")
    return base


@pytest.fixture(scope="module")
def gateway(model_base) -> Iterator[Server]:
    env = {
        "GATEWAY_API_KEYS": KEY,
        "GATEWAY_ACCESS_LOG": "true",
        "GATEWAY_LOG_LEVEL": "DEBUG",
        "GATEWAY_MAX_BATCH": "4",
        "GATEWAY_MAX_BODY_BYTES": "300000",
    }
    with start_gateway(f"embedded:{model_base}", env=env, workers=1, threads=4) as server:
        yield server


def _no_internals(model_base: Path):
    """A schemathesis check: the answer names no internals."""

    def no_internals(ctx, response, case) -> None:
        if case.path == "/openapi.json":
            return  # the document itself (it names its components like exception classes)
        found = leaks(response.text, [str(model_base), str(model_base.parent)])
        if found:
            raise AssertionError(f"{case.method} {case.path} answer shows {found}")

    return no_internals


def _send_and_check(case, gateway: Server, model_base: Path) -> None:
    case.call_and_validate(
        base_url=gateway.url, headers=AUTH, additional_checks=[_no_internals(model_base)]
    )


@schema.parametrize()
@settings(max_examples=6, **FUZZ_SETTINGS)
def test_fuzz(case, gateway, model_base):
    _send_and_check(case, gateway, model_base)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=300, **FUZZ_SETTINGS)
def test_fuzz_long(case, gateway, model_base):
    _send_and_check(case, gateway, model_base)


def test_the_log_holds_no_key_body_or_query(gateway):
    url = f"{gateway.url}/v1/predict?token={QUERY_MARKER}"
    body = json.dumps({"instances": [{"b64": BODY_MARKER}], "note": BODY_MARKER})
    for headers in (AUTH, {"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY + "-wrong"}):
        r = requests.post(
            url, data=body, headers={**headers, "Content-Type": "application/json"}, timeout=10
        )
        assert r.status_code in (400, 401), r.text
    r = requests.post(url, data=PNG + BODY_MARKER.encode(), headers=AUTH, timeout=10)
    assert r.status_code == 415
    log = gateway.output()
    assert '"POST /v1/predict" 400 ' in log and '"POST /v1/predict" 401 ' in log  # it logs
    for secret in (KEY, BODY_MARKER, QUERY_MARKER):
        assert secret not in log


# -- every documented status, from a real gateway ------------------------------------------------


@pytest.fixture(scope="module")
def stand_in() -> Iterator:
    with fake_grpc_server() as (servicer, target):
        yield servicer, target


@pytest.fixture(scope="module")
def scripted_gateway(stand_in) -> Iterator[Server]:
    """A gateway on the gRPC stand-in: keys required (metrics too), no retries, short deadlines."""
    _, target = stand_in
    env = {
        "GATEWAY_API_KEYS": KEY,
        "GATEWAY_API_KEYS_PROTECT_METRICS": "true",
        "GATEWAY_RETRIES": "0",
        "GATEWAY_TIMEOUT_SECONDS": "0.5",
        "GATEWAY_READY_CACHE_SECONDS": "0",
        "GATEWAY_MAX_BATCH": "2",
        "GATEWAY_MAX_BODY_BYTES": "100000",
        "GATEWAY_CLIENT_TIMEOUT_SECONDS": "1",
    }
    with start_gateway(f"grpc://{target}", env=env, workers=1, threads=4) as server:
        yield server


def _documented() -> set[tuple[str, str, str]]:
    out = {
        (path, method.upper(), status)
        for path, ops in DOC["paths"].items()
        for method, op in ops.items()
        for status in op["responses"]
    }
    # 500 is documented on every operation; a real gateway never gives one (in-process tests
    # make it happen with a failing fake backend, tests/test_gateway_openapi.py).
    return {entry for entry in out if entry[2] != "500"}


def _raw(url: str, data: bytes) -> bytes:
    """Send ``data`` on a connection, then nothing: all the gateway answers until it closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_every_documented_status_is_reached(scripted_gateway, stand_in):
    servicer, target = stand_in
    url = scripted_gateway.url

    def script(fail=(), delay=0.0):
        def setup():
            servicer.fail, servicer.delay = list(fail), delay

        return setup

    post = ("/v1/predict", "POST")
    png = {"body": PNG, "media_type": "image/png"}
    scenarios = [
        (*post, png, AUTH, None),
        (*post, {"body": {"instances": [PIXELS]}, "media_type": "application/json"}, AUTH, None),
        (*post, {"body": b"not an image", "media_type": "image/png"}, AUTH, None),
        (*post, png, {}, None),
        (
            *post,
            {"body": {"instances": [PIXELS] * 3}, "media_type": "application/json"},
            AUTH,
            None,
        ),
        (*post, {"body": PNG * 200, "media_type": "image/png"}, AUTH, None),
        (*post, png, AUTH, script([grpc.StatusCode.INTERNAL])),
        (*post, png, AUTH, script([grpc.StatusCode.UNAVAILABLE])),
        (*post, png, AUTH, script([grpc.StatusCode.NOT_FOUND])),
        (*post, png, AUTH, script(delay=1.5)),
        ("/v1/models", "GET", {}, AUTH, None),
        ("/v1/models", "GET", {}, {}, None),
        ("/v1/models", "GET", {}, AUTH, script([grpc.StatusCode.INTERNAL])),
        ("/v1/models", "GET", {}, AUTH, script([grpc.StatusCode.UNAVAILABLE])),
        ("/v1/models", "GET", {}, AUTH, script(delay=1.5)),
        ("/healthz", "GET", {}, {}, None),
        ("/readyz", "GET", {}, {}, None),
        ("/readyz", "GET", {}, {}, script([grpc.StatusCode.UNAVAILABLE])),
        ("/metrics", "GET", {}, AUTH, None),
        ("/metrics", "GET", {}, {}, None),
        ("/openapi.json", "GET", {}, {}, None),
    ]
    seen = set()
    checks = [
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]
    for path, method, body, headers, setup in scenarios:
        script()()
        if setup is not None:
            setup()
        case = schema[path][method].Case(headers=headers, **body)
        response = case.call(base_url=url)
        case.validate_response(response, checks=checks, headers=headers)
        if path != "/openapi.json":
            assert leaks(response.text, [target]) == [], response.text
        seen.add((path, method, str(response.status_code)))
    script()()
    # The 415 is a Content-Type the document does not list, so it is sent by hand.
    r = requests.post(
        f"{url}/v1/predict", data=b"a,b", headers={**AUTH, "Content-Type": "text/csv"}, timeout=10
    )
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    seen.add(("/v1/predict", "POST", "415"))
    assert seen == _documented()

    # The path-independent answers of components.responses.
    r = requests.get(f"{url}/nowhere", headers=AUTH, timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    r = requests.post(f"{url}/healthz", timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")
    assert set(r.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    r = requests.get(f"{url}/v1/models", timeout=10)
    assert (r.status_code, r.headers["WWW-Authenticate"]) == (401, 'Bearer realm="convserve"')
    out = _raw(url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")  # then nothing: too slow
    assert out.startswith(b"HTTP/1.1 408 "), out
    assert json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    out = _raw(url, b"GET /v1/models HTTP/1.1\r\nX: " + b"a" * 70_000)
    assert out.startswith(b"HTTP/1.1 431 "), out[:200]
    assert json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "headers_too_large"
    assert http_ok(f"{url}/healthz")
