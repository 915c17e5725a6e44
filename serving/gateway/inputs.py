"""The request's images as model inputs: raw image bodies, multipart files, JSON instances.

Limits are checked before decoding: body size, images per request, and the pixels each
image's header declares (per image and per request), so a small body of highly compressible
images cannot buy minutes of CPU.
"""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np
from flask import Request

from serving.gateway import errors
from serving.gateway.body_limit import OVERSIZED
from serving.gateway.config import GatewayConfig
from serving.gateway.render import JSON_TYPE
from serving.preprocess import PreprocessError, array_to_input, decode_image, image_pixels

__all__ = ["ACCEPTED_TYPES_TEXT", "IMAGE_TYPES", "JSON_TYPE", "MULTIPART_TYPE", "read_inputs"]

#: Content types accepted as a raw image body.
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp"})
MULTIPART_TYPE = "multipart/form-data"
ACCEPTED_TYPES_TEXT = "image/png, image/jpeg, image/webp, image/gif, image/bmp, multipart/form-data or application/json"


def read_inputs(request: Request, cfg: GatewayConfig) -> list[np.ndarray]:
    """The request's images as model inputs, in order (raises ApiError / PreprocessError)."""
    if OVERSIZED in request.environ:  # an unsized body over the limit (see body_limit)
        raise errors.too_large(
            f"request body is larger than the limit of {request.environ[OVERSIZED]} bytes",
            "body_too_large",
        )
    length = request.content_length
    if length is not None and length > cfg.max_body_bytes:
        raise errors.too_large(
            f"request body of {length} bytes is larger than the limit of {cfg.max_body_bytes}",
            "body_too_large",
        )
    mimetype = request.mimetype
    if mimetype in IMAGE_TYPES:
        return [_decode(request.get_data(cache=False), cfg, None)]
    if mimetype == MULTIPART_TYPE:
        files = [f for _, f in request.files.items(multi=True)]
        _check_count(len(files), cfg)
        blobs = [f.read() for f in files]
        names = [f"file {i} ({f.filename or f.name})" for i, f in enumerate(files)]
        _check_request_pixels(blobs, names, cfg)
        return [_decode(data, cfg, where) for data, where in zip(blobs, names, strict=True)]
    if mimetype == JSON_TYPE:
        return _parse_json(request.get_data(cache=False), cfg)
    got = mimetype or "none"
    raise errors.unsupported_media_type(
        f"Content-Type {got} is not supported; send {ACCEPTED_TYPES_TEXT}"
    )


def _check_count(n: int, cfg: GatewayConfig) -> None:
    if n == 0:
        raise errors.bad_request("the request holds no images", "no_images")
    if n > cfg.max_batch:
        raise errors.too_large(
            f"{n} images in one request; the limit is {cfg.max_batch}", "too_many_images"
        )


def _decode(data: bytes, cfg: GatewayConfig, where: str | None) -> np.ndarray:
    if not data:
        raise errors.bad_request(f"{where or 'request body'} is empty", "invalid_image")
    try:
        return decode_image(data, max_pixels=cfg.max_pixels)
    except PreprocessError as exc:
        if where is None:
            raise
        # Same class, message prefixed with which input failed.
        raise type(exc)(f"{where}: {exc}") from None


def _check_request_pixels(blobs: list[bytes], names: list[str], cfg: GatewayConfig) -> None:
    """413 when a request's images declare more pixels in total than ``max_request_pixels``.

    Only the headers are read, before anything is decoded. Unreadable data is left for
    `_decode` to report with its usual message.
    """
    if len(blobs) < 2:
        return  # one image: the per-image limit applies
    total = 0
    for data, where in zip(blobs, names, strict=True):
        try:
            total += image_pixels(data) if data else 0
        except PreprocessError:
            continue  # `_decode` reports it, in order
        if total > cfg.max_request_pixels:
            raise errors.too_large(
                f"the request's images hold more than {cfg.max_request_pixels} pixels in "
                f"total (reached at {where}); send fewer or smaller images per request",
                "image_too_large",
            )


def _parse_json(body: bytes, cfg: GatewayConfig) -> list[np.ndarray]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.bad_request(f"request body is not valid JSON: {exc}", "invalid_json") from None
    except RecursionError:
        raise errors.bad_request("request body is nested too deeply", "invalid_json") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
        raise errors.bad_request(
            'JSON body must be an object with an "instances" list', "invalid_json"
        )
    instances = doc["instances"]
    _check_count(len(instances), cfg)
    # First pass: validate the shape of every instance and decode base64, so the pixel budget
    # is checked from the image headers before any image is decoded.
    images: dict[int, bytes] = {}
    for i, inst in enumerate(instances):
        if isinstance(inst, dict):
            where = f"instance {i}"
            b64 = inst.get("b64")
            if set(inst) != {"b64"} or not isinstance(b64, str):
                raise errors.bad_request(
                    f'{where}: an object instance must be {{"b64": "<base64 image>"}}',
                    "invalid_json",
                )
            try:
                images[i] = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise errors.bad_request(
                    f"{where}: b64 is not valid base64", "invalid_image"
                ) from None
    _check_request_pixels(list(images.values()), [f"instance {i}" for i in images], cfg)
    out = []
    for i, inst in enumerate(instances):
        where = f"instance {i}"
        if i in images:
            out.append(_decode(images[i], cfg, where))
        elif isinstance(inst, list):
            try:
                out.append(array_to_input(inst))
            except PreprocessError as exc:
                raise type(exc)(f"{where}: {exc}") from None
        else:
            raise errors.bad_request(
                f'{where}: expected {{"b64": ...}} or a 28x28 array of 0-255 values',
                "invalid_json",
            )
    return out
