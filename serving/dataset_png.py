"""A shortcut for the commonest input: a PNG already in Fashion-MNIST's form.

Clients of a Fashion-MNIST model mostly send the dataset's own kind of image, a 28x28 8-bit
grayscale PNG, which :func:`serving.preprocess.decode_image` only scales. Identifying it
through Pillow's plugin machinery and loading it through ``ImageFile.load`` costs about twice
what the pixels themselves do (docs/BENCHMARKS.md). :func:`read_dataset_png` reads the chunk
list itself and hands the image data to Pillow's own PNG decoder (inflate and unfiltering in
C), so the pixels are Pillow's, bit for bit.

It answers only for a file it can vouch for, and returns None for everything else, which then
takes the general path (and gets its error messages there):

- at most `_MAX_BYTES` (such a file is about 1 KB);
- the signature, then an IHDR of exactly 28x28, bit depth 8, colour type 0 (grayscale),
  compression 0, filter 0, no interlacing;
- then one run of IDAT chunks, then IEND, and no other chunk: ancillary chunks can change what
  Pillow makes of the file (tRNS transparency, eXIf or text chunks holding an orientation) or
  make it refuse the file (a malformed gAMA or iCCP), so a file with any is left to Pillow;
- every chunk's CRC correct;
- image data that Pillow's decoder reads without an error (a stream that ends early leaves the
  missing rows 0, as Pillow's PNG plugin does).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image

from serving.contract import IMAGE_SIZE

__all__ = ["read_dataset_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR's length and type, then width, height, bit depth 8, colour type 0 (grayscale),
# compression 0, filter method 0, interlace 0.
_IHDR = b"\x00\x00\x00\x0dIHDR" + struct.pack(">IIBBBBB", IMAGE_SIZE, IMAGE_SIZE, 8, 0, 0, 0, 0)
_MAX_BYTES = 16 * 1024
_SIZE = (IMAGE_SIZE, IMAGE_SIZE)


def _image_data(data: bytes) -> bytes | None:
    """The concatenated IDAT payloads of a well-formed dataset-form PNG, else None."""
    if len(data) > _MAX_BYTES or not data.startswith(_SIGNATURE) or data[8:29] != _IHDR:
        return None
    idats: list[bytes] = []
    expected = (b"IHDR",)
    pos, end = 8, len(data)
    while pos + 12 <= end:
        length = int.from_bytes(data[pos : pos + 4], "big")
        body_end = pos + 8 + length
        if body_end + 4 > end:
            return None  # truncated
        kind = data[pos + 4 : pos + 8]
        if kind not in expected or zlib.crc32(data[pos + 4 : body_end]) != int.from_bytes(
            data[body_end : body_end + 4], "big"
        ):
            return None
        if kind == b"IEND":
            return b"".join(idats)
        if kind == b"IDAT":
            idats.append(data[pos + 8 : body_end])
            expected = (b"IDAT", b"IEND")
        else:  # the header
            expected = (b"IDAT",)
        pos = body_end + 4
    return None  # no IEND


def read_dataset_png(data: bytes) -> np.ndarray | None:
    """The pixels of a 28x28 8-bit grayscale PNG as uint8 ``[28, 28]``, or None when ``data``
    is anything else (including a damaged file of that kind)."""
    if not isinstance(data, bytes):
        return None
    compressed = _image_data(data)
    if compressed is None:
        return None
    # The image memory Pillow's PNG plugin decodes into (core.new: zeroed, without the fill
    # pass of Image.new's default colour, which releases the GIL), and its "zip" decoder.
    image = Image.new("L", _SIZE, None)
    try:
        image.frombytes(compressed, "zip", "L")
    except ValueError:  # corrupt image data
        return None
    return np.frombuffer(image.tobytes(), dtype=np.uint8).reshape(_SIZE)
