"""BentoML 1.4 peer: adaptive batching over base64 PNGs (run by ``bentoml serve``, its venv).

``POST /v1/predict`` with ``{"images": ["<base64 PNG>", ...]}`` (BentoML's JSON input; a raw
body cannot feed a batchable API) answers a JSON list with one gateway-shaped prediction per
image. BentoML merges concurrent requests' lists into one call of :meth:`FashionMnist.predict`
(at most 64 images), which decodes every PNG with ``serving.preprocess`` and runs
``serving_default`` once. Two worker processes, each with its own batcher and model.

Started as (see :mod:`loadtest.peers.registry`)::

    CONVSERVE_PEER_MODEL_DIR=models/fashion_mnist PYTHONPATH=. \\
        bentoml serve loadtest.peers.bentoml_service:FashionMnist --host 127.0.0.1 --port 3000
"""

from __future__ import annotations

import base64

import bentoml

from loadtest.peers.model import MAX_BATCH_SIZE, WORKERS, Model, model_dir_from_env


# No access log: the gateway's is off by default too (GATEWAY_ACCESS_LOG).
@bentoml.service(
    name="convserve_fashion_mnist",
    workers=WORKERS,
    traffic={"timeout": 30},
    logging={"access": {"enabled": False}},
)
class FashionMnist:
    """The SavedModel behind one batchable API."""

    def __init__(self) -> None:
        self.model = Model(model_dir_from_env())

    # max_latency_ms stays at BentoML's default (60 s): a lower budget makes the dispatcher
    # refuse requests with 503 under load instead of queueing them as the gateway does.
    @bentoml.api(route="/v1/predict", batchable=True, max_batch_size=MAX_BATCH_SIZE)
    def predict(self, images: list[str]) -> list[dict]:
        """Classify a merged batch of base64-encoded images."""
        return self.model.classify([base64.b64decode(s, validate=True) for s in images])
