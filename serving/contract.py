"""The export contract: names that training, serving, clients and tests all rely on.

A model base path holds one folder per integer version (TF Serving's layout)::

    models/fashion_mnist/1/saved_model.pb
    models/fashion_mnist/1/assets.extra/tf_serving_warmup_requests
    models/fashion_mnist/2/saved_model.pb
    models/fashion_mnist/.tmp-3-1234/...     # being written: ignored

Each version's ``serving_default`` signature takes ``images`` float32 ``[None, 28, 28, 1]`` in
[0, 1] and returns ``probabilities`` float32 ``[None, 10]``, ``class_ids`` int64 ``[None]`` and
``class_names`` string ``[None]``. This module imports no TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CLASS_NAMES",
    "GATEWAY_PORT",
    "GRPC_PORT",
    "IMAGE_SIZE",
    "INPUT_KEY",
    "INPUT_SHAPE",
    "MODEL_NAME",
    "NUM_CLASSES",
    "OUTPUT_CLASS_IDS",
    "OUTPUT_CLASS_NAMES",
    "OUTPUT_PROBABILITIES",
    "REST_PORT",
    "SIGNATURE_NAME",
    "WARMUP_FILE",
    "list_versions",
]

MODEL_NAME = "fashion_mnist"
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 28
INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)

SIGNATURE_NAME = "serving_default"
INPUT_KEY = "images"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_CLASS_IDS = "class_ids"
OUTPUT_CLASS_NAMES = "class_names"
#: TF Serving's warmup records, relative to a version folder.
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"

#: TF Serving's (and serving.modelserver's) gRPC and REST ports; the gateway's HTTP port.
GRPC_PORT = 8500
REST_PORT = 8501
GATEWAY_PORT = 8080

_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def list_versions(base_path: str | os.PathLike[str]) -> list[int]:
    """The versions under ``base_path``, ascending.

    A version is a folder named with ASCII digits that holds ``saved_model.pb`` (or
    ``saved_model.pbtxt``). Anything else is ignored: files, dot folders such as the
    ``.tmp-*`` an export is written to, integer folders without a SavedModel. A missing base
    path gives an empty list.
    """
    base = Path(base_path)
    try:
        entries = list(base.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        int(entry.name)
        for entry in entries
        if entry.name.isascii()
        and entry.name.isdigit()
        and any((entry / name).is_file() for name in _SAVED_MODEL_FILES)
    )
