"""The OpenAPI document at /openapi.json matches what the gateway really does.

The document is a valid OpenAPI 3.1 document; its paths and methods are exactly the app's
routes; and real responses of the app (one per documented status, from the fake backend) have
the documented status, media type, headers and a body that validates against the documented
JSON schema.
"""

from __future__ import annotations

import base64
import io
import os

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from serving.backends.errors import (
    BackendError,
    BackendInvalidRequest,
    BackendTimeout,
    BackendUnavailable,
)
from serving.gateway import create_app
from serving.gateway.config import GatewayConfig
from tests.support.gateway import FakeBackend

IMAGES = os.path.join(os.path.dirname(__file__), "support", "images")
DOC_URI = "urn:convserve:gateway-openapi"


def _png() -> bytes:
    with open(os.path.join(IMAGES, "bag.png"), "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def backend() -> FakeBackend:
    return FakeBackend(version=2)


API_KEY = "openapi-test-key-0123456789"


def _config(**overrides) -> GatewayConfig:
    return GatewayConfig(
        backend="grpc://backend.invalid:8500",
        max_batch=2,
        max_body_bytes=100_000,
        ready_cache_seconds=0.0,
        **overrides,
    )


@pytest.fixture(scope="module")
def app(backend):
    return create_app(_config(), backend=backend)


@pytest.fixture(scope="module")
def keyed_app(backend):
    """The same gateway with an API key required everywhere it can be (metrics included)."""
    return create_app(_config(api_keys=API_KEY, api_keys_protect_metrics=True), backend=backend)


@pytest.fixture(scope="module")
def doc(app) -> dict:
    resp = app.test_client().get("/openapi.json")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    return resp.get_json()


@pytest.fixture(scope="module")
def registry(doc) -> Registry:
    return Registry().with_resource(
        DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012)
    )


