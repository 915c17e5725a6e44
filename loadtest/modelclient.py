"""The load tests' one connection to TF Serving / the model server: the project's own client.

``connect("grpc://host:8500")`` or ``connect("http://host:8501")`` returns an object with
``predict(batch) -> PredictResult(probabilities, model_version)`` and ``model_status()``.
Retries are off: a load test counts every failed call instead of hiding it.
"""

from __future__ import annotations

from serving.labels import MODEL_NAME
from serving.tfserving import BackendError, GrpcClient, PredictResult, RestClient

__all__ = ["BackendError", "PredictResult", "connect"]


def connect(
    address: str, *, timeout: float, model_name: str = MODEL_NAME
) -> GrpcClient | RestClient:
    """A client for ``grpc://host:port`` or ``http(s)://host:port``; ValueError otherwise."""
    if address.startswith("grpc://"):
        return GrpcClient(address[len("grpc://") :], model_name, timeout=timeout, retries=0)
    if address.startswith(("http://", "https://")):
        return RestClient(address, model_name, timeout=timeout, retries=0)
    raise ValueError(f"expected grpc://host:port or http://host:port, got {address!r}")
