"""Hostile and malformed input, property-based (hypothesis): ``serving.preprocess`` and the
gateway's JSON parser either give a valid model tensor or the documented error, never another
exception; a programming error in the decode path is a 500, not a 400 "cannot decode".

Example counts are modest (``max_examples`` 100-200) so the default suite stays fast; under
``CI=true`` the examples are derandomized (tests/conftest.py).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import struct
import zlib

import numpy as np
import PIL
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from serving.gateway import create_app
from serving.gateway.config import GatewayConfig
from serving.preprocess import (
    MAX_PIXELS,
    ImageTooLarge,
    InvalidImage,
    PreprocessError,
    array_to_input,
    decode_image,
    image_pixels,
    to_batch,
)
from tests.support.gateway import FakeBackend

# hypothesis' own casts of huge floats to float16/float32 while drawing arrays
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")

_SLOW_DATA = [HealthCheck.too_slow, HealthCheck.large_base_example, HealthCheck.data_too_large]
FEW = settings(max_examples=100, suppress_health_check=_SLOW_DATA)
MORE = settings(max_examples=150, suppress_health_check=_SLOW_DATA)
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
MAGICS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"RIFF")


def assert_model_input(x: np.ndarray) -> None:
    """What every success must be: float32 [28, 28, 1], finite, within [0, 1]."""
    assert isinstance(x, np.ndarray)
    assert x.dtype == np.float32 and x.shape == (28, 28, 1)
    assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0


def decode_or_documented_error(data: bytes, **kwargs) -> np.ndarray | PreprocessError:
    """decode_image's outcome: the tensor (checked) or its PreprocessError; anything else fails."""
    try:
        x = decode_image(data, **kwargs)
    except PreprocessError as exc:
        assert str(exc), "an error without a message"
        return exc
    assert_model_input(x)
    return x


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


# --- image bytes ------------------------------------------------------------------------------


@MORE
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data):
    out = decode_or_documented_error(data)
    assert isinstance(out, InvalidImage)  # random bytes are never a whole image


@MORE
@given(st.sampled_from(MAGICS), st.binary(max_size=1024))
def test_format_magic_followed_by_garbage(magic, tail):
    decode_or_documented_error(magic + tail)


_MODES = ("L", "RGB", "RGBA", "LA", "P", "1", "I;16")
# What each format can store (the rest is converted to RGB before saving).
_SAVES = {
    "PNG": {"L", "RGB", "RGBA", "LA", "P", "1", "I;16"},
    "JPEG": {"L", "RGB", "1"},
    "GIF": {"L", "P", "1"},
    "BMP": {"L", "RGB", "P", "1"},
    "WEBP": {"RGB", "RGBA"},
}


@st.composite
def images(draw, max_side: int = 48) -> tuple[bytes, str]:
    """A real encoded image: any supported format, size, mode (palette, 16-bit, alpha)."""
    fmt = draw(st.sampled_from(FORMATS))
    w = draw(st.integers(1, max_side))
    h = draw(st.integers(1, max_side))
    mode = draw(st.sampled_from(_MODES))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
        img = img.convert(mode) if mode != "P" else img.convert("RGB").quantize(16)
    if mode not in _SAVES[fmt]:
        img = img.convert("RGB")
    return encode(img, fmt), fmt


@FEW
@given(images())
def test_every_valid_image_decodes(image):
    data, _ = image
    out = decode_or_documented_error(data)
    assert isinstance(out, np.ndarray), out


@MORE
@given(
    images(),
    st.lists(
        st.tuples(
            st.sampled_from(("truncate", "flip", "insert")),
            st.integers(0),
            st.binary(min_size=1, max_size=16),
        ),
        min_size=1,
        max_size=4,
    ),
)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_truncated_and_corrupt_images(image, edits):
    data = bytearray(image[0])
    for op, where, junk in edits:
        pos = where % len(data)
        if op == "truncate":
            data = data[: max(pos, 1)]
        elif op == "flip":
            data[pos] ^= junk[0] or 0xFF
        else:
            data[pos:pos] = junk
    decode_or_documented_error(bytes(data))


# The longest side each format can store: WebP 16383, JPEG 65500, GIF 65535; PNG and BMP more.
STRIPS = [
    (fmt, size)
    for fmt, longest in [
        ("PNG", 100_000),
        ("BMP", 100_000),
        ("GIF", 65535),
        ("JPEG", 65500),
        ("WEBP", 16383),
    ]
    for size in [(1, longest), (longest, 1)]
]


