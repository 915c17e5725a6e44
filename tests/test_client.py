"""client: GatewayClient against the real gateway (serving.gateway.create_app, served over HTTP in
a thread) in front of a scripted TF Serving stand-in; TFServingClient against the stand-ins; the
CLI as a subprocess. End-to-end runs against the real model server are in test_client_e2e.py."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from PIL import Image

from client import (
    ClientConnectionError,
    ClientInputError,
    ClientTimeout,
    GatewayClient,
    Prediction,
    ServerError,
    TFServingClient,
)
from client.api import API_KEY_ENV, _client_errors
from client.cli import EXIT_AUTH, EXIT_INPUT, EXIT_SERVER, EXIT_UNREACHABLE, EXIT_USAGE
from loadtest.servers import free_port
from serving.backends import (
    BackendBadResponse,
    BackendError,
    BackendInvalidRequest,
    ModelNotFound,
)
from serving.contract import CLASS_NAMES
from serving.gateway.errors import to_api_error
from serving.preprocess import array_to_input, decode_image, to_batch
from tests.support.fake_tfserving import fake_grpc_server, fake_probabilities, fake_rest_server

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "tests" / "support" / "images"
BOOT, BAG, TSHIRT = (str(IMAGES / f"{n}.png") for n in ("ankle_boot", "bag", "tshirt"))


def expected(*inputs) -> list[Prediction]:
    """What the stand-in answers for these inputs (gateway rounding: 6 decimals)."""
    tensors = [
        array_to_input(x) if isinstance(x, np.ndarray) else decode_image(Path(x).read_bytes())
        for x in inputs
    ]
    return [Prediction.from_probabilities(r, 7) for r in fake_probabilities(to_batch(tensors))]


def assert_predictions(got: list[Prediction], want: list[Prediction]) -> None:
    assert [(p.label, p.class_id, p.model_version) for p in got] == [
        (p.label, p.class_id, p.model_version) for p in want
    ]
    for g, w in zip(got, want, strict=True):
        assert g.label == CLASS_NAMES[g.class_id]
        assert g.confidence == pytest.approx(w.confidence, abs=1e-6)
        assert g.probabilities == pytest.approx(w.probabilities, abs=1e-6)


@pytest.fixture(scope="module")
def stack():
    """(servicer, gateway URL): the real gateway app over HTTP, backed by the gRPC stand-in."""
    from werkzeug.serving import make_server

    from serving.gateway import create_app

    with fake_grpc_server() as (servicer, target):
        app = create_app({"backend": f"grpc://{target}", "timeout_seconds": 3.0})
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield servicer, f"http://127.0.0.1:{server.server_port}", target
        finally:
            server.shutdown()


API_KEY = "client-test-key-0123456789"


@pytest.fixture(scope="module")
def keyed_url(stack):
    """URL of a second real gateway app on the same stand-in, with an API key required."""
    from werkzeug.serving import make_server

    from serving.gateway import create_app

    app = create_app({"backend": f"grpc://{stack[2]}", "api_keys": API_KEY})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@pytest.fixture
def gateway(stack):
    """(servicer, gateway URL), with the stand-in's script reset."""
    servicer, url, _ = stack
    servicer.fail, servicer.delay, servicer.requests = [], 0.0, []
    servicer.next_details = None
    return servicer, url


@pytest.fixture
def grpc_fake(stack, gateway):
    """(servicer, gRPC target) of the same stand-in, for TFServingClient."""
    return stack[0], stack[2]


# --- GatewayClient ------------------------------------------------------------------------


def test_gateway_single_file(gateway):
    servicer, url = gateway
    with GatewayClient(url) as client:
        preds = client.predict(BOOT)
    assert_predictions(preds, expected(BOOT))
    assert len(servicer.requests) == 1


def test_gateway_several_files_bytes_and_paths_in_order(gateway):
    _, url = gateway
    with GatewayClient(url) as client:
        preds = client.predict([BAG, Path(BOOT), Path(TSHIRT).read_bytes()])
    assert_predictions(preds, expected(BAG, BOOT, TSHIRT))


def test_gateway_arrays_and_mixed_inputs(gateway):
    _, url = gateway
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    b = np.full((28, 28), 200.0)
    with GatewayClient(url) as client:
        assert_predictions(client.predict(a), expected(a))
        assert_predictions(client.predict(np.stack([a, b])), expected(a, b))
        assert_predictions(client.predict([a, BOOT, b]), expected(a, BOOT, b))


