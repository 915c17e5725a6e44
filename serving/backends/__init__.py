"""Clients for TensorFlow Serving's gRPC and REST APIs (no TensorFlow runtime needed).

Example::

    from serving.tfserving import GrpcClient, RestClient, BackendError
    client = GrpcClient("localhost:8500", version=None, timeout=5.0, retries=2)
    result = client.predict(batch)       # PredictResult(probabilities [N, 10], model_version)
    client.model_status()                # [VersionStatus(version=1, state="AVAILABLE", error="")]

Errors are the classes in :mod:`serving.tfserving.errors`; each has ``http_status`` and ``code``.
"""

from serving.tfserving.base import PredictResult, VersionStatus
from serving.tfserving.errors import (
    BackendError,
    BackendInvalidRequest,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
)
from serving.tfserving.grpc_client import GrpcClient
from serving.tfserving.rest_client import RestClient

__all__ = [
    "BackendError",
    "BackendInvalidRequest",
    "BackendTimeout",
    "BackendUnavailable",
    "GrpcClient",
    "ModelNotFound",
    "PredictResult",
    "RestClient",
    "VersionStatus",
]
