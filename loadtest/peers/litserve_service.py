"""LitServe peer: LitServe's own batching over base64 PNGs (run with its venv's python).

``POST /v1/predict`` with ``{"images": ["<base64 PNG>", ...]}`` (LitServe hands
``decode_request`` the parsed JSON or form, never the raw body) answers
``{"predictions": [...]}``, one gateway-shaped prediction per image. ``decode_request`` decodes
each PNG with ``serving.preprocess`` in the inference worker; LitServe then groups up to 64
requests waiting at most 2 ms (``max_batch_size``/``batch_timeout``), ``predict`` runs
``serving_default`` once on all their images and splits the answers back per request.
Two uvicorn API servers feed two CPU inference worker processes (LitServe's default pairing
for ``workers_per_device=2``).

Usage::

    CONVSERVE_PEER_MODEL_DIR=models/fashion_mnist PYTHONPATH=. \\
        python -m loadtest.peers.litserve_service --port 8000
"""

from __future__ import annotations

import argparse
import base64
import signal

import litserve as ls
import numpy as np

from loadtest.peers.model import (
    BATCH_WAIT_SECONDS,
    MAX_BATCH_SIZE,
    WORKERS,
    Model,
    decode,
    model_dir_from_env,
    predictions,
)


class FashionMnistAPI(ls.LitAPI):
    """One request = a list of images; one batch = several requests' lists."""

    def setup(self, device: str) -> None:
        self.model = Model(model_dir_from_env())

    def decode_request(self, request: dict) -> list[np.ndarray]:
        return [decode(base64.b64decode(s, validate=True)) for s in request["images"]]

    def batch(self, inputs: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        return inputs  # kept per request; predict flattens them into one model call

    def predict(self, batch: list[list[np.ndarray]]) -> list[list[dict]]:
        preds = predictions(self.model.probabilities([img for req in batch for img in req]))
        out, start = [], 0
        for req in batch:
            out.append(preds[start : start + len(req)])
            start += len(req)
        return out

    def unbatch(self, output: list[list[dict]]) -> list[list[dict]]:
        return output

    def encode_response(self, output: list[dict]) -> dict:
        return {"predictions": output}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.peers.litserve_service")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    api = FashionMnistAPI(
        max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_WAIT_SECONDS, api_path="/v1/predict"
    )
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=WORKERS)
    # LitServe stops its API servers and inference workers on Ctrl+C only; a launcher sends
    # SIGTERM, which would otherwise leave them running.
    signal.signal(signal.SIGTERM, _interrupt)
    server.run(
        host=args.host,
        port=args.port,
        num_api_servers=WORKERS,
        generate_client_file=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