def test_gateway_models_and_ready(gateway):
    _, url = gateway
    with GatewayClient(url) as client:
        models = client.models()
        assert models["model_name"] == "fashion_mnist"
        assert models["class_names"] == list(CLASS_NAMES)
        assert client.ready() is True


def test_gateway_rejects_bad_image_with_its_code(gateway):
    servicer, url = gateway
    corrupt = b"\x89PNG\r\n\x1a\n" + b"\0" * 40
    with GatewayClient(url) as client, pytest.raises(ServerError) as info:
        client.predict(corrupt)
    err = info.value
    assert (err.status, err.code) == (400, "invalid_image")
    assert (
        err.message
        == "not a supported image (PNG, JPEG, WebP, GIF, BMP): cannot identify image data"
    )
    assert err.is_input_error
    assert servicer.requests == []


def test_gateway_rejects_huge_image_with_413(gateway):
    from tests.test_preprocess import png_header_only

    _, url = gateway
    with GatewayClient(url) as client, pytest.raises(ServerError) as info:
        client.predict(png_header_only(30000, 30000))
    assert (info.value.status, info.value.code) == (413, "image_too_large")
    assert info.value.message.startswith("image is 30000x30000 = 900000000 pixels")


def test_gateway_backend_down_is_503(gateway):
    servicer, url = gateway
    servicer.fail = [grpc.StatusCode.UNAVAILABLE] * 10
    with GatewayClient(url) as client, pytest.raises(ServerError) as info:
        client.predict(BOOT)
    assert (info.value.status, info.value.code) == (503, "backend_unavailable")
    assert not info.value.is_input_error


def test_gateway_client_timeout(gateway):
    servicer, url = gateway
    servicer.delay = 1.5
    with GatewayClient(url, timeout=0.3) as client, pytest.raises(ClientTimeout) as info:
        client.predict(BOOT)
    assert str(info.value) == f"{url} did not answer within 0.3 s"


def test_gateway_unreachable():
    url = f"http://127.0.0.1:{free_port()}"
    with GatewayClient(url) as client, pytest.raises(ClientConnectionError) as info:
        client.predict(BOOT)
    assert str(info.value) == f"cannot connect to the gateway at {url}"


def test_local_input_errors_send_nothing(gateway, tmp_path):
    servicer, url = gateway
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with GatewayClient(url) as client:
        with pytest.raises(ClientInputError, match=r"missing\.png: no such file$"):
            client.predict(str(tmp_path / "missing.png"))
        with pytest.raises(ClientInputError, match=r"notes\.txt: not a supported image"):
            client.predict([BOOT, text])
        with pytest.raises(ClientInputError, match="no inputs given"):
            client.predict([])
        with pytest.raises(ClientInputError, match=r"must be 28x28, got \(27, 28\)"):
            client.predict([np.zeros((27, 28))])
    assert servicer.requests == []


def test_gateway_url_must_be_http():
    with pytest.raises(ValueError, match="must start with http"):
        GatewayClient("localhost:8080")


# --- TFServingClient against the stand-ins -------------------------------------------------


def test_tfserving_client_grpc(grpc_fake):
    servicer, target = grpc_fake
    with TFServingClient(target, "grpc") as client:
        preds = client.predict([BOOT, np.full((28, 28), 90, np.uint8)])
    want = expected(BOOT, np.full((28, 28), 90, np.uint8))
    assert_predictions(preds, want)
    # the exact tensor that preprocessing produced went over the wire
    sent = servicer.requests[0].inputs["images"].tensor_content
    assert sent == client.preprocess([BOOT, np.full((28, 28), 90, np.uint8)]).tobytes()


@pytest.fixture(scope="module")
def rest_fake():
    with fake_rest_server() as server:
        yield server


def test_tfserving_client_rest(rest_fake):
    state, url = rest_fake
    state.script, state.calls = [], []
    with TFServingClient(url, "rest") as client:
        preds = client.predict([TSHIRT])
    assert [p.label for p in preds] == [p.label for p in expected(TSHIRT)]
    assert preds[0].model_version == 2
    state.script = [(404, {"error": "Servable not found"})]
    with TFServingClient(url, "rest") as client, pytest.raises(ServerError) as info:
        client.predict([TSHIRT])
    assert (info.value.status, info.value.code) == (503, "model_not_ready")


