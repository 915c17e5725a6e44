"""Versioned SavedModel export under the serving contract, written atomically.

Layout: ``<export_dir>/<version>/`` holds a SavedModel whose ``serving_default`` signature takes
``images`` float32 ``[None,28,28,1]`` in [0,1] and returns ``probabilities`` float32 ``[None,10]``,
``class_ids`` int64 ``[None]`` and ``class_names`` string ``[None]``, plus TF Serving warmup
records in ``assets.extra/tf_serving_warmup_requests`` and the same signature converted to
TensorFlow Lite in ``model.tflite`` (what the gateway's embedded backend runs, and TF Serving's
``--prefer_tflite_model``).

Example::

    from training.export import export_model
    path = export_model(model, "models/fashion_mnist")  # -> models/fashion_mnist/<next version>
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from serving.contract import (
    CLASS_NAMES,
    IMAGE_SIZE,
    INPUT_KEY,
    MODEL_NAME,
    OUTPUT_CLASS_IDS,
    OUTPUT_CLASS_NAMES,
    OUTPUT_PROBABILITIES,
    SIGNATURE_NAME,
    WARMUP_FILE,
    list_versions,
)
from serving.litemodel import write_tflite
from training.errors import ExportError

log = logging.getLogger(__name__)

WARMUP_BATCH_SIZES = (1, 8, 32, 64)

__all__ = ["ExportError", "export_model", "next_version", "write_warmup_records"]


def next_version(export_dir: str | Path) -> int:
    """One more than the highest version (`serving.contract.list_versions`), else 1.

    A folder with that number but no SavedModel (left by hand) is skipped, not overwritten.
    """
    base = Path(export_dir)
    versions = list_versions(base)
    version = versions[-1] + 1 if versions else 1
    while (base / str(version)).exists():
        version += 1
    return version


def _default_warmup_images(n: int = max(WARMUP_BATCH_SIZES)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((n, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32)


def write_warmup_records(
    path: str | Path, images: np.ndarray, batch_sizes: tuple[int, ...] = WARMUP_BATCH_SIZES
) -> int:
    """Write a TFRecord of ``PredictionLog`` protos (one PredictRequest per batch size).

    TF Serving replays these before marking the version AVAILABLE, so the first real requests
    do not pay for graph tracing. Returns the number of records written.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 1) or len(images) == 0:
        raise ExportError(f"warmup images must be float32 [N,28,28,1], got shape {images.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for size in batch_sizes:
            batch = np.resize(images, (size, IMAGE_SIZE, IMAGE_SIZE, 1))  # repeats if too few
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=MODEL_NAME, signature_name=SIGNATURE_NAME)
            )
            request.inputs[INPUT_KEY].CopyFrom(tf.make_tensor_proto(batch))
            record = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(record.SerializeToString())
            count += 1
    return count


def _flip_averaged(model: keras.Model, images: tf.Tensor) -> tf.Tensor:
    """The mean of the model's probabilities for each image and its mirror image, in one call
    on the doubled batch (the training recipes flip at random, so both views are in-domain)."""
    n = tf.shape(images)[0]
    both = model(tf.concat([images, tf.reverse(images, axis=[2])], axis=0), training=False)
    return (both[:n] + both[n:]) / 2.0


def _write_savedmodel(model: keras.Model, path: Path, *, test_time_flip: bool) -> None:
    class_names = tf.constant(CLASS_NAMES)

    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        raw = _flip_averaged(model, images) if test_time_flip else model(images, training=False)
        probabilities = tf.cast(raw, tf.float32)
        class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {
            OUTPUT_PROBABILITIES: probabilities,
            OUTPUT_CLASS_IDS: class_ids,
            OUTPUT_CLASS_NAMES: tf.gather(class_names, class_ids),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=SIGNATURE_NAME,
        fn=serve,
        input_signature=[
            tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 1], tf.float32, name=INPUT_KEY)
        ],
    )
    archive.write_out(str(path), verbose=False)


def _write_tflite(path: Path) -> None:
    try:
        write_tflite(path)
    except Exception as exc:  # the converter raises its own ConverterError and others
        raise ExportError(f"cannot convert the SavedModel to TensorFlow Lite: {exc}") from exc


def export_model(
    model: keras.Model,
    export_dir: str | Path,
    version: int | None = None,
    *,
    warmup_images: np.ndarray | None = None,
    overwrite: bool = False,
    extras: Callable[[Path, int], None] | None = None,
    test_time_flip: bool = False,
) -> Path:
    """Export ``model`` to ``<export_dir>/<version>/`` atomically and return that path.

    The SavedModel, the warmup records and whatever ``extras(tmp_dir, version)`` writes (e.g. the
    evaluation report) go into a temporary folder ``.tmp-<version>-<pid>`` that is renamed
    into place, so a server polling ``export_dir`` never sees half a model. ``version=None``
    picks :func:`next_version`. An existing version raises :class:`ExportError` unless
    ``overwrite`` is true. With ``test_time_flip`` the signature returns the mean of the
    probabilities of each image and its horizontal mirror (twice the model's work per image).
    """
    base = Path(export_dir)
    if version is None:
        version = next_version(base)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ExportError(f"version must be a positive integer, got {version!r}")
    final = base / str(version)
    if final.exists() and not overwrite:
        raise ExportError(
            f"version {version} already exists in {base}; pass --overwrite to replace it "
            f"or omit --version to export as version {next_version(base)}"
        )
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{version}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _write_savedmodel(model, tmp, test_time_flip=test_time_flip)
        write_warmup_records(
            tmp / WARMUP_FILE, _default_warmup_images() if warmup_images is None else warmup_images
        )
        _write_tflite(tmp)
        if extras is not None:
            extras(tmp, version)
        if final.exists():  # overwrite: move the old one aside first, then swap in the new one
            old = base / f".old-{version}-{os.getpid()}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s version %d to %s", MODEL_NAME, version, final)
    return final
