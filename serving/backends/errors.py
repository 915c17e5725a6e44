"""The errors every backend raises: one hierarchy, no transport or HTTP in it.

``BackendError`` is the base; ``code`` is a machine-readable name for the failure. The
gateway (`serving.gateway.errors`) maps these classes to HTTP answers in one place; the client
(`client.api`) maps them to its own exceptions.
"""

from __future__ import annotations

__all__ = [
    "UNKNOWN_LABEL",
    "BackendBadResponse",
    "BackendConfigError",
    "BackendError",
    "BackendInvalidRequest",
    "BackendTimeout",
    "BackendUnavailable",
    "ModelNotFound",
]

#: How TF Serving starts the message for a version label it does not know (gRPC and REST).
UNKNOWN_LABEL = "Unrecognized servable version label"


class BackendConfigError(ValueError):
    """A backend address or option is malformed (raised by `serving.backends.connect`)."""


class BackendError(Exception):
    """The model backend failed in a way none of the subclasses describes."""

    code: str = "backend_error"


class BackendBadResponse(BackendError):
    """The backend answered, but not with what the contract promises (missing output, shape)."""


class BackendUnavailable(BackendError):
    """Connection refused/reset, gRPC UNAVAILABLE or HTTP 502/503, after the bounded retries."""

    code = "backend_unavailable"


class BackendTimeout(BackendError):
    """The per-call deadline passed before the backend answered."""

    code = "backend_timeout"


class ModelNotFound(BackendError):
    """The model, version or label is not (yet) served: HTTP 404 / gRPC NOT_FOUND."""

    code = "model_not_ready"


class BackendInvalidRequest(BackendError):
    """The backend rejected the request: HTTP 400 / gRPC INVALID_ARGUMENT."""

    code = "invalid_request"
