"""Optional API keys: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` on every request.

Off unless keys are configured (`serving.gateway.api_keys`). The probes ``/healthz`` and
``/readyz`` and the document ``/openapi.json`` stay open; ``/metrics`` too unless
``GATEWAY_API_KEYS_PROTECT_METRICS`` is true. Anything else without a valid key is a 401 in the
gateway's error shape with ``WWW-Authenticate: Bearer`` (RFC 6750). Neither the keys nor the
headers that carry them are logged.
"""

from __future__ import annotations

from flask import Flask, request

from serving.gateway import errors
from serving.gateway.api_keys import ApiKeys

__all__ = ["OPEN_PATHS", "install", "unauthorized"]

#: Paths answered without a key (probes and the API document).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})
METRICS_PATH = "/metrics"
REALM = "convserve"


def _presented_keys() -> list[str]:
    """The keys the current request carries (Bearer token and/or X-API-Key)."""
    out = []
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        out.append(token.strip())
    header = request.headers.get("X-API-Key", "").strip()
    if header:
        out.append(header)
    return out


def unauthorized(message: str, *, invalid: bool) -> errors.ApiError:
    """401 ``unauthorized`` with the RFC 6750 challenge."""
    challenge = f'Bearer realm="{REALM}"'
    if invalid:
        challenge += ', error="invalid_token"'
    return errors.ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


def install(app: Flask, keys: ApiKeys | None, *, protect_metrics: bool) -> None:
    """Require one of ``keys`` on every request except the open paths (no-op for None).

    Registered after `serving.gateway.tracking`, so a 401 has its request id and is counted.
    """
    if keys is None:
        return
    open_paths = OPEN_PATHS if protect_metrics else OPEN_PATHS | {METRICS_PATH}

    @app.before_request
    def _require_key() -> None:
        if request.path in open_paths:
            return
        presented = _presented_keys()
        if not presented:
            raise unauthorized(
                "an API key is required: send Authorization: Bearer <key> or X-API-Key: <key>",
                invalid=False,
            )
        # Every presented key is checked (no short-circuit): the time does not say which.
        results = [keys.matches(k) for k in presented]
        if not any(results):
            raise unauthorized("the API key is not valid", invalid=True)