@pytest.mark.parametrize(("fmt", "size"), STRIPS)
def test_one_pixel_strips(fmt, size):
    img = Image.new("L", size, 255)
    img.paste(0, (0, 0, max(1, size[0] // 2), max(1, size[1] // 2)))
    x = decode_image(encode(img, fmt))
    assert_model_input(x)
    assert x.max() > 0.5  # the dark half is the object, light on black after negation


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_declaring(width: int, height: int, pixels: bytes = b"") -> bytes:
    """A grayscale PNG whose header declares width x height; IDAT compresses ``pixels``."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(pixels or b"\0" * 64, 9))
        + png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(("width", "height"), [(0, 0), (0, 28), (28, 0)])
def test_zero_size_images_are_invalid(width, height):
    with pytest.raises(InvalidImage, match=r"^not a supported image"):
        decode_image(png_declaring(width, height))


@FEW
@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1))
def test_declared_size_over_the_limit_is_refused_before_decoding(width, height):
    data = png_declaring(width, height)
    out = decode_or_documented_error(data)
    if width * height > MAX_PIXELS:
        assert isinstance(out, ImageTooLarge)
        assert str(out).startswith(f"image is {width}x{height} = {width * height} pixels")
        assert image_pixels(data) == width * height
    else:
        assert not isinstance(out, ImageTooLarge)


def test_decompression_bomb_within_the_header_limit_is_refused_by_a_lower_one():
    # 8000 x 8000 zero bytes compress to ~60 KB; a gateway limit of 1 MP stops it unread.
    data = png_declaring(8000, 8000, bytes(8001 * 8000))
    assert len(data) < 100_000
    with pytest.raises(ImageTooLarge, match=r"^image is 8000x8000 = 64000000 pixels, more than"):
        decode_image(data, max_pixels=1_000_000)


def test_16_bit_and_palette_images():
    ramp = np.tile(np.linspace(0, 65535, 40, dtype=np.uint16), (30, 1))
    assert_model_input(decode_image(encode(Image.fromarray(ramp), "PNG")))
    pal = Image.fromarray(np.arange(1200, dtype=np.uint8).reshape(30, 40) % 7).convert("P")
    assert_model_input(decode_image(encode(pal, "PNG", transparency=3)))
    assert_model_input(decode_image(encode(pal, "GIF", transparency=3)))


def test_animated_gif_uses_the_first_frame():
    first = Image.new("L", (40, 40), 255)
    first.paste(0, (10, 5, 30, 35))
    second = Image.new("L", (40, 40), 0)
    animated = encode(first, "GIF", save_all=True, append_images=[second] * 5, duration=10)
    np.testing.assert_array_equal(decode_image(animated), decode_image(encode(first, "GIF")))


# --- pixel arrays and batches -----------------------------------------------------------------

_ELEMENTS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.integers(-(2**40), 2**40).map(float),
    st.floats(0, 255),
)


@FEW
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.float64, np.float32, np.float16]),
        shape=st.sampled_from([(28, 28), (28, 28, 1), (28, 27), (1, 28, 28), (784,), ()]),
        elements=_ELEMENTS,
        fill=_ELEMENTS,  # a few drawn cells, the rest one drawn value: fast, still hostile
    )
)
def test_array_to_input_valid_or_invalid_image(arr):
    expect_ok = (
        arr.shape in ((28, 28), (28, 28, 1))
        and np.isfinite(arr).all()
        and arr.min() >= 0
        and arr.max() <= 255
    )
    try:
        x = array_to_input(arr)
    except InvalidImage as exc:
        assert not expect_ok, exc
    else:
        assert expect_ok
        assert_model_input(x)
        np.testing.assert_array_equal(x, arr.astype(np.float32).reshape(28, 28, 1) / 255)


@FEW
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int16, np.int64, np.uint64, np.bool_, np.complex64]),
        shape=st.just((28, 28)),
    )
)
def test_array_to_input_integer_bool_and_complex_dtypes(arr):
    expect_ok = arr.dtype.kind in "iu" and arr.min() >= 0 and arr.max() <= 255
    try:
        x = array_to_input(arr)
    except InvalidImage:
        assert not expect_ok
    else:
        assert expect_ok
        assert_model_input(x)


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=24,
)


def grid(cell: st.SearchStrategy) -> st.SearchStrategy:
    """28x28 nested lists whose cells are drawn from ``cell`` (one odd cell, the rest 0)."""
    return st.tuples(st.integers(0, 27), st.integers(0, 27), cell).map(
        lambda t: [[t[2] if (r, c) == t[:2] else 0 for c in range(28)] for r in range(28)]
    )


@MORE
@given(st.one_of(JSON_VALUES, grid(JSON_VALUES)))
def test_array_to_input_on_any_json_value(value):
    try:
        x = array_to_input(value)
    except InvalidImage:
        return
    assert_model_input(x)


@settings(max_examples=60, suppress_health_check=_SLOW_DATA)
@given(
    st.lists(
        st.one_of(
            hnp.arrays(
                np.float32,
                st.sampled_from([(28, 28, 1), (28, 28), (1, 28, 28, 1)]),
                elements=_ELEMENTS.map(lambda v: v / 255),
                fill=st.floats(0, 1),
            ),
            JSON_VALUES,
        ),
        max_size=4,
    )
)
def test_to_batch_valid_batch_or_invalid_image(items):
    try:
        batch = to_batch(items)
    except InvalidImage:
        return
    assert batch.shape == (len(items), 28, 28, 1) and batch.dtype == np.float32
    assert batch.flags.c_contiguous and batch.min() >= 0 and batch.max() <= 1


def test_to_batch_rejects_nan_out_of_range_and_ragged_items():
    ok = np.zeros((28, 28, 1), np.float32)
    for bad, message in [
        (np.full((28, 28, 1), np.nan, np.float32), "batch values must be within [0, 1]"),
        (np.full((28, 28, 1), 2.0, np.float32), "batch values must be within [0, 1]"),
        ([[[0]] * 28] * 27 + [[[0, 1]] * 28], "item 1 is a ragged nested list, not an array"),
        (np.full((28, 28, 1), "x"), "item 1 does not hold numbers"),
    ]:
        with pytest.raises(InvalidImage) as info:
            to_batch([ok, bad])
        assert str(info.value).startswith(message)


# --- programming errors are not "cannot decode" -----------------------------------------------


def _raising(exc: BaseException, filename: str):
    """A function that raises ``exc`` from code compiled as if it lived in ``filename``."""
    namespace: dict = {"exc": exc}
    exec(compile("def f(*args, **kwargs):\n    raise exc\n", filename, "exec"), namespace)
    return namespace["f"]


PNG = encode(Image.new("L", (40, 30), 200), "PNG")
PIL_FILE = os.path.join(os.path.dirname(PIL.__file__), "PngImagePlugin.py")


@pytest.mark.parametrize("exc_type", [TypeError, KeyError, IndexError, ValueError, AttributeError])
def test_a_bug_in_the_decode_path_is_not_invalid_image(monkeypatch, exc_type):
    import serving.preprocess as preprocess

    monkeypatch.setattr(preprocess, "_load_gray", _raising(exc_type("bug"), __file__))
    with pytest.raises(exc_type, match="bug"):
        decode_image(PNG)


@pytest.mark.parametrize("exc_type", [TypeError, KeyError, IndexError])
def test_a_bug_while_identifying_is_not_invalid_image(monkeypatch, exc_type):
    accept = Image.OPEN["PNG"][1]
    monkeypatch.setitem(Image.OPEN, "PNG", (_raising(exc_type("bug"), __file__), accept))
    with pytest.raises(exc_type, match="bug"):
        decode_image(PNG)


@pytest.mark.parametrize("exc_type", [TypeError, KeyError, IndexError, ValueError])
def test_the_same_error_raised_by_pillow_on_bad_data_is_invalid_image(monkeypatch, exc_type):
    # Pillow's plugins raise these on some malformed files; raised inside Pillow they mean
    # bad data. The stand-in is compiled under a Pillow file name so it counts as Pillow's.
    monkeypatch.setattr(Image.Image, "load", _raising(exc_type("bad palette"), PIL_FILE))
    with pytest.raises(InvalidImage, match=r"^cannot decode PNG image data: .*bad palette"):
        decode_image(PNG)


def test_a_bug_in_the_decode_path_is_a_500_on_the_gateway(monkeypatch, caplog):
    import serving.preprocess as preprocess

    monkeypatch.setattr(preprocess, "_load_gray", _raising(KeyError("bug"), __file__))
    client = _app().test_client()
    with caplog.at_level(logging.ERROR, logger="serving.gateway.errors"):
        resp = client.post("/v1/predict", data=PNG, content_type="image/png")
    assert resp.status_code == 500
    rid = resp.headers["X-Request-ID"]
    assert resp.get_json() == {
        "error": {"code": "internal", "message": "internal server error", "request_id": rid}
    }
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None and record.exc_info[0] is KeyError


# --- the gateway's JSON parser (through the Flask test client) --------------------------------

MAX_BATCH = 4
MAX_BODY = 300_000
ERROR_CODES = {
    400: {"invalid_json", "invalid_image", "no_images"},
    413: {"too_many_images", "image_too_large", "body_too_large"},
}


def _app(**overrides):
    cfg = GatewayConfig(
        backend="grpc://backend.invalid:8500",
        ready_cache_seconds=0.0,
        max_batch=MAX_BATCH,
        max_body_bytes=MAX_BODY,
        max_pixels=100_000,
        **overrides,
    )
    return create_app(cfg, backend=FakeBackend())


@pytest.fixture(scope="module")
def client():
    return _app().test_client()


def post_json(client, body: bytes):
    resp = client.post("/v1/predict", data=body, content_type="application/json")
    doc = json.loads(resp.data)  # every answer is valid JSON
    if resp.status_code == 200:
        return resp.status_code, doc
    assert resp.status_code in ERROR_CODES, (resp.status_code, doc)
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}
    assert doc["error"]["code"] in ERROR_CODES[resp.status_code], doc
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    return resp.status_code, doc


def _dumps(value) -> bytes:
    return json.dumps(value).encode()  # NaN and Infinity as Python writes them


PIXEL_GRID = grid(st.one_of(st.integers(-300, 300), st.floats(allow_nan=True, allow_infinity=True)))
B64_IMAGE = images(max_side=24).map(lambda im: {"b64": base64.b64encode(im[0]).decode()})
INSTANCE = st.one_of(JSON_VALUES, PIXEL_GRID, B64_IMAGE, st.builds(dict, b64=st.text(max_size=12)))


@MORE
@given(st.binary(max_size=2048))
def test_json_parser_on_arbitrary_bytes(client, body):
    post_json(client, body)


@MORE
@given(st.one_of(JSON_VALUES, st.builds(dict, instances=JSON_VALUES)))
def test_json_parser_on_any_json_document(client, doc):
    status, _ = post_json(client, _dumps(doc))
    assert status != 200 or (isinstance(doc, dict) and isinstance(doc.get("instances"), list))


@MORE
@given(st.lists(INSTANCE, max_size=MAX_BATCH + 2))
def test_json_parser_on_instances(client, instances):
    status, doc = post_json(client, _dumps({"instances": instances}))
    if status == 200:
        assert len(doc["predictions"]) == len(instances)
    if len(instances) > MAX_BATCH:
        assert (status, doc["error"]["code"]) == (413, "too_many_images")


@pytest.mark.parametrize("depth", [100, 10_000, 100_000])
def test_deeply_nested_json(client, depth):
    body = b"[" * depth + b"]" * depth
    status, doc = post_json(client, body)
    assert status == 400
    assert doc["error"]["code"] == "invalid_json"
    nested = b'{"instances": [' + body + b"]}"
    status, doc = post_json(client, nested)
    assert status == 400


def test_deep_json_message(client):
    assert post_json(client, b"[" * 100_000 + b"]" * 100_000)[1] == {
        "error": {"code": "invalid_json", "message": "request body is nested too deeply"}
    }


def test_too_many_instances_is_413_before_any_decoding(client, monkeypatch):
    import serving.gateway.inputs as inputs

    monkeypatch.setattr(inputs, "array_to_input", _raising(AssertionError("decoded"), __file__))
    body = _dumps({"instances": [[[0] * 28] * 28] * (MAX_BATCH + 1)})
    assert post_json(client, body) == (
        413,
        {
            "error": {
                "code": "too_many_images",
                "message": f"{MAX_BATCH + 1} images in one request; the limit is {MAX_BATCH}",
            }
        },
    )


def test_huge_json_body_is_413_from_its_length(client):
    body = b'{"instances": [' + b"0," * (MAX_BODY // 2) + b"0]}"
    assert post_json(client, body) == (
        413,
        {
            "error": {
                "code": "body_too_large",
                "message": f"request body of {len(body)} bytes is larger than the limit of {MAX_BODY}",
            }
        },
    )


def test_too_many_multipart_files_is_413(client):
    files = {f"f{i}": (io.BytesIO(PNG), f"{i}.png", "image/png") for i in range(MAX_BATCH + 1)}
    resp = client.post("/v1/predict", data=files, content_type="multipart/form-data")
    assert resp.status_code == 413
    assert resp.get_json() == {
        "error": {
            "code": "too_many_images",
            "message": f"{MAX_BATCH + 1} images in one request; the limit is {MAX_BATCH}",
        }
    }
