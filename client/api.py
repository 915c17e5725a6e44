"""Python clients for the convserve gateway and for TF Serving directly.

Example::

    from client import GatewayClient, TFServingClient

    with GatewayClient("http://localhost:8080") as gw:
        [p] = gw.predict("tests/support/images/ankle_boot.png")
        print(p.label, p.confidence)               # e.g. "Ankle boot 0.93"

    with TFServingClient("localhost:8500", protocol="grpc") as tfs:   # or ("http://localhost:8501", protocol="rest")
        preds = tfs.predict([open("shoe.jpg", "rb").read(), pixels_28x28])

Inputs, for ``predict``: a file path (``str`` / ``Path``), image bytes, a 28x28 array of 0-255
pixel values (the dataset's form: light object on black), or a list of those; an array of shape
``[N, 28, 28]`` or ``[N, 28, 28, 1]`` counts as N arrays. The result is always a list of
:class:`Prediction`, one per input, in order.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests

from client.errors import (
    ClientConnectionError,
    ClientError,
    ClientInputError,
    ClientTimeout,
    ServerError,
)
from serving.backends import (
    BackendError,
    BackendInvalidRequest,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
    VersionStatus,
    connect,
)
from serving.contract import CLASS_NAMES, GATEWAY_PORT, MODEL_NAME
from serving.preprocess import PreprocessError, array_to_input, decode_image, to_batch

__all__ = [
    "API_KEY_ENV",
    "GatewayClient",
    "Input",
    "Prediction",
    "TFServingClient",
    "api_key_headers",
    "sniff_content_type",
]

#: Environment variable the CLI and the load test read a gateway API key from.
API_KEY_ENV = "CONVSERVE_API_KEY"

Input = str | os.PathLike | bytes | np.ndarray

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)
_SUPPORTED_TEXT = "PNG, JPEG, WebP, GIF, BMP"


def api_key_headers(api_key: str | None) -> dict[str, str]:
    """The request header that carries ``api_key`` to the gateway (none for no key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


@dataclass(frozen=True)
class Prediction:
    """One classified input."""

    label: str
    class_id: int
    confidence: float
    probabilities: list[float] = field(repr=False)
    model_version: int | None = None

    @classmethod
    def from_probabilities(cls, probs: Sequence[float], model_version: int | None) -> Prediction:
        """Build from a row of 10 class probabilities."""
        row = [float(p) for p in probs]
        class_id = int(np.argmax(row))
        return cls(CLASS_NAMES[class_id], class_id, row[class_id], row, model_version)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the gateway's prediction object plus ``model_version``)."""
        return {
            "label": self.label,
            "class_id": self.class_id,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
            "model_version": self.model_version,
        }


def sniff_content_type(data: bytes) -> str | None:
    """The image MIME type from the first bytes (PNG, JPEG, GIF, BMP, WebP), else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    return None


def _as_items(inputs: Input | Sequence[Input]) -> list[Input]:
    """Normalise ``predict``'s argument into a list of single inputs."""
    if isinstance(inputs, (str, bytes, bytearray, os.PathLike)):
        return [inputs]
    if isinstance(inputs, np.ndarray):
        if inputs.ndim == 2 or inputs.shape == (28, 28, 1):
            return [inputs]
        if inputs.ndim in (3, 4):
            return list(inputs)
        raise ClientInputError(f"cannot interpret an array of shape {inputs.shape} as images")
    items = list(inputs)
    if not items:
        raise ClientInputError("no inputs given")
    return items


def _read_image(item: Input, index: int) -> tuple[str, bytes]:
    """(display name, bytes) of a path or bytes input; raises ClientInputError."""
    if isinstance(item, (bytes, bytearray)):
        name, data = f"input {index}", bytes(item)
    else:
        path = Path(item)
        name = str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ClientInputError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise ClientInputError(f"{name}: is a directory") from None
        except OSError as exc:
            raise ClientInputError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if sniff_content_type(data) is None:
        raise ClientInputError(f"{name}: not a supported image ({_SUPPORTED_TEXT})")
    return name, data


def _pixel_list(item: np.ndarray, index: int) -> list:
    arr = np.asarray(item)
    if arr.shape == (28, 28, 1):
        arr = arr[..., 0]
    if arr.shape != (28, 28):
        raise ClientInputError(f"input {index}: pixel array must be 28x28, got {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64).tolist()
    return arr.astype(np.float64).tolist()


class GatewayClient:
    """HTTP client for the gateway's ``/v1/predict`` (docs/ARCHITECTURE.md, "Gateway HTTP API").

    One image goes as the raw body with its ``Content-Type``; several images as
    ``multipart/form-data``; pixel arrays (mixed with images or not) as JSON ``instances``.
    ``timeout`` (seconds) applies to connecting and to reading the answer. ``api_key`` is sent
    as ``Authorization: Bearer`` on every request, for a gateway with API keys configured.
    """

    def __init__(
        self,
        url: str = f"http://localhost:{GATEWAY_PORT}",
        timeout: float = 10.0,
        *,
        api_key: str | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"gateway URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers.update(api_key_headers(api_key))

    def __repr__(self) -> str:
        return f"GatewayClient({self.url!r})"

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = self.url + path
        try:
            response = self._session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.exceptions.ConnectTimeout:
            raise ClientTimeout(
                f"connecting to {self.url} timed out after {self.timeout:g} s"
            ) from None
        except requests.exceptions.Timeout:
            raise ClientTimeout(f"{self.url} did not answer within {self.timeout:g} s") from None
        except requests.exceptions.ConnectionError:
            raise ClientConnectionError(f"cannot connect to the gateway at {self.url}") from None
        except requests.exceptions.RequestException as exc:
            raise ClientError(f"request to {url} failed: {exc}") from None
        if response.status_code >= 400:
            raise _server_error(response)
        return response

    def predict(self, inputs: Input | Sequence[Input]) -> list[Prediction]:
        """Classify one input or a list of inputs → one :class:`Prediction` per input, in order."""
        items = _as_items(inputs)
        if any(isinstance(item, np.ndarray) for item in items):
            instances: list[Any] = []
            for i, item in enumerate(items):
                if isinstance(item, np.ndarray):
                    instances.append(_pixel_list(item, i))
                else:
                    _, data = _read_image(item, i)
                    instances.append({"b64": base64.b64encode(data).decode("ascii")})
            body = json.dumps({"instances": instances}, separators=(",", ":")).encode()
            response = self._request(
                "POST", "/v1/predict", data=body, headers={"Content-Type": "application/json"}
            )
        else:
            images = [_read_image(item, i) for i, item in enumerate(items)]
            if len(images) == 1:
                data = images[0][1]
                response = self._request(
                    "POST",
                    "/v1/predict",
                    data=data,
                    headers={"Content-Type": sniff_content_type(data) or ""},
                )
            else:
                files = [
                    ("file", (Path(name).name, data, sniff_content_type(data)))
                    for name, data in images
                ]
                response = self._request("POST", "/v1/predict", files=files)
        return _parse_predictions(response, len(items))

    def models(self) -> dict[str, Any]:
        """``GET /v1/models``: model name, versions and states, labels."""
        return _json_body(self._request("GET", "/v1/models"))

    def ready(self) -> bool:
        """True when ``GET /readyz`` answers 200 (the backend has the model AVAILABLE)."""
        try:
            self._request("GET", "/readyz")
        except ServerError:
            return False
        return True

    def close(self) -> None:
        """Close pooled connections."""
        self._session.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _json_body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ClientError(
            f"{response.url} answered {response.status_code} with a non-JSON body"
        ) from None


def _server_error(response: requests.Response) -> ServerError:
    """The gateway's ``{"error": {"code", "message"}}``, or whatever the body says."""
    try:
        body = response.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return ServerError(response.status_code, str(err.get("code", "error")), err["message"])
    if isinstance(err, str):  # TF Serving's REST error shape
        return ServerError(response.status_code, "error", err)
    text = " ".join(response.text.split())[:200] or response.reason or ""
    return ServerError(response.status_code, "http_error", text)


def _parse_predictions(response: requests.Response, n: int) -> list[Prediction]:
    body = _json_body(response)
    try:
        version = body.get("model_version")
        preds = body["predictions"]
        if len(preds) != n:
            raise ValueError(f"{len(preds)} predictions for {n} inputs")
        return [
            Prediction(
                label=str(p["label"]),
                class_id=int(p["class_id"]),
                confidence=float(p["confidence"]),
                probabilities=[float(x) for x in p["probabilities"]],
                model_version=int(version) if version is not None else None,
            )
            for p in preds
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ClientError(f"unexpected answer from {response.url}: {exc}") from None


# The HTTP status the gateway answers each backend error with (serving.gateway.errors);
# ServerError.status carries it for direct calls too. A test checks that the two agree.
_GATEWAY_STATUS: tuple[tuple[type[BackendError], int], ...] = (
    (BackendInvalidRequest, 400),
    (ModelNotFound, 503),
    (BackendError, 502),
)


@contextlib.contextmanager
def _client_errors() -> Iterator[None]:
    """Re-raise `serving.backends` errors as the client's own exceptions."""
    try:
        yield
    except BackendUnavailable as exc:
        raise ClientConnectionError(str(exc)) from None
    except BackendTimeout as exc:
        raise ClientTimeout(str(exc)) from None
    except BackendError as exc:
        status = next(code for cls, code in _GATEWAY_STATUS if isinstance(exc, cls))
        raise ServerError(status, exc.code, str(exc)) from None


class TFServingClient:
    """Talk to TF Serving (or ``serving.modelserver``) directly, preprocessing locally.

    ``protocol="grpc"``: ``target`` is ``host:port`` (8500), the batch goes as ``tensor_content``.
    ``protocol="rest"``: ``target`` is ``http://host:port`` (8501). The backend is built by
    `serving.backends.connect`.
    """

    def __init__(
        self,
        target: str,
        protocol: str = "grpc",
        timeout: float = 10.0,
        *,
        model_name: str = MODEL_NAME,
        version: int | None = None,
        label: str | None = None,
        retries: int = 2,
    ) -> None:
        if protocol == "grpc":
            address = f"grpc://{target}"
        elif protocol == "rest":
            address = target
        else:
            raise ValueError(f"protocol must be 'grpc' or 'rest', got {protocol!r}")
        self._backend = connect(
            address,
            model_name=model_name,
            version=version,
            label=label,
            timeout=timeout,
            retries=retries,
        )
        self.target = target
        self.protocol = protocol

    def __repr__(self) -> str:
        return f"TFServingClient({self.target!r}, protocol={self.protocol!r})"

    def preprocess(self, inputs: Input | Sequence[Input]) -> np.ndarray:
        """The float32 ``[N, 28, 28, 1]`` batch that :meth:`predict` sends."""
        tensors = []
        for i, item in enumerate(_as_items(inputs)):
            try:
                if isinstance(item, np.ndarray):
                    tensors.append(array_to_input(item))
                else:
                    name, data = _read_image(item, i)
                    try:
                        tensors.append(decode_image(data))
                    except PreprocessError as exc:
                        raise ClientInputError(f"{name}: {exc}") from None
            except PreprocessError as exc:
                raise ClientInputError(f"input {i}: {exc}") from None
        return to_batch(tensors)

    def predict(self, inputs: Input | Sequence[Input]) -> list[Prediction]:
        """Classify one input or a list of inputs → one :class:`Prediction` per input, in order."""
        batch = self.preprocess(inputs)
        with _client_errors():
            result = self._backend.predict(batch)
        return [
            Prediction.from_probabilities(row, result.model_version)
            for row in result.probabilities.tolist()
        ]

    def model_status(self) -> list[VersionStatus]:
        """The model's versions and states, newest first."""
        with _client_errors():
            return self._backend.status()

    def close(self) -> None:
        """Close the connection."""
        self._backend.close()

    def __enter__(self) -> TFServingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
