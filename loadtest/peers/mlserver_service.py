"""MLServer peer: a custom runtime behind MLServer's adaptive batching (its venv's ``mlserver``).

MLServer speaks the V2 (Open Inference) protocol only, so a request is
``POST /v2/models/fashion_mnist/infer`` with one ``BYTES`` input ``images`` of shape ``[N]``
holding base64 PNGs (``"parameters": {"content_type": "base64"}``); the answer has the outputs
``labels`` (BYTES ``[N]``), ``class_ids`` (INT64 ``[N]``) and ``probabilities`` (FP32
``[N, 10]``). MLServer's adaptive batcher concatenates concurrent requests along the first
dimension (``max_batch_size=64``, ``max_batch_time=0.002`` s) before :meth:`predict`, which
decodes every PNG with ``serving.preprocess`` and runs ``serving_default`` once. The HTTP
server is MLServer's single uvicorn process; inference runs in ``parallel_workers=2`` worker
processes, each with its own model.

Configured by environment (``MLSERVER_*``, see :func:`loadtest.peers.registry.peer_env`)::

    MLSERVER_MODEL_IMPLEMENTATION=loadtest.peers.mlserver_service.FashionMnistRuntime \\
        MLSERVER_MODEL_NAME=fashion_mnist ... mlserver start <empty folder>
"""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import Base64Codec, NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse

from loadtest.peers.model import DECIMALS, Model, decode, model_dir_from_env
from serving.contract import CLASS_NAMES


class FashionMnistRuntime(MLModel):
    """The SavedModel as an MLServer inference runtime."""

    async def load(self) -> bool:
        self._model = Model(model_dir_from_env())
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        pngs = Base64Codec.decode_input(payload.inputs[0])
        probs = np.round(self._model.probabilities([decode(p) for p in pngs]), DECIMALS)
        ids = probs.argmax(axis=1)
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[
                StringCodec.encode_output("labels", [CLASS_NAMES[i] for i in ids]),
                NumpyCodec.encode_output("class_ids", ids.astype(np.int64)),
                NumpyCodec.encode_output("probabilities", probs.astype(np.float32)),
            ],
        )
