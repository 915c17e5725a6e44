"""serving.dataset_png: the same pixels as Pillow for dataset-form PNGs, None for anything else."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from loadtest.images import encode_png, generated_pixels
from serving.dataset_png import read_dataset_png
from serving.preprocess import ImageTooLarge, InvalidImage, decode_image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
NONE, SUB, UP, AVERAGE, PAETH = range(5)


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def ihdr(width=28, height=28, depth=8, colour=0, interlace=0) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def filtered(pixels: np.ndarray, filters: list[int]) -> bytes:
    """PNG scanlines of uint8 grayscale ``pixels``, row r filtered with ``filters[r]``."""
    out = bytearray()
    prior = [0] * pixels.shape[1]
    for row, kind in zip(pixels.tolist(), filters, strict=True):
        line = []
        for i, x in enumerate(row):
            a = row[i - 1] if i else 0
            b, c = prior[i], prior[i - 1] if i else 0
            predictor = (0, a, b, (a + b) // 2, _paeth(a, b, c))[kind]
            line.append((x - predictor) % 256)
        out += bytes([kind, *line])
        prior = row
    return bytes(out)


def png(
    pixels: np.ndarray, filters: list[int] | None = None, *, extra: bytes = b"", split=1
) -> bytes:
    """A grayscale PNG written by hand: ``extra`` chunks before the image data, which is
    split over ``split`` IDAT chunks."""
    data = zlib.compress(filtered(pixels, filters or [NONE] * pixels.shape[0]))
    step = -(-len(data) // split)
    idats = b"".join(chunk(b"IDAT", data[i : i + step]) for i in range(0, len(data), step))
    height, width = pixels.shape
    return SIGNATURE + ihdr(width, height) + extra + idats + chunk(b"IEND", b"")


def bad_filter_png(pixels: np.ndarray) -> bytes:
    """Scanlines that name filter type 5, which PNG does not have."""
    raw = b"".join(b"\x05" + row.tobytes() for row in pixels)
    return SIGNATURE + ihdr() + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "L"
        return np.asarray(img)


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, size=(28, 28), dtype=np.uint8)


@pytest.mark.parametrize("kind", [NONE, SUB, UP, AVERAGE, PAETH])
def test_every_filter_type_reads_as_pillow_reads_it(pixels, kind):
    data = png(pixels, [kind] * 28)
    out = read_dataset_png(data)
    assert out is not None and out.dtype == np.uint8 and out.shape == (28, 28)
    np.testing.assert_array_equal(out, pixels)
    np.testing.assert_array_equal(out, pillow_pixels(data))


def test_mixed_filters_and_split_image_data_read_as_the_general_path_reads_them(pixels):
    data = png(pixels, [r % 5 for r in range(28)], split=4)
    np.testing.assert_array_equal(read_dataset_png(data), pixels)
    # bytearray: the shortcut takes bytes only, so this is Pillow's plugin path
    np.testing.assert_array_equal(decode_image(data), decode_image(bytearray(data)))


def test_image_data_short_of_the_header_reads_as_pillow_reads_it(pixels):
    """A stream that ends after 27 rows of a 28-row image: Pillow leaves the last row 0."""
    raw = filtered(pixels[:27], [UP] * 27)
    data = SIGNATURE + ihdr() + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    out = read_dataset_png(data)
    np.testing.assert_array_equal(out, pillow_pixels(data))
    np.testing.assert_array_equal(out[:27], pixels[:27])
    assert not out[27].any()


def test_pillow_encoded_images_and_decode_image_agree_with_the_general_path():
    """Pillow's encoder picks filters per row; decode_image's answer is the general path's."""
    for pixels in generated_pixels(count=40, seed=3):
        data = encode_png(pixels)
        np.testing.assert_array_equal(read_dataset_png(data), pixels)
        # The general path, forced by a copy the shortcut does not take (bytearray).
        np.testing.assert_array_equal(decode_image(data), decode_image(bytearray(data)))


def _pillow_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _with_chunk(pixels, kind: bytes, body: bytes) -> bytes:
    return png(pixels, extra=chunk(kind, body))


def _after_image_data(pixels, kind: bytes, body: bytes) -> bytes:
    data = png(pixels)
    return data[:-12] + chunk(kind, body) + data[-12:]


def _image_data_split_by(pixels, kind: bytes, body: bytes) -> bytes:
    data = zlib.compress(filtered(pixels, [NONE] * 28))
    half = len(data) // 2
    return (
        SIGNATURE
        + ihdr()
        + chunk(b"IDAT", data[:half])
        + chunk(kind, body)
        + chunk(b"IDAT", data[half:])
        + chunk(b"IEND", b"")
    )


