"""Optional API keys on the gateway: who gets in, the 401 answer, where keys come from, and
that a key never shows up in a repr, the printed config, an error message or a log line."""

from __future__ import annotations

import hmac
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.gateway import api_keys, create_app
from serving.gateway.api_keys import ApiKeys, load_api_keys
from serving.gateway.config import ConfigError, GatewayConfig
from tests.support.gateway import FakeBackend

ROOT = Path(__file__).resolve().parents[1]
KEY = "k1-0123456789abcdef"
OTHER = "k2-fedcba9876543210"
PNG = (ROOT / "tests" / "support" / "images" / "bag.png").read_bytes()
MISSING = {
    "error": {
        "code": "unauthorized",
        "message": "an API key is required: send Authorization: Bearer <key> or X-API-Key: <key>",
    }
}
INVALID = {"error": {"code": "unauthorized", "message": "the API key is not valid"}}


def _app(**overrides):
    cfg = GatewayConfig(backend="grpc://backend.invalid:8500", ready_cache_seconds=0.0)
    return create_app(cfg.with_overrides(overrides), backend=FakeBackend())


@pytest.fixture
def client():
    return _app(api_keys=f"{KEY}, {OTHER}").test_client()


def _predict(client, headers=None):
    return client.post("/v1/predict", data=PNG, content_type="image/png", headers=headers or {})


def test_without_keys_configured_nothing_is_asked():
    client = _app().test_client()
    assert _predict(client).status_code == 200
    assert client.get("/v1/models").status_code == 200


def test_missing_key_is_401_with_the_error_shape_and_a_bearer_challenge(client):
    for path, method in [("/v1/predict", "POST"), ("/v1/models", "GET"), ("/nowhere", "GET")]:
        resp = client.open(path, method=method)
        assert resp.status_code == 401, path
        assert resp.get_json() == MISSING
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="convserve"'
        assert resp.headers["X-Request-ID"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": f"Bearer {KEY[:-1]}"},
        {"X-API-Key": "wrong-key-wrong-key"},
        {"Authorization": f"Basic {KEY}"},  # not a Bearer token: no key presented
        {"Authorization": "Bearer"},
    ],
)
def test_wrong_key_is_401(client, headers):
    resp = _predict(client, headers)
    assert resp.status_code == 401
    if "Basic" in headers.get("Authorization", "") or headers.get("Authorization") == "Bearer":
        assert resp.get_json() == MISSING
    else:
        assert resp.get_json() == INVALID
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="convserve", error="invalid_token"'


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {KEY}"},
        {"Authorization": f"bearer   {OTHER} "},
        {"X-API-Key": KEY},
        {"X-API-Key": OTHER, "Authorization": "Basic dXNlcjpwdw=="},
    ],
)
def test_a_valid_key_in_either_header_passes(client, headers):
    resp = _predict(client, headers)
    assert resp.status_code == 200, resp.get_json()
    assert len(resp.get_json()["predictions"]) == 1
    assert client.get("/v1/models", headers=headers).status_code == 200


def test_probes_and_the_document_stay_open(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_metrics_open_by_default_and_behind_the_switch():
    assert _app(api_keys=KEY).test_client().get("/metrics").status_code == 200
    protected = _app(api_keys=KEY, api_keys_protect_metrics="true").test_client()
    assert protected.get("/metrics").status_code == 401
    resp = protected.get("/metrics", headers={"X-API-Key": KEY})
    assert resp.status_code == 200
    assert 'status="401"' in resp.get_data(as_text=True)  # refused requests are counted


def test_keys_file_one_per_line_with_comments(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2026-12\n{KEY}\n\n  {OTHER}  \n")
    client = _app(api_keys_file=str(path)).test_client()
    assert _predict(client, {"X-API-Key": OTHER}).status_code == 200
    assert _predict(client, {"X-API-Key": "# rotated 2026-12"}).status_code == 401


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"api_keys": KEY, "api_keys_file": "/keys"},
            "set GATEWAY_API_KEYS or GATEWAY_API_KEYS_FILE, not both",
        ),
        ({"api_keys": " , "}, "GATEWAY_API_KEYS holds no API key"),
        (
            {"api_keys": f"{KEY},short"},
            "GATEWAY_API_KEYS: key 2 is shorter than 16 characters "
            "(generate one with: openssl rand -hex 32)",
        ),
        (
            {"api_keys": "with space 0123456789"},
            "GATEWAY_API_KEYS: key 1 has characters other than visible ASCII (no spaces, commas)",
        ),
        (
            {"api_keys_file": "/nonexistent/keys"},
            "GATEWAY_API_KEYS_FILE=/nonexistent/keys: cannot read the file: No such file or directory",
        ),
    ],
)
def test_bad_key_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_api_keys(GatewayConfig().with_overrides(overrides))
    assert str(info.value) == message


def test_empty_keys_file_is_a_config_error(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# nothing yet\n\n")
    with pytest.raises(ConfigError, match=r"^GATEWAY_API_KEYS_FILE=.*/keys holds no API key$"):
        load_api_keys(GatewayConfig(api_keys_file=str(path)))


def test_every_key_is_compared_on_every_check(monkeypatch):
    keys = ApiKeys([KEY, OTHER, "k3-0000000000000000"])
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(api_keys.hmac, "compare_digest", counting)
    assert keys.matches(KEY)  # the first key matches: the other two are still compared
    assert not keys.matches("nope")
    assert calls == [(32, 32)] * 6  # digests: equal lengths whatever the key's length


def test_keys_are_not_in_reprs_or_the_printed_config(tmp_path):
    cfg = GatewayConfig(api_keys=KEY)
    assert KEY not in repr(cfg)
    assert KEY not in repr(load_api_keys(cfg))
    assert repr(load_api_keys(cfg)) == "ApiKeys(<1 keys>)"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    proc = subprocess.run(
        [sys.executable, "-m", "serving.gateway", "--check"],
        cwd=ROOT,
        env={**clean, "GATEWAY_BACKEND": "grpc://localhost:8500", "GATEWAY_API_KEYS": KEY},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "GATEWAY_API_KEYS=<set>" in proc.stdout.splitlines()
    assert KEY not in proc.stdout + proc.stderr


def test_cli_refuses_a_missing_keys_file_at_start_up():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    proc = subprocess.run(
        [sys.executable, "-m", "serving.gateway", "--check"],
        cwd=ROOT,
        env={**clean, "GATEWAY_API_KEYS_FILE": "/nonexistent/keys"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "serving.gateway: configuration error: GATEWAY_API_KEYS_FILE=/nonexistent/keys: "
        "cannot read the file: No such file or directory\n"
    )


def test_keys_never_reach_the_log(client, caplog):
    caplog.set_level(logging.DEBUG)
    _predict(client, {"Authorization": f"Bearer {KEY}"})
    _predict(client, {"X-API-Key": OTHER + "x"})
    _predict(client, {"Authorization": f"Bearer {OTHER}z"})
    text = caplog.text
    assert KEY not in text and OTHER not in text