def _pointer(*parts: str) -> str:
    """A JSON pointer to ``parts`` (RFC 6901 escaping)."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def _get(doc: dict, pointer: str):
    node = doc
    for part in pointer.split("/")[1:]:
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _deref(doc: dict, pointer: str) -> tuple[dict, str]:
    """Follow ``$ref``s from ``pointer``; return the object and its own pointer."""
    obj = _get(doc, pointer)
    while "$ref" in obj:
        pointer = obj["$ref"].removeprefix("#")
        obj = _get(doc, pointer)
    return obj, pointer


def _validator(registry: Registry, pointer: str) -> Draft202012Validator:
    """A validator for the schema at ``pointer``; its "#/components/..." refs resolve in the doc."""
    return Draft202012Validator({"$ref": f"{DOC_URI}#{pointer}"}, registry=registry)


def check_response(doc, registry, path: str, method: str, resp, spec: str | None = None) -> None:
    """Assert that ``resp`` is what the document says ``method path`` answers with its status.

    ``spec``: pointer of the response object (default: the operation's entry for the status).
    """
    if spec is None:
        op = doc["paths"][path][method.lower()]
        assert str(resp.status_code) in op["responses"], (
            f"{method} {path} answered {resp.status_code}, not documented: {resp.get_data()!r}"
        )
        spec = _pointer("paths", path, method.lower(), "responses", str(resp.status_code))
    spec_obj, spec = _deref(doc, spec)
    content = spec_obj["content"]
    assert resp.mimetype in content, f"{resp.mimetype} not in {list(content)}"
    for name in spec_obj.get("headers", {}):
        assert name in resp.headers, f"{method} {path} {resp.status_code}: no {name} header"
    if resp.mimetype == "application/json":
        body = resp.get_json()
        schema = spec + _pointer("content", resp.mimetype, "schema")
        errors = sorted(_validator(registry, schema).iter_errors(body), key=str)
        assert not errors, f"{method} {path} {resp.status_code}: {errors[0].message}"


def test_document_is_valid_openapi_31(doc):
    assert doc["openapi"].startswith("3.1")
    validate_spec(doc)
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_paths_are_exactly_the_routes(app, doc):
    routes = {
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    assert documented == routes


def _scenarios(backend: FakeBackend):
    """(path, method, kwargs for the test client, setup) covering every documented status."""
    png = _png()
    pixels = [[0] * 28] * 28

    def fail(exc):
        def setup():
            backend.error = exc

        return setup

    def states(*s):
        def setup():
            from serving.backends import VersionStatus

            backend.states = [VersionStatus(*x) for x in s]

        return setup

    post = "/v1/predict"
    raw = {"data": png, "content_type": "image/png"}
    return [
        (post, "POST", raw, None),
        (
            post,
            "POST",
            {"json": {"instances": [{"b64": base64.b64encode(png).decode()}, pixels]}},
            None,
        ),
        (
            post,
            "POST",
            {"data": {"file": [(io.BytesIO(png), "a.png")]}, "content_type": "multipart/form-data"},
            None,
        ),
        (post, "POST", {"data": b"nope", "content_type": "image/png"}, None),
        (post, "POST", {"json": {"instances": [pixels] * 3}}, None),
        (post, "POST", {"data": b"x" * 100_001, "content_type": "image/png"}, None),
        (post, "POST", {"data": b"x", "content_type": "text/csv"}, None),
        (post, "POST", raw, fail(BackendInvalidRequest("bad"))),
        (post, "POST", raw, fail(BackendError("odd"))),
        (post, "POST", raw, fail(BackendUnavailable("down"))),
        (post, "POST", raw, fail(BackendTimeout("slow"))),
        (post, "POST", raw, fail(RuntimeError("bug"))),
        ("/v1/models", "GET", {}, None),
        ("/v1/models", "GET", {}, fail(BackendError("odd"))),
        ("/v1/models", "GET", {}, fail(BackendUnavailable("down"))),
        ("/v1/models", "GET", {}, fail(BackendTimeout("slow"))),
        ("/v1/models", "GET", {}, fail(RuntimeError("bug"))),
        ("/healthz", "GET", {}, None),
        ("/readyz", "GET", {}, None),
        ("/readyz", "GET", {}, states((1, "LOADING", ""))),
        ("/metrics", "GET", {}, None),
        ("/openapi.json", "GET", {}, None),
    ]


def test_real_responses_match_the_document(app, keyed_app, backend, doc, registry):
    client = app.test_client()
    seen = set()
    for path, method, kwargs, setup in _scenarios(backend):
        backend.error, backend.states = None, FakeBackend(2).states
        if setup is not None:
            setup()
        resp = client.open(path, method=method, **kwargs)
        check_response(doc, registry, path, method, resp)
        seen.add((path, method, str(resp.status_code)))
    backend.error, backend.states = None, FakeBackend(2).states
    keyed = keyed_app.test_client()
    for path, ops in doc["paths"].items():
        for method in ops:
            resp = keyed.open(path, method=method.upper())  # no key
            check_response(doc, registry, path, method.upper(), resp)
            seen.add((path, method.upper(), str(resp.status_code)))
    documented = {
        (path, method.upper(), status)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        for status in op["responses"]
    }
    # 500 is documented everywhere; only the views that call the backend can be made to fail.
    untestable = {(p, m, "500") for p, m, _ in documented if p not in ("/v1/predict", "/v1/models")}
    assert seen == documented - untestable


def test_404_and_405_match_the_documented_components(app, doc, registry):
    client = app.test_client()
    not_found = _pointer("components", "responses", "NotFound")
    not_allowed = _pointer("components", "responses", "MethodNotAllowed")
    check_response(doc, registry, "/x", "GET", client.get("/x"), not_found)
    check_response(doc, registry, "/healthz", "POST", client.post("/healthz"), not_allowed)


def test_request_schema_accepts_what_the_gateway_accepts(doc, registry):
    pointer = _pointer(
        "paths", "/v1/predict", "post", "requestBody", "content", "application/json", "schema"
    )
    v = _validator(registry, pointer)
    pixels = [[255] * 28] * 28
    assert v.is_valid({"instances": [{"b64": "aGk="}, pixels]})
    assert not v.is_valid({"instances": []})
    assert not v.is_valid({"instances": [[[0] * 3] * 28]})
    assert not v.is_valid({"instances": [{"b64": "aGk=", "extra": 1}]})
    assert not v.is_valid({"inputs": [pixels]})
