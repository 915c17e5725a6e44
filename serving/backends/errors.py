"""Exceptions raised by the TF Serving clients, each carrying the HTTP status the gateway maps it to.

``BackendError`` is the base; the gateway can answer ``exc.http_status`` with
``{"error": {"code": exc.code, "message": str(exc)}}`` in one place.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendInvalidRequest",
    "BackendTimeout",
    "BackendUnavailable",
    "ModelNotFound",
]


class BackendError(Exception):
    """The model server failed or answered something unusable (→ 502)."""

    http_status: int = 502
    code: str = "backend_error"


class BackendUnavailable(BackendError):
    """Connection refused/reset, gRPC UNAVAILABLE or HTTP 503, after the bounded retries (→ 503)."""

    http_status = 503
    code = "backend_unavailable"


class BackendTimeout(BackendError):
    """The per-call deadline passed before the model server answered (→ 504)."""

    http_status = 504
    code = "backend_timeout"


class ModelNotFound(BackendError):
    """The model, version or label is not (yet) served: HTTP 404 / gRPC NOT_FOUND (→ 503)."""

    http_status = 503
    code = "model_not_ready"


class BackendInvalidRequest(BackendError):
    """The model server rejected the request: HTTP 400 / gRPC INVALID_ARGUMENT (→ 400)."""

    http_status = 400
    code = "invalid_request"
