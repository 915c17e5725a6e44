"""``gateway_model_version_errors{version}``: 1 while the backend reports a version that failed
to load, back to 0 once it no longer does; set from ``/v1/models`` and from ``/readyz``."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from serving.backends import VersionStatus
from serving.gateway import create_app
from serving.gateway.config import GatewayConfig
from serving.gateway.errors import VERSION_FAILED
from tests.support.gateway import FakeBackend

FAILED = VersionStatus(4, "END", "saved_model.pb is not a SavedModel")
SERVING = VersionStatus(3, "AVAILABLE")


def _gauge(client) -> dict[str, float]:
    text = client.get("/metrics").get_data(as_text=True)
    return {
        s.labels["version"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "gateway_model_version_errors"
    }


def _client(backend: FakeBackend):
    config = GatewayConfig(backend="grpc://backend.invalid:8500", ready_cache_seconds=0.0)
    return create_app(config, backend=backend).test_client()


def test_models_listing_sets_and_clears_the_version_error_gauge():
    backend = FakeBackend(version=3, states=[FAILED, SERVING])
    client = _client(backend)
    assert _gauge(client) == {}
    body = client.get("/v1/models").get_json()
    assert body["versions"][0] == {"version": 4, "state": "END", "error": VERSION_FAILED}
    assert _gauge(client) == {"4": 1.0}
    backend.states = [SERVING]  # the folder was removed (or fixed and loaded)
    client.get("/v1/models")
    assert _gauge(client) == {"4": 0.0}


def test_readiness_checks_set_the_version_error_gauge():
    backend = FakeBackend(version=3, states=[FAILED, SERVING])
    client = _client(backend)
    resp = client.get("/readyz")
    assert resp.status_code == 200 and resp.get_json()["versions"] == [3]
    assert _gauge(client) == {"4": 1.0}
    backend.states = [VersionStatus(5, "END", "variables missing"), SERVING]
    client.get("/readyz")
    assert _gauge(client) == {"4": 0.0, "5": 1.0}
