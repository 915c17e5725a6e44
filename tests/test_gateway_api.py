"""The gateway's HTTP API in-process: Flask test client, a scriptable fake backend.

Every input form, every error code with its exact body, request ids, readiness caching,
metrics (and ``promtool check metrics``), and the OpenAPI document checked against the
responses the app really sends.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from serving.backends import VersionStatus
from serving.backends.errors import (
    BackendError,
    BackendInvalidRequest,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
)
from serving.contract import CLASS_NAMES
from serving.gateway import create_app
from serving.gateway.config import GatewayConfig
from serving.gateway.errors import BACKEND_MESSAGES, VERSION_FAILED
from serving.preprocess import ImageTooLarge, InvalidImage, array_to_input, decode_image
from tests.support.ci import missing
from tests.support.gateway import FakeBackend

IMAGES = os.path.join(os.path.dirname(__file__), "support", "images")
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _png(name: str) -> bytes:
    with open(os.path.join(IMAGES, f"{name}.png"), "rb") as f:
        return f.read()


def _config(**overrides) -> GatewayConfig:
    # Explicit config (not the environment), so the tests do not depend on GATEWAY_* vars.
    base = {"backend": "grpc://backend.invalid:8500", "ready_cache_seconds": 0.0}
    return GatewayConfig(**{**base, **overrides})


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(version=3)


@pytest.fixture
def app(backend):
    return create_app(_config(max_batch=4, max_body_bytes=200_000), backend=backend)


@pytest.fixture
def client(app):
    return app.test_client()


def expected_predictions(batch: np.ndarray) -> list[dict]:
    """What the gateway must answer for ``batch`` with the fake backend (computed independently)."""
    probs = FakeBackend.expected(batch).astype(np.float64)
    out = []
    for row in probs:
        cid = int(np.argmax(row))
        rounded = [round(float(p), 6) for p in row]
        out.append(
            {
                "class_id": cid,
                "label": CLASS_NAMES[cid],
                "confidence": rounded[cid],
                "probabilities": rounded,
            }
        )
    return out


def _body(model_version: int, batch: np.ndarray) -> dict:
    return {
        "model_name": "fashion_mnist",
        "model_version": model_version,
        "predictions": expected_predictions(batch),
    }


def _error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


# -- inputs ---------------------------------------------------------------------------------------
def test_raw_png_gives_one_prediction(client, backend):
    png = _png("ankle_boot")
    resp = client.post("/v1/predict", data=png, content_type="image/png")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.get_json() == _body(3, decode_image(png)[None])
    assert HEX32.match(resp.headers["X-Request-ID"])
    assert backend.calls == [(1, 28, 28, 1)]


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [
        ("PNG", "image/png"),
        ("JPEG", "image/jpeg"),
        ("WEBP", "image/webp"),
        ("GIF", "image/gif"),
        ("BMP", "image/bmp"),
    ],
)
def test_every_raw_image_type(client, fmt, content_type):
    img = Image.open(io.BytesIO(_png("trouser"))).convert("RGB")
    data = _encode(img, fmt)
    resp = client.post("/v1/predict", data=data, content_type=content_type)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == _body(3, decode_image(data)[None])


def test_content_type_parameters_are_ignored(client):
    png = _png("bag")
    resp = client.post("/v1/predict", data=png, content_type="image/png; charset=binary")
    assert resp.status_code == 200
    assert resp.get_json() == _body(3, decode_image(png)[None])


def test_multipart_files_are_one_batched_call_in_order(client, backend):
    names = ["ankle_boot", "trouser", "bag"]
    files = [(io.BytesIO(_png(n)), f"{n}.png") for n in names]
    resp = client.post("/v1/predict", data={"file": files}, content_type="multipart/form-data")
    assert resp.status_code == 200, resp.get_json()
    batch = np.stack([decode_image(_png(n)) for n in names])
    assert resp.get_json() == _body(3, batch)
    assert backend.calls == [(3, 28, 28, 1)]
    # the fake's answer depends on the pixels: the three predictions really are distinct
    assert len({json.dumps(p) for p in resp.get_json()["predictions"]}) == 3


def test_json_mixes_b64_and_arrays_in_order(client, backend):
    png = _png("tshirt")
    pixels = (np.arange(784).reshape(28, 28) % 256).tolist()
    seen = []
    backend.hook = seen.append
    resp = client.post(
        "/v1/predict",
        json={"instances": [pixels, {"b64": base64.b64encode(png).decode()}]},
    )
    assert resp.status_code == 200, resp.get_json()
    batch = np.stack([array_to_input(pixels), decode_image(png)])
    assert resp.get_json() == _body(3, batch)
    assert backend.calls == [(2, 28, 28, 1)]
    np.testing.assert_array_equal(seen[0], batch)
    np.testing.assert_allclose(seen[0][0, :, :, 0], np.asarray(pixels) / 255.0, rtol=1e-6)


def test_answer_names_the_version_that_answered(client, backend):
    backend.version = 11
    resp = client.post("/v1/predict", data=_png("bag"), content_type="image/png")
    assert resp.get_json()["model_version"] == 11


# -- errors: exact bodies ---------------------------------------------------------------------------
def test_not_an_image_is_400(client, backend):
    with pytest.raises(InvalidImage) as info:
        decode_image(b"GIF89a not really")
    resp = client.post("/v1/predict", data=b"GIF89a not really", content_type="image/gif")
    assert resp.status_code == 400
    assert resp.get_json() == _error("invalid_image", str(info.value))
    assert backend.calls == []


def test_empty_body_is_400(client):
    resp = client.post("/v1/predict", data=b"", content_type="image/png")
    assert resp.status_code == 400
    assert resp.get_json() == _error("invalid_image", "request body is empty")


def test_bad_json_is_400(client):
    resp = client.post("/v1/predict", data=b'{"instances": [', content_type="application/json")
    assert resp.status_code == 400
    assert resp.get_json() == _error(
        "invalid_json",
        "request body is not valid JSON: Expecting value: line 1 column 16 (char 15)",
    )


@pytest.mark.parametrize(
    ("doc", "status", "code", "message"),
    [
        (
            {"inputs": []},
            400,
            "invalid_json",
            'JSON body must be an object with an "instances" list',
        ),
        ([1, 2], 400, "invalid_json", 'JSON body must be an object with an "instances" list'),
        ({"instances": []}, 400, "no_images", "the request holds no images"),
        (
            {"instances": [[[1, 2]]]},
            400,
            "invalid_image",
            "instance 0: pixel array must have shape [28, 28], got [1, 2]",
        ),
        (
            {"instances": [[[300] * 28] * 28]},
            400,
            "invalid_image",
            "instance 0: pixel values must be within 0-255, got 300..300",
        ),
        (
            {"instances": [7]},
            400,
            "invalid_json",
            'instance 0: expected {"b64": ...} or a 28x28 array of 0-255 values',
        ),
        (
            {"instances": [{"b64": "!!!"}]},
            400,
            "invalid_image",
            "instance 0: b64 is not valid base64",
        ),
        (
            {"instances": [{"b64": "aGk=", "x": 1}]},
            400,
            "invalid_json",
            'instance 0: an object instance must be {"b64": "<base64 image>"}',
        ),
        (
            {"instances": [[[0] * 28] * 28] * 5},
            413,
            "too_many_images",
            "5 images in one request; the limit is 4",
        ),
    ],
)
def test_bad_json_instances(client, backend, doc, status, code, message):
    resp = client.post("/v1/predict", json=doc)
    assert resp.status_code == status
    assert resp.get_json() == _error(code, message)
    assert backend.calls == []


def test_second_bad_image_names_its_position(client):
    with pytest.raises(InvalidImage) as info:
        decode_image(b"nope")
    files = [(io.BytesIO(_png("bag")), "bag.png"), (io.BytesIO(b"nope"), "notes.txt")]
    resp = client.post("/v1/predict", data={"file": files}, content_type="multipart/form-data")
    assert resp.status_code == 400
    assert resp.get_json() == _error("invalid_image", f"file 1 (notes.txt): {info.value}")


def test_multipart_without_files_is_400(client):
    resp = client.post("/v1/predict", data={"note": "hi"}, content_type="multipart/form-data")
    assert resp.status_code == 400
    assert resp.get_json() == _error("no_images", "the request holds no images")


def test_too_many_files_is_413(client, backend):
    files = [(io.BytesIO(_png("bag")), f"{i}.png") for i in range(5)]
    resp = client.post("/v1/predict", data={"file": files}, content_type="multipart/form-data")
    assert resp.status_code == 413
    assert resp.get_json() == _error("too_many_images", "5 images in one request; the limit is 4")
    assert backend.calls == []


def test_body_over_the_limit_is_413(client, backend):
    resp = client.post("/v1/predict", data=b"\0" * 200_001, content_type="image/png")
    assert resp.status_code == 413
    assert resp.get_json() == _error(
        "body_too_large", "request body of 200001 bytes is larger than the limit of 200000"
    )
    assert backend.calls == []


def test_multipart_body_over_the_limit_is_413(client):
    files = [(io.BytesIO(b"\0" * 210_000), "big.png")]
    resp = client.post("/v1/predict", data={"file": files}, content_type="multipart/form-data")
    assert resp.status_code == 413
    assert resp.get_json()["error"]["code"] == "body_too_large"


def test_image_over_the_pixel_guard_is_413(backend):
    with pytest.raises(ImageTooLarge) as info:
        decode_image(_png("bag"), max_pixels=1000)
    client = create_app(_config(max_pixels=1000), backend=backend).test_client()
    resp = client.post("/v1/predict", data=_png("bag"), content_type="image/png")
    assert resp.status_code == 413
    assert resp.get_json() == _error("image_too_large", str(info.value))
    assert "1000" in str(info.value)
    assert backend.calls == []


def test_deeply_nested_json_is_400_not_500(client):
    body = b'{"instances": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    resp = client.post("/v1/predict", data=body, content_type="application/json")
    assert resp.status_code == 400
    assert resp.get_json() == _error("invalid_json", "request body is nested too deeply")


@pytest.mark.parametrize("content_type", ["text/plain", "image/tiff", None])
def test_unsupported_content_type_is_415(client, content_type):
    resp = client.post("/v1/predict", data=b"abc", content_type=content_type)
    assert resp.status_code == 415
    got = content_type or "none"
    assert resp.get_json() == _error(
        "unsupported_media_type",
        f"Content-Type {got} is not supported; send image/png, image/jpeg, image/webp, "
        "image/gif, image/bmp, multipart/form-data or application/json",
    )


@pytest.mark.parametrize(
    ("exc", "status", "code", "retry_after"),
    [
        (BackendUnavailable("connection refused"), 503, "backend_unavailable", "1"),
        (ModelNotFound("version 9 not found"), 503, "model_not_ready", "1"),
        (BackendTimeout("no answer within 5 s"), 504, "backend_timeout", None),
        (BackendInvalidRequest("bad tensor"), 400, "invalid_request", None),
        (BackendError("garbled answer"), 502, "backend_error", None),
    ],
)
def test_backend_errors_map_to_codes(client, backend, exc, status, code, retry_after):
    backend.error = exc
    resp = client.post("/v1/predict", data=_png("bag"), content_type="image/png")
    assert resp.status_code == status
    # The client gets a fixed message; the backend's own text stays in the server log.
    assert resp.get_json() == _error(code, BACKEND_MESSAGES[code])
    assert str(exc) not in resp.get_data(as_text=True)
    assert resp.headers.get("Retry-After") == retry_after


def test_unexpected_error_is_500_with_request_id_and_logged(client, backend, caplog):
    backend.error = RuntimeError("secret internals")
    with caplog.at_level(logging.ERROR, logger="serving.gateway.errors"):
        resp = client.post(
            "/v1/predict",
            data=_png("bag"),
            content_type="image/png",
            headers={"X-Request-ID": "req-42"},
        )
    assert resp.status_code == 500
    assert resp.get_json() == {
        "error": {"code": "internal", "message": "internal server error", "request_id": "req-42"}
    }
    assert b"secret" not in resp.data and b"Traceback" not in resp.data
    records = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(records) == 1 and records[0].exc_info is not None
    assert "secret internals" in caplog.text


def test_log_lines_carry_the_request_id(client, backend):
    from serving.gateway.log import RequestIdFilter

    root = logging.getLogger()
    ours = [h for h in root.handlers if any(isinstance(f, RequestIdFilter) for f in h.filters)]
    assert len(ours) == 1  # configured once, however many apps were created
    stream = io.StringIO()
    old = ours[0].setStream(stream)
    try:
        backend.error = BackendTimeout("slow")
        client.post(
            "/v1/predict",
            data=_png("bag"),
            content_type="image/png",
            headers={"X-Request-ID": "abc-1"},
        )
        logging.getLogger("serving.gateway").warning("outside a request")
    finally:
        ours[0].setStream(old)
    lines = stream.getvalue().splitlines()
    assert any("[abc-1] backend error (backend_timeout): slow" in line for line in lines), lines
    assert lines[-1].endswith("serving.gateway [-] outside a request")


def test_404_and_405_use_the_error_shape(client):
    resp = client.get("/v2/nothing")
    assert resp.status_code == 404
    assert resp.get_json() == _error(
        "not_found",
        "The requested URL was not found on the server. If you entered the URL manually "
        "please check your spelling and try again.",
    )
    resp = client.get("/v1/predict")
    assert resp.status_code == 405
    assert resp.get_json() == _error(
        "method_not_allowed", "The method is not allowed for the requested URL."
    )
    assert set(resp.headers["Allow"].split(", ")) == {"OPTIONS", "POST"}
    assert HEX32.match(resp.headers["X-Request-ID"])


# -- request ids ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sent", "echoed"),
    [("abc-123_x.y:z", True), ("has space", False), ("x" * 129, False), ("", False), ("ü", False)],
)
def test_request_id_echoed_only_when_sane(client, sent, echoed):
    resp = client.get("/healthz", headers={"X-Request-ID": sent})
    rid = resp.headers["X-Request-ID"]
    assert (rid == sent) is echoed
    if not echoed:
        assert HEX32.match(rid)


def test_every_request_gets_a_fresh_id(client):
    ids = {client.get("/healthz").headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5


# -- health, readiness, models --------------------------------------------------------------------
def test_healthz_does_not_touch_the_backend(client, backend):
    backend.error = BackendUnavailable("down")
    resp = client.get("/healthz")
    assert (resp.status_code, resp.get_json()) == (200, {"status": "ok"})
    assert backend.status_calls == 0


def test_readyz_ready(client):
    resp = client.get("/readyz")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ready", "model_name": "fashion_mnist", "versions": [3]}


def test_readyz_is_cached_for_a_second(backend):
    client = create_app(_config(ready_cache_seconds=1.0), backend=backend).test_client()
    for _ in range(5):
        assert client.get("/readyz").status_code == 200
    assert backend.status_calls == 1


def test_readyz_not_ready_while_loading(client, backend):
    backend.states = [VersionStatus(2, "LOADING", ""), VersionStatus(1, "END", "")]
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "1"
    assert resp.get_json() == _error(
        "not_ready",
        "model fashion_mnist is not ready: a version of the model is not AVAILABLE "
        "(versions: 2: LOADING, 1: END)",
    )


def test_readyz_backend_down(client, backend):
    backend.error = BackendUnavailable("connection refused")
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json() == _error(
        "not_ready",
        "model fashion_mnist is not ready: backend: the model backend is unavailable; retry later",
    )


def test_readyz_pinned_version_must_be_available(backend):
    client = create_app(_config(model_version=2), backend=backend).test_client()
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json() == _error(
        "not_ready",
        "model fashion_mnist is not ready: version 2 of the model is not AVAILABLE "
        "(versions: 3: AVAILABLE)",
    )
    backend.states = [VersionStatus(3, "AVAILABLE", ""), VersionStatus(2, "AVAILABLE", "")]
    assert client.get("/readyz").get_json()["versions"] == [2]


def test_models_lists_versions_and_classes(client, backend):
    failure = "cannot load SavedModel /srv/models/fashion_mnist/2: OSError: ..."
    backend.states = [VersionStatus(3, "AVAILABLE", ""), VersionStatus(2, "END", failure)]
    resp = client.get("/v1/models")
    assert resp.status_code == 200
    assert resp.get_json() == {
        "model_name": "fashion_mnist",
        "backend": "grpc",
        "pinned_version": None,
        "pinned_label": None,
        "versions": [
            {"version": 3, "state": "AVAILABLE", "error": ""},
            # the backend's text names paths and exception classes: the client gets neither
            {"version": 2, "state": "END", "error": VERSION_FAILED},
        ],
        "class_names": list(CLASS_NAMES),
    }


def test_models_backend_down_is_503(client, backend):
    backend.error = BackendUnavailable("connection refused")
    resp = client.get("/v1/models")
    assert resp.status_code == 503
    assert resp.get_json() == _error("backend_unavailable", BACKEND_MESSAGES["backend_unavailable"])


# -- metrics ------------------------------------------------------------------------------------------
def _samples(client) -> dict[tuple[str, tuple], float]:
    text = client.get("/metrics").get_data(as_text=True)
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests_stages_labels_and_model(client, backend):
    png = _png("ankle_boot")
    label = CLASS_NAMES[expected_predictions(decode_image(png)[None])[0]["class_id"]]
    for _ in range(3):
        assert client.post("/v1/predict", data=png, content_type="image/png").status_code == 200
    pixels = [[0] * 28] * 28
    assert client.post("/v1/predict", json={"instances": [pixels, pixels]}).status_code == 200
    assert client.post("/v1/predict", data=b"x", content_type="text/plain").status_code == 415
    backend.error = BackendUnavailable("down")
    assert client.post("/v1/predict", data=png, content_type="image/png").status_code == 503
    backend.error = None
    backend.version = 4
    assert client.post("/v1/predict", data=png, content_type="image/png").status_code == 200
    client.get("/nope")

    m = _samples(client)
    req = "gateway_requests_total"
    assert m[(req, (("endpoint", "/v1/predict"), ("method", "POST"), ("status", "200")))] == 5
    assert m[(req, (("endpoint", "/v1/predict"), ("method", "POST"), ("status", "415")))] == 1
    assert m[(req, (("endpoint", "/v1/predict"), ("method", "POST"), ("status", "503")))] == 1
    assert m[(req, (("endpoint", "unmatched"), ("method", "GET"), ("status", "404")))] == 1
    lat = "gateway_request_duration_seconds_count"
    assert m[(lat, (("endpoint", "/v1/predict"), ("method", "POST")))] == 7
    assert m[("gateway_images_per_request_count", ())] == 6  # parsed OK: 4 PNG + 1 JSON + 1 (503)
    assert m[("gateway_images_per_request_sum", ())] == 7
    assert m[("gateway_images_per_request_bucket", (("le", "1.0"),))] == 5
    stage = "gateway_stage_duration_seconds_count"
    assert m[(stage, (("stage", "preprocess"),))] == 6
    assert m[(stage, (("stage", "backend"),))] == 5
    assert m[(stage, (("stage", "postprocess"),))] == 5
    zeros = expected_predictions(np.zeros((1, 28, 28, 1), np.float32))[0]["label"]
    preds = {dict(k[1])["label"]: v for k, v in m.items() if k[0] == "gateway_predictions_total"}
    assert set(preds) == set(CLASS_NAMES)  # every label is exported, even at 0
    expected = {name: 0.0 for name in CLASS_NAMES}
    expected[label] += 4
    expected[zeros] += 2
    assert preds == expected
    assert m[("gateway_backend_errors_total", (("reason", "unavailable"),))] == 1
    assert m[("gateway_model_info", (("name", "fashion_mnist"), ("version", "3")))] == 0
    assert m[("gateway_model_info", (("name", "fashion_mnist"), ("version", "4")))] == 1
    assert m[("gateway_in_flight_requests", ())] == 1  # the scrape itself


def test_metrics_count_unknown_methods_as_other_in_one_series(client):
    for method in ("FOO", "BAR", "BAZ"):
        assert client.open("/healthz", method=method).status_code == 405
    assert client.get("/healthz").status_code == 200
    m = _samples(client)
    req = "gateway_requests_total"
    series = {dict(k[1])["method"] for k in m if k[0] == req}
    assert series == {"GET", "other"}  # one series for every method it does not know
    assert m[(req, (("endpoint", "unmatched"), ("method", "other"), ("status", "405")))] == 3


def test_metrics_pass_promtool(client):
    promtool = shutil.which("promtool")
    if promtool is None:
        missing("promtool not installed (apt-get install prometheus)")
    client.post("/v1/predict", data=_png("bag"), content_type="image/png")
    client.post("/v1/predict", data=b"x", content_type="image/png")
    text = client.get("/metrics").data
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout + proc.stderr == b""


def test_apps_do_not_share_metrics(backend):
    a = create_app(_config(), backend=backend).test_client()
    b = create_app(_config(), backend=backend).test_client()
    a.get("/healthz")
    a.get("/healthz")
    key = (
        "gateway_requests_total",
        (("endpoint", "/healthz"), ("method", "GET"), ("status", "200")),
    )
    assert _samples(a)[key] == 2
    assert key not in _samples(b)


def test_remote_backends_keep_the_tensorflow_runtime_out():
    """A gateway in front of TF Serving must not need TensorFlow's runtime."""
    import subprocess
    import sys

    code = """
import sys
from serving.gateway import create_app
png = open("tests/support/images/bag.png", "rb").read()
for backend in ("grpc://127.0.0.1:1", "http://127.0.0.1:1"):
    app = create_app({"backend": backend, "timeout_seconds": 2, "retries": 0})
    r = app.test_client().post("/v1/predict", data=png, content_type="image/png")
    print(r.status_code, r.get_json()["error"]["code"])
print("tensorflow.python" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "503 backend_unavailable\n503 backend_unavailable\nFalse\n"


def test_routing_redirects_are_not_turned_into_errors(backend):
    app = create_app(_config(), backend=backend)

    @app.get("/extra/")
    def extra() -> str:
        return "ok"

    resp = app.test_client().get("/extra")
    assert resp.status_code == 308
    assert resp.headers["Location"] == "http://localhost/extra/"
    assert HEX32.match(resp.headers["X-Request-ID"])


# -- bodies without Content-Length (chunked) ---------------------------------------------------------
def _post_chunked(client, body: bytes):
    # gunicorn marks a chunked body as terminated; werkzeug then reads it without a length
    return client.post(
        "/v1/predict",
        input_stream=io.BytesIO(body),
        content_type="image/png",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_chunked_body_over_the_limit_is_413_not_truncated(client):
    # a valid PNG followed by padding: cut at the limit it would still decode
    resp = _post_chunked(client, _png("bag") + b"\0" * 300_000)
    assert resp.status_code == 413
    assert resp.get_json() == _error(
        "body_too_large", "request body is larger than the limit of 200000 bytes"
    )


def test_chunked_body_within_the_limit_is_served(client):
    resp = _post_chunked(client, _png("bag"))
    assert resp.status_code == 200
    assert len(resp.get_json()["predictions"]) == 1


def test_backend_answer_of_the_wrong_shape_is_502(client, backend, monkeypatch):
    real = backend.predict

    def eleven_classes(batch):
        result = real(batch)
        return type(result)(
            probabilities=np.zeros((len(batch), 11), np.float32),
            model_version=result.model_version,
        )

    monkeypatch.setattr(backend, "predict", eleven_classes)
    resp = client.post("/v1/predict", data=_png("bag"), content_type="image/png")
    assert resp.status_code == 502
    assert resp.get_json() == _error("backend_error", BACKEND_MESSAGES["backend_error"])


# -- pixel budget per request ------------------------------------------------------------------------
def test_many_large_images_in_one_request_are_413_before_decoding(client):
    from tests.test_preprocess import png_header_only

    # each 6000x6000 image is under the 40 MP per-image limit; three exceed 80 MP per request
    big = png_header_only(6000, 6000)
    files = {"file": [(io.BytesIO(big), f"{n}.png") for n in "abc"]}
    resp = client.post("/v1/predict", data=files, content_type="multipart/form-data")
    assert resp.status_code == 413
    assert resp.get_json() == _error(
        "image_too_large",
        "the request's images hold more than 80000000 pixels in total (reached at file 2 "
        "(c.png)); send fewer or smaller images per request",
    )
    b64 = base64.b64encode(big).decode()
    resp = client.post("/v1/predict", json={"instances": [{"b64": b64}] * 3})
    assert resp.status_code == 413
    assert resp.get_json() == _error(
        "image_too_large",
        "the request's images hold more than 80000000 pixels in total (reached at instance 2); "
        "send fewer or smaller images per request",
    )
