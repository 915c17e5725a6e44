"""The one place where exceptions become HTTP answers.

Every error the gateway sends has the body ``{"error": {"code": "...", "message": "..."}}``;
500 answers add ``"request_id"`` inside ``error`` so a user can quote it and an operator can find
the traceback in the logs. `to_api_error` maps any exception to an `ApiError`; `register`
installs the Flask handlers that use it.

Mapping (kserve's ``errors.py`` in spirit; "other" includes ``BackendBadResponse``, an answer
that breaks the contract):

====================================  ======  =========================
exception                              status  code
====================================  ======  =========================
preprocess.InvalidImage                 400     ``invalid_image``
preprocess.ImageTooLarge                413     ``image_too_large``
backends.BackendInvalidRequest          400     ``invalid_request``
backends.BackendUnavailable             503     ``backend_unavailable``
backends.ModelNotFound                  503     ``model_not_ready``
backends.BackendTimeout                 504     ``backend_timeout``
backends.BackendError (other)           502     ``backend_error``
werkzeug 404 / 405 / 413                same    ``not_found`` / ``method_not_allowed`` / ``body_too_large``
anything else                           500     ``internal``
====================================  ======  =========================
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, g
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from serving.backends.errors import (
    BackendError,
    BackendInvalidRequest,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
)
from serving.preprocess import ImageTooLarge, InvalidImage

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answer: HTTP status, machine-readable code, human message, extra headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
        detail: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        # Set for backend failures: the `reason` label of gateway_backend_errors_total.
        self.reason = reason
        # What the backend said, for the server log only: it can name internal hosts and ports.
        self.detail = detail

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        """The JSON body of this error."""
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if request_id is not None:
            err["request_id"] = request_id
        return {"error": err}


# Convenience constructors used by the views -------------------------------------------------
def bad_request(message: str, code: str = "bad_request") -> ApiError:
    """400 with ``code``."""
    return ApiError(400, code, message)


def too_large(message: str, code: str) -> ApiError:
    """413 with ``code``."""
    return ApiError(413, code, message)


def unsupported_media_type(message: str) -> ApiError:
    """415 ``unsupported_media_type``."""
    return ApiError(415, "unsupported_media_type", message)


def unavailable(
    message: str,
    retry_after: int,
    code: str,
    reason: str | None = None,
    detail: str | None = None,
) -> ApiError:
    """503 with a ``Retry-After`` header."""
    return ApiError(
        503, code, message, headers={"Retry-After": str(retry_after)}, reason=reason, detail=detail
    )


# What a client is told about a backend failure. The backend's own text (addresses, ports,
# gRPC internals) goes to the server log only, under the request id.
BACKEND_MESSAGES = {
    "backend_timeout": "the model backend did not answer within the deadline",
    "backend_unavailable": "the model backend is unavailable; retry later",
    "model_not_ready": (
        "the model is not available on the backend (not loaded yet, or no such version or label)"
    ),
    "invalid_request": "the model backend rejected the request",
    "backend_error": "the model backend sent an answer the gateway cannot use",
}


#: What ``/v1/models`` says about a version that failed to load. The backend's own text names
#: absolute paths of the export and exception classes; it is in the backend's log.
VERSION_FAILED = "the version failed to load (the model server's log has the details)"


def public_version_error(error: str) -> str:
    """The client-facing ``error`` of a version status: empty, or `VERSION_FAILED`."""
    return VERSION_FAILED if error else ""


def public_backend_message(exc: BaseException) -> str:
    """The client-facing text for a backend error (see `BACKEND_MESSAGES`)."""
    return BACKEND_MESSAGES.get(getattr(exc, "code", ""), BACKEND_MESSAGES["backend_error"])


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def to_api_error(exc: BaseException, *, retry_after: int = 1, max_body_bytes: int = 0) -> ApiError:
    """Map any exception to the `ApiError` the client gets (see the module table)."""
    if isinstance(exc, ApiError):
        return exc

    if isinstance(exc, ImageTooLarge):
        return ApiError(413, "image_too_large", str(exc))
    if isinstance(exc, InvalidImage):
        return ApiError(400, "invalid_image", str(exc))
    if isinstance(exc, BackendError):
        detail, public = str(exc), public_backend_message(exc)
        if isinstance(exc, BackendTimeout):
            return ApiError(504, "backend_timeout", public, reason="timeout", detail=detail)
        if isinstance(exc, BackendUnavailable):
            return unavailable(
                public, retry_after, "backend_unavailable", reason="unavailable", detail=detail
            )
        if isinstance(exc, ModelNotFound):
            return unavailable(
                public, retry_after, "model_not_ready", reason="model_not_found", detail=detail
            )
        if isinstance(exc, BackendInvalidRequest):
            return ApiError(400, "invalid_request", public, reason="invalid_request", detail=detail)
        return ApiError(502, "backend_error", public, reason="other", detail=detail)
    if isinstance(exc, RequestEntityTooLarge):
        limit = f" of {max_body_bytes} bytes" if max_body_bytes else ""
        return ApiError(413, "body_too_large", f"request body is larger than the limit{limit}")
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        headers = {}
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            headers["Allow"] = ", ".join(exc.valid_methods)
        return ApiError(status, code, exc.description or exc.name, headers=headers)
    return ApiError(500, "internal", "internal server error")


def error_response(err: ApiError, request_id: str | None = None) -> Response:
    """Render ``err`` as a JSON response (the request id is added to 500 bodies)."""
    rid = request_id if err.status == 500 else None
    resp = Response(
        json.dumps(err.body(rid), separators=(",", ":")),
        status=err.status,
        mimetype="application/json",
    )
    for key, value in err.headers.items():
        resp.headers[key] = value
    return resp


def register(app: Flask) -> None:
    """Install the error handlers on ``app`` (all exceptions go through `to_api_error`)."""
    cfg = app.config["GATEWAY"]

    @app.errorhandler(Exception)
    def _handle(exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.code is not None and exc.code < 400:
            return exc.get_response()  # routing redirects are not errors
        err = to_api_error(
            exc, retry_after=cfg.retry_after_seconds, max_body_bytes=cfg.max_body_bytes
        )
        g.api_error = err
        if err.status == 500:
            log.error("unhandled error: %s", exc, exc_info=exc)
        elif err.code == "not_ready":  # readiness probes: expected while loading
            log.debug("not ready: %s", err.message)
        elif err.detail is not None:
            log.warning("backend error (%s): %s", err.code, err.detail)
        return error_response(err, getattr(g, "request_id", None))