def test_tfserving_client_errors(tmp_path):
    target = f"127.0.0.1:{free_port()}"
    with TFServingClient(target, "grpc", timeout=2.0, retries=0) as client:
        with pytest.raises(ClientConnectionError):
            client.predict(BOOT)
        with pytest.raises(ClientInputError, match=r"input 0: pixel values must be within 0-255"):
            client.predict(np.full((28, 28), 300))
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
        with pytest.raises(ClientInputError, match=r"bad\.png: not a supported image"):
            client.predict(bad)
    with pytest.raises(ValueError, match="protocol must be"):
        TFServingClient(target, "http")


@pytest.mark.parametrize(
    "error",
    [BackendInvalidRequest, ModelNotFound, BackendBadResponse, BackendError],
)
def test_direct_server_errors_carry_the_status_the_gateway_would_answer(error):
    exc = error("scripted")
    with pytest.raises(ServerError) as info, _client_errors():
        raise exc
    gateway = to_api_error(exc)
    assert (info.value.status, info.value.code) == (gateway.status, gateway.code)
    assert info.value.message == "scripted"


# --- CLI ------------------------------------------------------------------------------------


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert text in proc.stderr


def test_cli_table_via_gateway(gateway):
    _, url = gateway
    proc = run_cli("predict", BOOT, BAG, "--gateway", url)
    assert proc.returncode == 0, proc.stderr
    want = expected(BOOT, BAG)
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["file", "label", "confidence"]
    assert len(lines) == 3
    for line, path, p in zip(lines[1:], (BOOT, BAG), want, strict=True):
        assert line.startswith(path)
        assert p.label in line and line.endswith(f"{p.confidence:10.4f}")


def test_cli_json_via_gateway(gateway):
    _, url = gateway
    proc = run_cli("predict", TSHIRT, BOOT, "--gateway", url, "--json", "--batch-size", "1")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["target"] == url
    assert [p["file"] for p in doc["predictions"]] == [TSHIRT, BOOT]
    for p, w in zip(doc["predictions"], expected(TSHIRT, BOOT), strict=True):
        assert set(p) == {
            "file",
            "label",
            "class_id",
            "confidence",
            "probabilities",
            "model_version",
        }
        assert (p["label"], p["class_id"], p["model_version"]) == (w.label, w.class_id, 7)
        assert len(p["probabilities"]) == 10


def test_cli_gateway_down():
    url = f"http://127.0.0.1:{free_port()}"
    proc = run_cli("predict", BOOT, "--gateway", url)
    assert_one_line_error(proc, EXIT_UNREACHABLE, f"cannot connect to the gateway at {url}")


def test_cli_grpc_server_down():
    proc = run_cli("predict", BOOT, "--grpc", f"127.0.0.1:{free_port()}", "--timeout", "3")
    assert_one_line_error(proc, EXIT_UNREACHABLE, "Connection refused")


def test_cli_missing_file_and_non_image(tmp_path):
    proc = run_cli("predict", str(tmp_path / "nope.png"), "--grpc", "127.0.0.1:1")
    assert_one_line_error(proc, EXIT_INPUT, "nope.png: no such file")
    text = tmp_path / "a.txt"
    text.write_text("not an image")
    proc = run_cli("predict", str(text), "--rest", "http://127.0.0.1:1")
    assert_one_line_error(
        proc, EXIT_INPUT, "a.txt: not a supported image (PNG, JPEG, WebP, GIF, BMP)"
    )


def test_cli_server_rejects_input(gateway, tmp_path):
    _, url = gateway
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    proc = run_cli("predict", str(corrupt), "--gateway", url)
    assert_one_line_error(
        proc, EXIT_INPUT, f"error: {url}: HTTP 400 invalid_image: not a supported image"
    )


def test_cli_server_error(gateway):
    servicer, url = gateway
    servicer.fail = [grpc.StatusCode.INTERNAL]
    proc = run_cli("predict", BOOT, "--gateway", url)
    assert_one_line_error(proc, EXIT_SERVER, "HTTP 502 backend_error")


