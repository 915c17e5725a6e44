"""TF Serving's gRPC services, on the servicer base classes of ``tensorflow-serving-api``.

``tensorflow.serving.PredictionService``: ``Predict`` and ``GetModelMetadata`` (``Classify``,
``Regress``, ``MultiInference`` keep the base class's UNIMPLEMENTED answer);
``tensorflow.serving.ModelService``: ``GetModelStatus`` and ``HandleReloadConfigRequest``.
Error codes follow TF Serving: unknown model or version NOT_FOUND, bad input
INVALID_ARGUMENT, full batching queue UNAVAILABLE.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import any_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.modelserver.config import ConfigFileError
from serving.modelserver.core import ServerCore, status_proto
from serving.modelserver.metrics import ServerMetrics
from serving.modelserver.tensors import ndarray_to_tensor_proto, tensor_proto_to_ndarray
from serving.savedmodel import InvalidInput, ModelError

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _spec(model_spec: Any) -> tuple[str, int | None, str | None]:
    """(name, version, label) of a ModelSpec; both version and label is INVALID_ARGUMENT."""
    version = model_spec.version.value if model_spec.HasField("version") else None
    label = model_spec.version_label or None
    if version is not None and label is not None:
        raise InvalidInput(
            f"Both model version ({version}) and model version label ({label}) cannot be supplied."
        )
    return model_spec.name, version, label


class _Observed:
    """Maps `ModelError` to gRPC status codes and records metrics, in one place."""

    def __init__(self, metrics: ServerMetrics | None):
        self.metrics = metrics

    def run(self, api: str, model_name: str, context: grpc.ServicerContext, fn: Callable[[], Any]):
        started = time.perf_counter()
        code = "OK"
        try:
            return fn()
        except ModelError as exc:
            code = exc.code
            context.abort(getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN), str(exc))
        except ConfigFileError as exc:
            code = "INVALID_ARGUMENT"
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception:  # never a traceback to the client: log it, answer INTERNAL
            code = "INTERNAL"
            log.exception("gRPC %s failed", api)
            context.abort(grpc.StatusCode.INTERNAL, "Internal error; see the model server log")
        finally:
            if self.metrics is not None and model_name:
                self.metrics.record_request(
                    model_name, api, "GRPC", code, time.perf_counter() - started
                )


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``Predict`` and ``GetModelMetadata`` on a `ServerCore`."""

    def __init__(self, core: ServerCore, metrics: ServerMetrics | None = None):
        self.core = core
        self._observed = _Observed(metrics)

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Run the model on the request's TensorProtos; outputs as ``tensor_content``."""

        def run() -> Any:
            name, version, label = _spec(request.model_spec)
            inputs = {k: tensor_proto_to_ndarray(v, k) for k, v in request.inputs.items()}
            result = self.core.predict(
                name,
                inputs,
                version=version,
                label=label,
                signature_name=request.model_spec.signature_name,
                output_filter=list(request.output_filter) or None,
                timeout_s=context.time_remaining(),
            )
            response = predict_pb2.PredictResponse()
            response.model_spec.name = name
            response.model_spec.version.value = result.version
            response.model_spec.signature_name = result.signature_name
            for k, arr in result.outputs.items():
                response.outputs[k].CopyFrom(ndarray_to_tensor_proto(arr))
            return response

        return self._observed.run("predict", request.model_spec.name, context, run)

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        """The SignatureDefMap of a version (``metadata_field`` must be ``signature_def``)."""

        def run() -> Any:
            name, version, label = _spec(request.model_spec)
            fields = list(request.metadata_field)
            if not fields:
                raise InvalidInput(
                    "GetModelMetadataRequest must specify at least one metadata_field"
                )
            for f in fields:
                if f != "signature_def":
                    raise InvalidInput(f"Metadata field {f} is not supported")
            v, defs = self.core.metadata(name, version, label)
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for k, d in defs.items():
                sig_map.signature_def[k].CopyFrom(d)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = name
            response.model_spec.version.value = v
            packed = any_pb2.Any()
            packed.Pack(sig_map)
            response.metadata["signature_def"].CopyFrom(packed)
            return response

        return self._observed.run("GetModelMetadata", request.model_spec.name, context, run)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """``GetModelStatus`` and ``HandleReloadConfigRequest`` on a `ServerCore`."""

    def __init__(self, core: ServerCore, metrics: ServerMetrics | None = None):
        self.core = core
        self._observed = _Observed(metrics)

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Per-version states of a model."""

        def run() -> Any:
            name, version, label = _spec(request.model_spec)
            return status_proto(self.core.status(name, version, label))

        return self._observed.run("GetModelStatus", request.model_spec.name, context, run)

    def HandleReloadConfigRequest(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Serve the models of ``request.config`` from now on."""

        def run() -> Any:
            self.core.apply_config(request.config)
            return model_management_pb2.ReloadConfigResponse()

        return self._observed.run("HandleReloadConfigRequest", "", context, run)


def prestarted_executor(max_workers: int) -> futures.ThreadPoolExecutor:
    """A thread pool with all ``max_workers`` threads running from the start.

    `ThreadPoolExecutor` adds a thread whenever a call finds none idle, so its size would follow
    the highest concurrency seen so far: a thread count that creeps up under load, which a soak
    cannot tell from a leak. TF Serving's gRPC server has a fixed pool; so does this one.
    """
    executor = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc")
    all_busy = threading.Barrier(max_workers)
    # Each task holds its thread until every thread exists, so each submit starts a new one.
    for done in [executor.submit(all_busy.wait) for _ in range(max_workers)]:
        done.result()
    return executor


def create_grpc_server(
    core: ServerCore,
    address: str,
    *,
    metrics: ServerMetrics | None = None,
    max_workers: int = 32,
) -> tuple[grpc.Server, int]:
    """A started-ready (not yet started) gRPC server on ``address``; returns (server, port)."""
    server = grpc.server(
        prestarted_executor(max_workers),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core, metrics), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core, metrics), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc raises RuntimeError("Failed to bind ...")
        raise OSError(f"cannot bind the gRPC port {address}: address in use?") from exc
    if port == 0:
        raise OSError(f"cannot bind the gRPC port {address}")
    return server, port


__all__ = ["ModelService", "PredictionService", "create_grpc_server", "prestarted_executor"]
