"""The one backend layer: where predictions come from, behind one interface.

Example::

    from serving.backends import connect
    backend = connect("grpc://localhost:8500")     # or http://localhost:8501, embedded:models/fashion_mnist
    result = backend.predict(batch)                 # PredictResult(probabilities [N, 10], model_version)
    backend.status()                                # [VersionStatus(version=2, state="AVAILABLE", error=""), ...]
    backend.close()

- `Backend`, `PredictResult`, `VersionStatus` (`serving.backends.types`): the interface;
- `BackendError` and subclasses (`serving.backends.errors`): every failure;
- `connect(address, ...)`: `GrpcBackend` (`.grpc`), `RestBackend` (`.rest`) or
  `EmbeddedBackend` (`.embedded`, the only one that runs TensorFlow);
- `MergingBackend` (`.merging`): any backend with concurrent calls merged into one (the
  gateway wraps remote backends in it).

Importing this package (or its ``types``/``errors``/``address`` modules) stays light: ``connect``
is loaded on first use, because `serving.savedmodel` imports the types (an eager import of the
backends would be a cycle) and the gunicorn master reads the config before forking (gRPC must
not be loaded there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serving.backends.address import parse_address
from serving.backends.errors import (
    BackendBadResponse,
    BackendConfigError,
    BackendError,
    BackendInvalidRequest,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
)
from serving.backends.types import Backend, PredictResult, VersionStatus

if TYPE_CHECKING:
    from serving.backends.factory import connect

__all__ = [
    "Backend",
    "BackendBadResponse",
    "BackendConfigError",
    "BackendError",
    "BackendInvalidRequest",
    "BackendTimeout",
    "BackendUnavailable",
    "ModelNotFound",
    "PredictResult",
    "VersionStatus",
    "connect",
    "parse_address",
]


def __getattr__(name: str) -> Any:
    if name == "connect":
        from serving.backends.factory import connect

        return connect
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
