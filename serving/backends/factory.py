"""`connect`: build the `Backend` an address names (exported as `serving.backends.connect`)."""

from __future__ import annotations

import logging
from typing import Any

from serving.backends.address import parse_address
from serving.backends.errors import BackendConfigError
from serving.backends.grpc import GrpcBackend
from serving.backends.rest import RestBackend
from serving.backends.retry import check_call_options
from serving.backends.types import Backend
from serving.contract import MODEL_NAME

__all__ = ["connect"]

log = logging.getLogger(__name__)


def connect(
    address: str,
    *,
    model_name: str = MODEL_NAME,
    version: int | None = None,
    label: str | None = None,
    timeout: float = 5.0,
    retries: int = 2,
    **embedded_options: Any,
) -> Backend:
    """The backend at ``address``: ``grpc://host:port``, ``http(s)://host:port`` or
    ``embedded:PATH``.

    ``version`` or ``label`` pins what is served (a label needs a remote backend);
    ``timeout`` is each call's deadline in seconds, retries included; ``retries`` bounds the
    retries of an unavailable remote backend. ``embedded_options`` go to `EmbeddedBackend`
    (batching, polling, thread pools). Remote backends connect lazily, on the first request.
    Raises `BackendConfigError` (a ValueError) on a bad address or option.
    """
    parsed = parse_address(address)
    check_call_options(version, label, timeout, retries)
    log.debug("backend: %s (%s)", parsed.kind, parsed.target)
    if parsed.kind == "embedded":
        if label is not None:
            raise BackendConfigError(
                "a version label needs a grpc:// or http:// backend "
                "(version labels live in TF Serving's model config)"
            )
        # Deferred: the embedded backend imports TensorFlow's runtime; the remote ones must not.
        from serving.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(
            parsed.target, model_name, version=version, timeout=timeout, **embedded_options
        )
    if embedded_options:
        raise BackendConfigError(
            f"{', '.join(sorted(embedded_options))}: only for an embedded: backend"
        )
    remote = GrpcBackend if parsed.kind == "grpc" else RestBackend
    return remote(
        parsed.target, model_name, version=version, label=label, timeout=timeout, retries=retries
    )