def _bad_crc(pixels) -> bytes:
    data = bytearray(png(pixels))
    data[29] ^= 0xFF  # the IHDR's CRC
    return bytes(data)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: _with_chunk(p, b"tRNS", b"\x00\x00"), id="transparency"),
        pytest.param(lambda p: _with_chunk(p, b"eXIf", b"MM\x00*"), id="exif"),
        pytest.param(lambda p: _with_chunk(p, b"tEXt", b"Comment\x00hi"), id="text"),
        pytest.param(lambda p: _with_chunk(p, b"zzZz", b"x"), id="unknown chunk"),
        pytest.param(lambda p: _with_chunk(p, b"gAMA", b"\0\0\xb1\x8f"), id="gamma"),
        pytest.param(lambda p: _with_chunk(p, b"gAMA", b"\0"), id="short gamma"),
        pytest.param(lambda p: _with_chunk(p, b"iCCP", b""), id="empty ICC profile"),
        pytest.param(lambda p: _after_image_data(p, b"tRNS", b"\0\0"), id="transparency after"),
        pytest.param(lambda p: _after_image_data(p, b"eXIf", b"MM\0*"), id="exif after"),
        pytest.param(lambda p: _after_image_data(p, b"tEXt", b"a\0b"), id="text after"),
        pytest.param(lambda p: _image_data_split_by(p, b"tEXt", b"a\0b"), id="IDAT text IDAT"),
        pytest.param(
            lambda p: png(p)[:33] + b"\xff\xff\xff\xffIDAT" + png(p)[41:], id="huge length"
        ),
        pytest.param(lambda p: png(p) + bytes(16 * 1024), id="over 16 KiB"),
        pytest.param(lambda p: _with_chunk(p, b"IHDR", ihdr()[8:-4]), id="second header"),
        pytest.param(lambda p: png(p[:27]), id="27 rows"),
        pytest.param(
            lambda p: (
                SIGNATURE
                + ihdr(depth=16)
                + chunk(b"IDAT", zlib.compress(bytes(28 * 57)))
                + chunk(b"IEND", b"")
            ),
            id="16-bit",
        ),
        pytest.param(lambda p: SIGNATURE + ihdr(interlace=1) + png(p)[33:], id="interlaced"),
        pytest.param(
            lambda p: _pillow_png(Image.fromarray(np.stack([p] * 3, axis=-1), "RGB")), id="RGB"
        ),
        pytest.param(lambda p: png(p)[:-12], id="no IEND"),
        pytest.param(lambda p: png(p)[:60], id="truncated"),
        pytest.param(_bad_crc, id="bad CRC"),
        pytest.param(lambda p: SIGNATURE + ihdr() + chunk(b"IEND", b""), id="no image data"),
        pytest.param(
            lambda p: (
                SIGNATURE + ihdr() + chunk(b"IDAT", b"\x78\x9c\xff\xff") + chunk(b"IEND", b"")
            ),
            id="corrupt zlib",
        ),
        pytest.param(bad_filter_png, id="bad filter byte"),
        pytest.param(lambda p: bytearray(png(p)), id="bytearray"),
        pytest.param(lambda p: b"", id="empty"),
    ],
)
def test_anything_else_is_left_to_the_general_path(pixels, make):
    assert read_dataset_png(make(pixels)) is None


def test_general_path_still_gives_its_answers_and_errors(pixels):
    # A transparency chunk makes it a cutout: not the plain scaling of the dataset form.
    cutout = _with_chunk(pixels, b"tRNS", b"\x00\x00")
    assert not np.array_equal(decode_image(cutout), decode_image(png(pixels)))
    with pytest.raises(
        InvalidImage, match=r"^not a supported image .*: cannot identify image data$"
    ):
        decode_image(_bad_crc(pixels))
    with pytest.raises(InvalidImage, match="cannot decode PNG image data"):
        decode_image(bad_filter_png(pixels))
    # Image data split by another chunk: Pillow stops at that chunk and finds the image short.
    with pytest.raises(
        InvalidImage, match=r"^cannot decode PNG image data: image file is truncated"
    ):
        decode_image(_image_data_split_by(pixels, b"tEXt", b"a\0b"))
    # Bytes after IEND: Pillow ignores them, so the general path gives the same pixels.
    np.testing.assert_array_equal(
        decode_image(png(pixels) + bytes(16 * 1024)), decode_image(png(pixels))
    )
    # A pixel limit below 28x28 still applies to a dataset-form PNG.
    with pytest.raises(ImageTooLarge, match="28x28 = 784 pixels, more than the limit of 700"):
        decode_image(png(pixels), max_pixels=700)
