"""A SavedModel signature run by TensorFlow Lite (LiteRT): the same outputs, less CPU per call.

The training job writes ``model.tflite`` next to ``saved_model.pb`` in every version folder
(TF Serving's ``--prefer_tflite_model`` reads the same file). On a small CPU a call of this
model's ``serving_default`` costs ~140 µs per image in LiteRT's XNNPACK kernels against ~470 µs
at batch 1 and ~210 µs per image at batch 8 in a TensorFlow Session (docs/BENCHMARKS.md).

Example::

    blob = convert_saved_model("models/fashion_mnist/3")
    run = LiteSignature(blob, "serving_default", ["images"], ["class_ids", "probabilities"])
    class_ids, probabilities = run(images)        # safe from many threads at once

This module imports TensorFlow (for the converter); LiteRT is imported when a `LiteSignature` is
built. Each interpreter runs on one thread (``GATEWAY_TF_*_THREADS`` size TensorFlow's pools,
not these); the pool holds as many interpreters as calls ever ran at once (one per batch
thread in the gateway, up to the RPC threads in a model server without batching, ~3 MB each).
"""

from __future__ import annotations

import os
import queue
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from serving.contract import SIGNATURE_NAME

__all__ = ["TFLITE_FILE", "LiteSignature", "convert_saved_model", "write_tflite"]

#: The file name TF Serving's ``--prefer_tflite_model`` looks for in a version folder.
TFLITE_FILE = "model.tflite"


def convert_saved_model(
    path: str | os.PathLike[str], signature_name: str = SIGNATURE_NAME
) -> bytes:
    """Convert one signature of the SavedModel at ``path`` to a TensorFlow Lite flatbuffer
    (float32, TFLite's built-in ops only: no quantisation, so the outputs stay the model's)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(
        os.fspath(path), signature_keys=[signature_name]
    )
    return converter.convert()


def write_tflite(version_dir: str | os.PathLike[str]) -> Path:
    """Write ``model.tflite`` for the ``serving_default`` signature into ``version_dir``."""
    target = Path(version_dir) / TFLITE_FILE
    target.write_bytes(convert_saved_model(version_dir))
    return target


class LiteSignature:
    """One signature of a TFLite model as a thread-safe callable.

    Called like a ``Session.make_callable`` step: positional inputs in ``input_keys`` order,
    a list of outputs in ``output_keys`` order. LiteRT interpreters are not thread-safe, so
    each call borrows one from a pool (a new one when all are busy): concurrent callers run
    in parallel, each interpreter on one thread, and ``invoke`` releases the GIL.
    """

    def __init__(
        self,
        blob: bytes,
        signature_name: str,
        input_keys: Sequence[str],
        output_keys: Sequence[str],
    ) -> None:
        self._blob = blob
        self.signature_name = signature_name
        self.input_keys = list(input_keys)
        self.output_keys = list(output_keys)
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        runner = self._new_runner()  # fails now, not at the first request, on a bad file
        details = (runner.get_input_details(), runner.get_output_details())
        if sorted(details[0]) != sorted(self.input_keys) or sorted(details[1]) != sorted(
            self.output_keys
        ):
            raise ValueError(
                f"TFLite signature {signature_name!r} has inputs {sorted(details[0])} and "
                f"outputs {sorted(details[1])}; the SavedModel's has {sorted(self.input_keys)} "
                f"and {sorted(self.output_keys)}"
            )
        self._idle.put(runner)

    def _new_runner(self) -> Any:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=self._blob, num_threads=1)
        try:
            return interpreter.get_signature_runner(self.signature_name)
        except ValueError as exc:
            raise ValueError(f"TFLite model has no signature {self.signature_name!r}") from exc

    def close(self) -> None:
        """Drop the idle interpreters; calls fail from now on (as a closed Session's do)."""
        self._closed = True
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                return

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        if self._closed:
            raise RuntimeError(f"TFLite signature {self.signature_name!r} is closed")
        if any(x.ndim and len(x) == 0 for x in inputs):
            # XNNPACK cannot size a 0-row batch; TensorFlow answers it with 0-row outputs.
            one_row = [np.zeros((1, *x.shape[1:]), x.dtype) for x in inputs]
            return [out[:0] for out in self(*one_row)]
        try:
            runner = self._idle.get_nowait()
        except queue.Empty:
            runner = self._new_runner()
        # A runner whose call raised is dropped, not reused: its state is unknown.
        outputs = runner(**dict(zip(self.input_keys, inputs, strict=True)))
        self._idle.put(runner)
        return [outputs[key] for key in self.output_keys]
