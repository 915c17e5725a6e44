"""The load tests' one connection to TF Serving / the model server: the project's backend layer.

``connect("grpc://host:8500")`` or ``connect("http://host:8501")`` returns a
`serving.backends.Backend` (``predict(batch) -> PredictResult``, ``status()``). Retries are off:
a load test counts every failed call instead of hiding it.
"""

from __future__ import annotations

from serving import backends
from serving.backends import Backend, BackendError, PredictResult
from serving.contract import MODEL_NAME

__all__ = ["BackendError", "PredictResult", "connect"]


def connect(address: str, *, timeout: float, model_name: str = MODEL_NAME) -> Backend:
    """A backend for ``grpc://host:port`` or ``http(s)://host:port``; ValueError otherwise."""
    if not address.startswith(("grpc://", "http://", "https://")):
        raise ValueError(f"expected grpc://host:port or http://host:port, got {address!r}")
    return backends.connect(address, model_name=model_name, timeout=timeout, retries=0)