def test_cli_usage_errors():
    proc = run_cli("predict")
    assert proc.returncode == EXIT_USAGE and "usage:" in proc.stderr
    proc = run_cli("predict", BOOT, "--grpc", "a:1", "--rest", "http://b:2")
    assert proc.returncode == EXIT_USAGE and "not allowed with argument" in proc.stderr
    proc = run_cli("predict", BOOT, "--model-version", "3")
    assert_one_line_error(proc, EXIT_USAGE, "--model-version/--model-label need --grpc or --rest")
    for bad in ("nan", "inf", "0", "-1"):
        proc = run_cli("predict", BOOT, "--timeout", bad)
        assert_one_line_error(
            proc,
            EXIT_USAGE,
            f"argument --timeout: expected a finite number > 0, got {float(bad)!r}",
        )
    proc = run_cli("predict", BOOT, "--batch-size", "0")
    assert_one_line_error(
        proc, EXIT_USAGE, "argument --batch-size: expected an integer >= 1, got 0"
    )


def test_cli_help_lists_exit_codes():
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "3 input error" in proc.stdout and "4 server unreachable/timeout" in proc.stdout


def test_gateway_client_sends_each_form(gateway, monkeypatch):
    """The wire format: raw body for one image, multipart for several, JSON for arrays."""
    _, url = gateway
    seen: list[tuple[str, bytes]] = []
    original = requests.Session.request

    def spy(self, method, u, **kwargs):
        response = original(self, method, u, **kwargs)
        seen.append((response.request.headers.get("Content-Type", ""), response.request.body))
        return response

    monkeypatch.setattr(requests.Session, "request", spy)
    with GatewayClient(url) as client:
        client.predict(BOOT)
        client.predict([BOOT, BAG])
        client.predict(np.zeros((28, 28), np.uint8))
    (single_type, single_body), (multi_type, _), (json_type, json_body) = seen
    assert single_type == "image/png" and single_body == Path(BOOT).read_bytes()
    assert multi_type.startswith("multipart/form-data; boundary=")
    assert json_type == "application/json"
    assert json.loads(json_body) == {"instances": [[[0] * 28] * 28]}


def test_jpeg_bytes_are_sent_as_jpeg(gateway):
    _, url = gateway
    buf = io.BytesIO()
    Image.open(BOOT).convert("RGB").save(buf, "JPEG", quality=90)
    sent: list[str] = []
    with GatewayClient(url) as client:
        # What went over the wire: the gateway decodes by content, so only the request shows
        # whether the client declared the JPEG as a JPEG.
        client._session.hooks["response"].append(
            lambda resp, **_: sent.append(resp.request.headers.get("Content-Type"))
        )
        [pred] = client.predict(buf.getvalue())
    assert sent == ["image/jpeg"]
    assert isinstance(pred, Prediction) and 0 <= pred.class_id < 10


# --- API keys ------------------------------------------------------------------------------


def test_gateway_client_sends_its_api_key(gateway, keyed_url):
    with GatewayClient(keyed_url, api_key=API_KEY) as client:
        assert_predictions(client.predict(BOOT), expected(BOOT))
        assert client.models()["model_name"] == "fashion_mnist"
        assert API_KEY not in repr(client)
    with GatewayClient(keyed_url) as client, pytest.raises(ServerError) as info:
        client.predict(BOOT)
    assert (info.value.status, info.value.code) == (401, "unauthorized")


def test_cli_api_key_from_the_environment_or_the_option(gateway, keyed_url):
    proc = run_cli("predict", BOOT, "--gateway", keyed_url, env={API_KEY_ENV: API_KEY})
    assert proc.returncode == 0, proc.stderr
    assert expected(BOOT)[0].label in proc.stdout
    proc = run_cli("predict", BOOT, "--gateway", keyed_url, "--api-key", API_KEY, "--json")
    assert proc.returncode == 0, proc.stderr


def test_cli_refused_key_is_exit_6(gateway, keyed_url):
    proc = run_cli("predict", BOOT, "--gateway", keyed_url)
    assert_one_line_error(
        proc, EXIT_AUTH, f"error: {keyed_url}: HTTP 401 unauthorized: an API key is required"
    )
    proc = run_cli("predict", BOOT, "--gateway", keyed_url, env={API_KEY_ENV: API_KEY + "x"})
    assert_one_line_error(
        proc, EXIT_AUTH, f"error: {keyed_url}: HTTP 401 unauthorized: the API key is not valid"
    )
    assert API_KEY not in proc.stderr


def test_cli_api_key_is_for_the_gateway_only():
    proc = run_cli("predict", BOOT, "--grpc", "127.0.0.1:1", "--api-key", API_KEY)
    assert_one_line_error(proc, EXIT_USAGE, "--api-key is for the gateway")
