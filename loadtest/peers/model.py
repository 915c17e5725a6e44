"""The work every peer does, imported inside the peers' venvs: decode, one model call, answer.

- :func:`decode` is :func:`serving.preprocess.decode_image` (the gateway's preprocessing);
- :class:`Model` loads the newest version under the model base dir with the project's own
  :class:`serving.savedmodel.LoadedModel` (the embedded gateway's loader) and runs
  ``serving_default`` on a stacked batch, on the version's ``model.tflite`` where there is one
  unless ``GATEWAY_PREFER_TFLITE_MODEL`` turns it off (the gateway's setting, read the same
  way), TensorFlow limited to one intra-op and one inter-op thread per process as the
  gateway's workers are (``GATEWAY_TF_*_THREADS`` defaults);
- :func:`predictions` turns ``[N, 10]`` probabilities into the gateway's prediction objects
  (``class_id``, ``label``, ``confidence``, ``probabilities``, rounded to 6 decimals).

Only numpy, Pillow, TensorFlow and LiteRT are needed (TensorFlow is imported when a model is
loaded).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from serving.contract import CLASS_NAMES, IMAGE_SIZE, MODEL_NAME, list_versions
from serving.gateway.config import GatewayConfig
from serving.preprocess import decode_image, to_batch
from serving.savedmodel import LoadedModel

MODEL_DIR_ENV = "CONVSERVE_PEER_MODEL_DIR"
DECIMALS = 6
#: Settings every peer uses: the gateway's defaults (GATEWAY_BATCH_MAX_SIZE=64,
#: GATEWAY_BATCH_TIMEOUT_MS=2, GATEWAY_WORKERS=2).
MAX_BATCH_SIZE = 64
BATCH_WAIT_SECONDS = 0.002
WORKERS = 2
decode = decode_image


def model_dir_from_env() -> Path:
    """The model base dir the launcher passed in ``CONVSERVE_PEER_MODEL_DIR``."""
    try:
        return Path(os.environ[MODEL_DIR_ENV])
    except KeyError:
        raise RuntimeError(f"{MODEL_DIR_ENV} is not set (the model base dir)") from None


class Model:
    """The newest SavedModel version under ``base_dir``, ready to classify batches."""

    def __init__(self, base_dir: Path) -> None:
        import tensorflow as tf  # only here: this module is imported before workers fork

        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # TensorFlow already running in this process (tests): keep its pools
        versions = list_versions(base_dir)
        if not versions:
            raise RuntimeError(f"no SavedModel version under {base_dir}")
        self.name = MODEL_NAME
        self.version = versions[-1]
        self._loaded = LoadedModel.load(
            Path(base_dir) / str(self.version),
            prefer_tflite=GatewayConfig.from_env().prefer_tflite_model,
        )
        # Warm up before the server says it is ready, as the gateway does with the export's
        # warmup records (replaying those needs tensorflow-serving-api, not in the peer venvs).
        blank = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
        for size in (1, MAX_BATCH_SIZE):
            self.probabilities([blank] * size)

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``serving_default`` on decoded ``[28, 28, 1]`` images → ``[N, 10]`` probabilities."""
        batch = to_batch(images, check_range=False)  # decoded images, as the gateway's
        return self._loaded.predict({"images": batch})["probabilities"]

    def classify(self, pngs: Sequence[bytes]) -> list[dict]:
        """Decode and classify encoded images, one prediction each, in order."""
        return predictions(self.probabilities([decode(p) for p in pngs]))


def predictions(probabilities: np.ndarray) -> list[dict]:
    """The gateway's prediction objects for a ``[N, 10]`` probability array."""
    probs = np.round(np.asarray(probabilities, dtype=np.float64), DECIMALS)
    ids = probs.argmax(axis=1).tolist()
    return [
        {"class_id": c, "label": CLASS_NAMES[c], "confidence": row[c], "probabilities": row}
        for c, row in zip(ids, probs.tolist(), strict=True)
    ]
