"""Load TF Serving's generated protobuf modules without starting the TensorFlow runtime.

``tensorflow_serving.apis.*_pb2`` import ``tensorflow.core.framework.tensor_pb2`` and friends,
which are plain generated modules, but importing them the normal way first executes
``tensorflow/__init__.py`` — the whole TensorFlow runtime (~7 s, ~1,600 modules, hundreds of MB).
A process that only talks to TF Serving needs none of that.

So, unless TensorFlow is already imported, :func:`load` puts a bare placeholder package named
``tensorflow`` (whose ``__path__`` points at the installed package) into ``sys.modules`` while
the generated modules are imported, then removes it again. The generated modules stay cached
under their real names, so a later ``import tensorflow`` in the same process runs the real
``__init__`` and reuses these very modules (same message classes, no duplicate descriptors).
One visible difference: the real ``tensorflow`` module then lacks the ``core``/``compiler``
*attributes* (``import tensorflow.core.framework.tensor_pb2`` still works via ``sys.modules``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import threading
import types
from dataclasses import dataclass

_lock = threading.Lock()


@dataclass(frozen=True)
class Protos:
    """The generated modules the clients use."""

    predict_pb2: types.ModuleType
    get_model_status_pb2: types.ModuleType
    model_service_pb2_grpc: types.ModuleType
    prediction_service_pb2_grpc: types.ModuleType
    types_pb2: types.ModuleType


_MODULES = (
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.get_model_status_pb2",
    "tensorflow_serving.apis.model_service_pb2_grpc",
    "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "tensorflow.core.framework.types_pb2",
)


def _import_all() -> Protos:
    return Protos(*(importlib.import_module(name) for name in _MODULES))


@functools.cache
def load() -> Protos:
    """Import (once) and return the protobuf/gRPC modules, keeping TensorFlow's runtime out."""
    with _lock:
        if "tensorflow" in sys.modules:
            return _import_all()
        spec = importlib.util.find_spec("tensorflow")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("the tensorflow package (for its generated protos) is not installed")
        placeholder = types.ModuleType("tensorflow", "placeholder while loading generated protos")
        placeholder.__path__ = list(spec.submodule_search_locations)
        sys.modules["tensorflow"] = placeholder
        try:
            return _import_all()
        finally:
            if sys.modules.get("tensorflow") is placeholder:
                del sys.modules["tensorflow"]
