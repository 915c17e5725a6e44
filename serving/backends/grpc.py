"""TF Serving's gRPC API as a `Backend`: ``PredictionService/Predict`` and
``ModelService/GetModelStatus``.

Requests carry the batch as raw ``tensor_content`` bytes (no per-float encoding), and ask only
for the ``probabilities`` output. The protobuf modules are loaded without the TensorFlow
runtime (see `serving.backends._protos`).

Example::

    from serving.backends.grpc import GrpcBackend
    with GrpcBackend("localhost:8500") as backend:
        result = backend.predict(batch)         # batch: float32 [N, 28, 28, 1]
        result.probabilities, result.model_version
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

from serving.backends import _protos
from serving.backends.errors import (
    UNKNOWN_LABEL,
    BackendBadResponse,
    BackendError,
    BackendInvalidRequest,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
)
from serving.backends.retry import call_with_retries, check_call_options
from serving.backends.types import (
    ClosesOnExit,
    PredictResult,
    VersionStatus,
    check_batch,
    newest_first,
)
from serving.contract import INPUT_KEY, MODEL_NAME, OUTPUT_PROBABILITIES, SIGNATURE_NAME

__all__ = ["GrpcBackend", "map_rpc_error"]

_MAX_MESSAGE = 64 * 1024 * 1024
_CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    # Reconnect quickly after the model server restarts. gRPC's backoff starts at 1 s and grows
    # (x1.6, +-20% jitter) to 120 s; while it waits, every call fails UNAVAILABLE at once, so
    # the cap is how long the gateway keeps answering 503 after the backend is back. Capped at
    # 500 ms (at most ~0.6 s with jitter; tests/test_faults.py holds "served again within 2 s");
    # a connect attempt every 0.5 s to a backend that is down costs nothing. Not
    # grpc.min_reconnect_backoff_ms: gRPC core also uses it as the *connect timeout*
    # (grpc/grpc#12830), and 100 ms fails handshakes on a busy machine.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    # Retries are ours (bounded, only on UNAVAILABLE); keep gRPC's transparent ones out.
    ("grpc.enable_retries", 0),
)


def map_rpc_error(exc: grpc.RpcError, what: str) -> BackendError:
    """Translate a gRPC error into the matching :mod:`serving.backends.errors` class.

    TF Serving answers an unknown version label with INVALID_ARGUMENT; that is a serving-side
    state (the label is not assigned yet), so it maps to :class:`ModelNotFound`, not to
    :class:`BackendInvalidRequest`.
    """
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    message = f"{what}: {details}"
    if code == grpc.StatusCode.UNAVAILABLE:
        return BackendUnavailable(message)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return BackendTimeout(message)
    if code == grpc.StatusCode.NOT_FOUND:
        return ModelNotFound(message)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        if details.startswith(UNKNOWN_LABEL):  # the pinned label is not served: not the input
            return ModelNotFound(message)
        return BackendInvalidRequest(message)
    name = code.name if code is not None else "UNKNOWN"
    return BackendError(f"{what}: gRPC {name}: {details}")


class GrpcBackend(ClosesOnExit):
    """One model on TF Serving (or ``serving.modelserver``) over gRPC.

    ``version`` or ``label`` pins the served version (ModelSpec.version / version_label);
    neither means the latest. ``timeout`` is the deadline of each call in seconds, retries
    included; ``retries`` bounds the retries on UNAVAILABLE.
    """

    def __init__(
        self,
        target: str,
        model_name: str = MODEL_NAME,
        *,
        version: int | None = None,
        label: str | None = None,
        timeout: float = 5.0,
        retries: int = 2,
    ) -> None:
        check_call_options(version, label, timeout, retries)
        self.target = target
        self.model_name = model_name
        self.version = version
        self.label = label
        self.timeout = timeout
        self.retries = retries
        self._pb = _protos.load()
        self._channel = grpc.insecure_channel(target, options=list(_CHANNEL_OPTIONS))
        self._predict = self._pb.prediction_service_pb2_grpc.PredictionServiceStub(
            self._channel
        ).Predict
        self._status = self._pb.model_service_pb2_grpc.ModelServiceStub(
            self._channel
        ).GetModelStatus
        # Everything but the tensor is the same for every request: build it once.
        self._template = self._pb.predict_pb2.PredictRequest()
        self._fill_spec(self._template.model_spec)
        self._template.model_spec.signature_name = SIGNATURE_NAME
        self._template.output_filter.append(OUTPUT_PROBABILITIES)
        self._dt_float = self._pb.types_pb2.DT_FLOAT

    def _fill_spec(self, spec: object) -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = int(self.version)
        elif self.label is not None:
            spec.version_label = self.label

    def __repr__(self) -> str:
        pin = f" version={self.version}" if self.version is not None else ""
        pin += f" label={self.label!r}" if self.label is not None else ""
        return f"GrpcBackend({self.target!r}, {self.model_name!r}{pin})"

    def predict(self, batch: np.ndarray) -> PredictResult:
        """Classify a float32 ``[N, 28, 28, 1]`` batch → probabilities ``[N, 10]`` + model version."""
        arr = check_batch(batch)
        request = self._pb.predict_pb2.PredictRequest()
        request.CopyFrom(self._template)
        tensor = request.inputs[INPUT_KEY]
        tensor.dtype = self._dt_float
        tensor.tensor_shape.dim.extend(tensor.tensor_shape.Dim(size=int(d)) for d in arr.shape)
        tensor.tensor_content = arr.tobytes()
        what = f"Predict {self.model_name} on {self.target}"
        response = self._call(self._predict, request, what)
        probabilities = self._read_probabilities(response, arr.shape[0], what)
        if response.model_spec.HasField("version"):
            model_version = int(response.model_spec.version.value)
        else:
            model_version = int(self.version or 0)
        return PredictResult(probabilities=probabilities, model_version=model_version)

    def _call(self, method: Callable[..., Any], request: object, what: str) -> Any:
        """One RPC within the deadline, retried on UNAVAILABLE; errors as `BackendError`."""

        def attempt(remaining: float) -> Any:
            try:
                return method(request, timeout=remaining)
            except grpc.RpcError as exc:
                raise map_rpc_error(exc, what) from None

        return call_with_retries(attempt, timeout=self.timeout, retries=self.retries, what=what)

    def _read_probabilities(self, response: object, n: int, what: str) -> np.ndarray:
        if OUTPUT_PROBABILITIES not in response.outputs:
            raise BackendBadResponse(f"{what}: response has no {OUTPUT_PROBABILITIES!r} output")
        tensor = response.outputs[OUTPUT_PROBABILITIES]
        if tensor.dtype != self._dt_float:
            raise BackendBadResponse(
                f"{what}: {OUTPUT_PROBABILITIES!r} has dtype {tensor.dtype}, not DT_FLOAT"
            )
        shape = tuple(int(d.size) for d in tensor.tensor_shape.dim)
        if tensor.tensor_content:
            values = np.frombuffer(tensor.tensor_content, dtype="<f4")
        else:
            values = np.asarray(tensor.float_val, dtype=np.float32)
        if len(shape) != 2 or shape[0] != n or values.size != shape[0] * shape[1]:
            raise BackendBadResponse(
                f"{what}: {OUTPUT_PROBABILITIES!r} has shape {list(shape)} with {values.size} values "
                f"for a batch of {n}"
            )
        return values.astype(np.float32).reshape(shape)

    def status(self) -> list[VersionStatus]:
        """The model's versions and their states, newest first (only the pinned one when pinned)."""
        request = self._pb.get_model_status_pb2.GetModelStatusRequest()
        self._fill_spec(request.model_spec)
        what = f"GetModelStatus {self.model_name} on {self.target}"
        response = self._call(self._status, request, what)
        result = []
        for status in response.model_version_status:
            state = type(status).State.Name(status.state)
            error = ""
            if status.status.error_code != 0:
                code = status.status.DESCRIPTOR.fields_by_name["error_code"].enum_type
                code_name = code.values_by_number.get(status.status.error_code)
                error = status.status.error_message or (
                    code_name.name if code_name else str(status.status.error_code)
                )
            result.append(VersionStatus(version=int(status.version), state=state, error=error))
        return newest_first(result)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()
