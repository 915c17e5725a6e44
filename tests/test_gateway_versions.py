"""``GET /v1/models`` lists the same versions, in the same order (newest first), whichever
backend the gateway uses: the same two-version export behind the embedded backend, and behind
``serving.modelserver`` (a subprocess) over gRPC and over REST."""

from __future__ import annotations

import shutil
import time

import pytest

from loadtest.servers import start_modelserver
from loadtest.versions import publish_copy
from serving.gateway import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POLL_S = 0.2


def _versions(client) -> list[dict]:
    resp = client.get("/v1/models")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()["versions"]


def _wait_for(clients: dict, want: list[dict], timeout: float = 90.0) -> dict[str, list[dict]]:
    deadline = time.monotonic() + timeout
    while True:
        seen = {kind: _versions(c) for kind, c in clients.items()}
        if all(v == want for v in seen.values()) or time.monotonic() > deadline:
            return seen
        time.sleep(POLL_S)


def test_models_lists_versions_newest_first_for_every_backend(exported_model, tmp_path):
    base = tmp_path / "fashion_mnist"
    base.mkdir()
    shutil.copytree(exported_model / "1", base / "1")
    flags = (f"--file_system_poll_wait_seconds={POLL_S}",)
    with start_modelserver(base, *flags) as server:
        apps = {
            "embedded": create_app({"backend": f"embedded:{base}", "model_poll_seconds": POLL_S}),
            "grpc": create_app({"backend": f"grpc://{server.target}"}),
            "rest": create_app({"backend": server.url}),
        }
        clients = {kind: app.test_client() for kind, app in apps.items()}
        try:
            one = [{"version": 1, "state": "AVAILABLE", "error": ""}]
            assert _wait_for(clients, one) == dict.fromkeys(clients, one)
            publish_copy(base, 1, 2)
            # Version 2 replaces 1 (latest policy): 2 AVAILABLE, then 1 unloaded (END).
            both = [
                {"version": 2, "state": "AVAILABLE", "error": ""},
                {"version": 1, "state": "END", "error": ""},
            ]
            assert _wait_for(clients, both) == dict.fromkeys(clients, both)
        finally:
            for app in apps.values():
                app.extensions["gateway"].close()
