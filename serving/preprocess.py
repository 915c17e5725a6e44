"""Image bytes or pixel arrays → the model's input tensor (NumPy + Pillow only, no TensorFlow).

The model expects what Fashion-MNIST contains: a 28x28 grayscale image of a *light* object on a
*black* background, as float32 in [0, 1]. Real inputs are product photos (dark object on a light
background, any size, colour, JPEG artefacts), so :func:`decode_image` repeats the conversion
the dataset's authors documented in the Fashion-MNIST README, in their order:

1. decode (PNG, JPEG, WebP, GIF, BMP; first frame only), apply the EXIF orientation, convert to
   8-bit grayscale (images with transparency: see below);
2. trim the edges whose pixels are all close (5% of full scale) to the background colour
   (the median of the image's border ring, which is more robust to noise than one corner pixel);
3. resize the longest edge to 28 (area averaging; see docs/BENCHMARKS.md for the choice);
4. sharpen (unsharp mask, Gaussian radius 1);
5. centre on a 28x28 canvas of the background colour;
6. negate — only when the background is light, because the dataset has light clothes on black —
   and stretch linearly so that the background maps to exactly 0 and the brightest pixel to 255:
   every dataset image spans the full range (all 10,000 test images reach 254-255, and the
   low-contrast ones hold only every 3rd, 7th or 15th value: light garments were stretched);
7. scale to [0, 1].

Transparency (RGBA, LA, palette or grayscale PNGs with tRNS, WebP, GIF): a product cutout is the
product without its background, and the dataset's products were photographed on a near-white page
(#fdfdfd, Fashion-MNIST paper section 2; white products were left out for having no contrast
against it). PNG colour is un-associated: a pixel's colour is the *garment's own* colour, its
alpha the garment's *coverage*. The photo the dataset would have been made from has, at each
pixel, the garment's darkness against white (255 - luma) times its coverage; negated, that product
is the dataset's intensity. So a cutout is converted into that negated photo directly, the product
rounded once: ``alpha * (255 - luma) / 255`` with luma the colour's 8-bit gray level, light
garment on black (the transparent pixels, whatever colour they store; one ring of black is added
around the canvas, so that a garment cropped to its own edges still reads as light-on-black), then
steps 2-7. Compositing onto any other background, or dropping alpha, would change the garment's
intensity; multiplying the coverage in twice would dim every soft edge. A dark and a light garment
of the same shape and coverage differ mainly in contrast, which step 6 stretches away as the
dataset did (without it a light garment came out dim: 4.5 points lost in docs/BENCHMARKS.md); a
soft edge keeps its coverage as intensity; a garment too close to white to show at all (no pixel
darker than the 5% tolerance, which the dataset avoided by leaving white products out) is shown by
its coverage alone. An image whose alpha is 255 everywhere is converted exactly as the same image
without alpha. A file that breaks the convention has its colour *matted* against white: a photo
masked in an editor keeps the page mixed into every soft edge and light part, and an editor's
"matte: white" export mixes it in on purpose. There the colour's darkness already is coverage x
darkness, so multiplying by alpha again would count the coverage twice. No single pixel tells
the page in a colour from a lighter garment, but the whole image does: matted colour fades to
white as alpha falls, so darkness and alpha correlate across the partly transparent pixels,
while a garment's own colour does not depend on its coverage. Such an image (correlation at
least 0.6 over at least 64 partly transparent pixels, `matted_on_white`) is converted with the
colour's darkness as the intensity wherever alpha is not 0.

An image that is already 28x28 and single-channel grayscale is taken to be in the dataset's form
and only scaled (value / 255): no trim, resize, sharpening or negation. The commonest such
input, a plain 28x28 8-bit grayscale PNG, is read by `serving.dataset_png` (the same pixels,
without Pillow's plugin machinery).

Example::

    from serving.preprocess import decode_image, to_batch
    x = to_batch([decode_image(open("tests/support/images/ankle_boot.png", "rb").read())])
    x.shape, x.dtype  # ((1, 28, 28, 1), dtype('float32'))

Everything here is a pure function of its arguments; Pillow's global settings are not changed.
"""

from __future__ import annotations

import io
import math
import os
import struct
import sys
import zlib
from collections.abc import Sequence

import numpy as np
import PIL
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFilter,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
)

from serving.contract import IMAGE_SIZE
from serving.dataset_png import read_dataset_png

__all__ = [
    "LUMA",
    "MAX_PIXELS",
    "SUPPORTED_FORMATS",
    "ImageTooLarge",
    "InvalidImage",
    "PreprocessError",
    "array_to_input",
    "decode_image",
    "image_pixels",
    "matted_on_white",
    "to_batch",
]

#: Default pixel limit (width x height, checked from the header before any pixel data is decoded).
#: 40 MP covers current phone and camera photos; a 40 MP RGB image decodes to 120 MB.
MAX_PIXELS = 40_000_000

#: Pillow format names accepted by :func:`decode_image` (others are not even tried).
SUPPORTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_FORMATS_TEXT = "PNG, JPEG, WebP, GIF, BMP"

# Trim tolerance: the README's "5% of the maximum possible intensity".
_TRIM_TOLERANCE = round(0.05 * 255)
# A cutout whose colour was matted against white (an editor's "matte: white" export, or a photo
# masked as it is): its colours fade to white as alpha falls, so over the partly transparent
# pixels darkness and alpha correlate strongly. In un-associated colour they are unrelated (a
# garment's own colour does not depend on how much of the pixel it covers).
_MATTE_MIN_CORRELATION = 0.6
_MATTE_MIN_PIXELS = 64  # fewer partly transparent pixels than this: no evidence either way
_MATTE_SAMPLE_PIXELS = 1 << 18
# Sharpening after the resize (README: "Gaussian operator of the radius and standard deviation
# of 1.0"); built once.
_SHARPEN = ImageFilter.UnsharpMask(radius=1, percent=100, threshold=0)
# JPEGs much larger than this are decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling),
# which is far faster and still leaves > 8x the resolution the model needs.
_DRAFT_SIZE = (8 * IMAGE_SIZE, 8 * IMAGE_SIZE)
_EXIF_ORIENTATION = 0x0112
_WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_GRAY_MODES = frozenset({"L"}) | _WIDE_MODES
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
#: The luma weights of Pillow's RGB → L conversion (ITU-R 601-2), i.e. of every grayscale
#: conversion here: a colour's gray level is ``rgb @ LUMA`` (rounded).
LUMA = np.array([0.299, 0.587, 0.114])
# Importing the five plugins registers them in Image.OPEN (what Image.open would do lazily).
_PLUGINS = (BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, WebPImagePlugin)
_PIL_DIR = os.path.dirname(PIL.__file__) + os.sep
# What Pillow's decoders raise on corrupt or truncated data, wherever it is raised.
_DATA_ERRORS = (OSError, EOFError, SyntaxError, struct.error, zlib.error)
# Pillow's plugins can also raise these on malformed files (a bad palette index, a missing
# tag); they mean bad data only when raised inside Pillow. Raised in this module (or NumPy
# called from it) they are bugs, and must surface as such (a 500), not as "cannot decode".
_PILLOW_ONLY_ERRORS = (ValueError, IndexError, KeyError, TypeError)
_DECODE_ERRORS = _DATA_ERRORS + _PILLOW_ONLY_ERRORS


def _is_bad_data(exc: BaseException) -> bool:
    """True when ``exc`` (one of `_DECODE_ERRORS`) comes from Pillow reading the data."""
    if isinstance(exc, _DATA_ERRORS):
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PIL_DIR)


# uint8 → float32 value / 255, exactly as the training code scales (a lookup beats a division).
_SCALE_LUT = np.arange(256, dtype=np.float32) / np.float32(255.0)


class PreprocessError(ValueError):
    """Base class: the input cannot be turned into a model tensor."""


class InvalidImage(PreprocessError):
    """Not a decodable image in a supported format, or a bad pixel array (→ HTTP 400)."""


class ImageTooLarge(PreprocessError):
    """More pixels than allowed, or a decompression bomb (→ HTTP 413)."""


def _too_large(width: int, height: int, max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(
        f"image is {width}x{height} = {width * height} pixels, "
        f"more than the limit of {max_pixels} pixels"
    )


def _identify(data: bytes) -> Image.Image:
    """Parse the header with the first supported format plugin that accepts the data.

    This is what ``Image.open(..., formats=SUPPORTED_FORMATS)`` does, minus its decompression
    bomb check, which would reject huge images with Pillow's own wording before ours could
    state the size; :func:`_open` applies our limit (lower than Pillow's) right after.
    """
    prefix = data[:16]
    for fmt in SUPPORTED_FORMATS:
        factory, accept = Image.OPEN[fmt]
        accepted = accept(prefix) if accept else True
        if not accepted or isinstance(accepted, str):
            continue
        try:
            return factory(io.BytesIO(data), "")
        except Image.DecompressionBombError as exc:
            # A GIF/WebP frame that enlarges the canvas past twice Pillow's own limit.
            raise ImageTooLarge(f"image rejected as a decompression bomb: {exc}") from None
        except _DECODE_ERRORS as exc:
            if not _is_bad_data(exc):
                raise
            continue
    raise InvalidImage(f"not a supported image ({_FORMATS_TEXT}): cannot identify image data")


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Identify the image and check its declared size; no pixel data is decoded here."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidImage(f"expected image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise InvalidImage(f"not a supported image ({_FORMATS_TEXT}): empty body")
    img = _identify(bytes(data) if not isinstance(data, bytes) else data)
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise _too_large(width, height, max_pixels)
    return img


def _load_gray(img: Image.Image) -> tuple[Image.Image, bool]:
    """Decode the first frame → (8-bit grayscale image, True if the source was plain grayscale)."""
    if img.format == "JPEG" and (img.width > 2 * _DRAFT_SIZE[0] or img.height > 2 * _DRAFT_SIZE[1]):
        img.draft("L", _DRAFT_SIZE)
    img.load()
    source_gray = img.mode in _GRAY_MODES and "transparency" not in img.info
    if img.mode in _WIDE_MODES:
        # 16-bit (or 32-bit) grayscale: scale to 8 bits (Pillow's convert("L") would clip).
        wide = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (wide.size and wide.max() > 255):
            wide = wide / 257.0
        img = Image.fromarray(np.clip(np.rint(wide), 0, 255).astype(np.uint8), "L")
    # EXIF orientation (JPEG, WebP, PNG eXIf); cheap when absent.
    if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode == "P" or "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        img = _cutout_form(img)
    if img.mode != "L":
        img = img.convert("L")
    return img, source_gray


def _cutout_form(img: Image.Image) -> Image.Image:
    """An image with alpha → 8-bit light garment on black, the polarity of the dataset.

    Intensity = coverage x the garment's darkness against white (the colour's darkness alone
    when it is matted against white, `matted_on_white`): the negated photo of the
    garment on the dataset's white page (the rule is explained in the module docstring),
    from Pillow's 8-bit luma of the colour, in integers, the product rounded once. A fully
    opaque image comes back as RGB, so it is converted exactly as the same image without alpha.
    """
    rgba = img.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    if alpha.min() == 255:
        return rgba.convert("RGB")
    darkness = 255 - np.asarray(rgba.convert("L")).astype(np.uint16)  # RGBA → L ignores alpha
    if matted_on_white(alpha, darkness):
        intensity = np.where(alpha > 0, darkness, 0)  # the colour already holds the coverage
    else:
        intensity = (alpha * darkness + 127) // 255  # uint16: at most 255 x 255 + 127
    if int(intensity.max()) <= _TRIM_TOLERANCE:
        intensity = alpha  # (near-)white garment: shown by its coverage
    # One ring of background around the canvas: _border_background reads the ring, and a
    # cutout is often cropped to the garment, which may cover most of its own border.
    h, w = alpha.shape
    out = np.zeros((h + 2, w + 2), dtype=np.uint8)
    out[1:-1, 1:-1] = intensity
    return Image.fromarray(out, "L")


def matted_on_white(alpha: np.ndarray, darkness: np.ndarray) -> bool:
    """Whether a cutout's colour is matted against white: already mixed with the white page
    in proportion to its transparency, instead of PNG's un-associated garment colour.

    ``alpha`` and ``darkness`` (255 - luma) are same-shaped integer arrays. The evidence is a
    correlation of at least 0.6 between the two over the partly transparent pixels (at least
    64 of them; a large image is sampled on a regular grid of ~256k pixels); a uniform colour
    or alpha gives no evidence, so it reads as un-associated.
    """
    # A regular grid of at most ~256k pixels (views, no copies): the correlation of a large
    # image's soft pixels needs no more, and a 40-megapixel cutout must not cost gigabytes.
    step = max(1, math.ceil(math.sqrt(alpha.size / _MATTE_SAMPLE_PIXELS)))
    alpha, darkness = alpha[::step, ::step], darkness[::step, ::step]
    partial = (alpha > 0) & (alpha < 255)
    if int(partial.sum()) < _MATTE_MIN_PIXELS:
        return False
    a = alpha[partial].astype(np.float64)
    d = darkness[partial].astype(np.float64)
    if a.std() == 0 or d.std() == 0:
        return False
    return float(np.corrcoef(a, d)[0, 1]) >= _MATTE_MIN_CORRELATION


def _border_background(pixels: np.ndarray) -> float:
    """Background level: the median of the outermost ring of pixels."""
    ring = np.concatenate((pixels[0, :], pixels[-1, :], pixels[1:-1, 0], pixels[1:-1, -1]))
    return float(np.median(ring))


def _dataset_form(gray: Image.Image) -> np.ndarray:
    """Fashion-MNIST's conversion steps 2-6 on a grayscale image → uint8 [28, 28]."""
    pixels = np.asarray(gray)
    background = _border_background(pixels)
    light_background = background > 127.5

    # 2. trim edges close to the background colour
    foreground = np.abs(pixels.astype(np.int16) - round(background)) > _TRIM_TOLERANCE
    rows = np.flatnonzero(foreground.any(axis=1))
    cols = np.flatnonzero(foreground.any(axis=0))
    if rows.size == 0:  # blank image: nothing but background
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    cropped = gray.crop((int(left), int(top), int(right), int(bottom)))

    # 3. longest edge → 28, 4. sharpen
    w, h = cropped.size
    scale = IMAGE_SIZE / max(w, h)
    new_size = (
        max(1, min(IMAGE_SIZE, round(w * scale))),
        max(1, min(IMAGE_SIZE, round(h * scale))),
    )
    if new_size != (w, h):
        resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
        cropped = cropped.resize(new_size, resample)
    cropped = cropped.filter(_SHARPEN)

    # 5. centre on a 28x28 canvas filled with the background colour
    canvas = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), round(background))
    canvas.paste(cropped, ((IMAGE_SIZE - new_size[0]) // 2, (IMAGE_SIZE - new_size[1]) // 2))
    out = np.asarray(canvas).astype(np.float32)

    # 6. negate when the background is light; map the background to exactly 0 and the
    # brightest pixel to 255 (the dataset's per-image contrast)
    if light_background:
        out = 255.0 - out
        level = 255.0 - background
    else:
        level = background
    peak = float(out.max())
    # nothing brighter than the background (a dark object on a dark background): all background
    out = (out - level) * (255.0 / (peak - level)) if peak > level else np.zeros_like(out)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def image_pixels(data: bytes) -> int:
    """Width x height as the image's header declares it; nothing is decoded.

    Raises :class:`InvalidImage` for data that is not a supported image (and
    :class:`ImageTooLarge` for a frame Pillow itself flags as a decompression bomb).
    """
    width, height = _open(data, max_pixels=sys.maxsize).size
    return width * height


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes into the model's input, float32 ``[28, 28, 1]`` in [0, 1].

    Raises :class:`ImageTooLarge` when the header declares more than ``max_pixels`` pixels
    (checked before decoding), :class:`InvalidImage` for anything that is not a readable
    PNG, JPEG, WebP, GIF or BMP.
    """
    # The dataset's own form, read without Pillow's plugin machinery; anything else: Pillow.
    pixels = read_dataset_png(data) if max_pixels >= IMAGE_SIZE * IMAGE_SIZE else None
    if pixels is None:
        pixels = _pillow_pixels(data, max_pixels)
    return _SCALE_LUT[pixels].reshape(IMAGE_SIZE, IMAGE_SIZE, 1)


def _pillow_pixels(data: bytes, max_pixels: int) -> np.ndarray:
    """Any supported image through Pillow → uint8 ``[28, 28]`` in the dataset's form."""
    img = _open(data, max_pixels)
    try:
        gray, source_gray = _load_gray(img)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image rejected as a decompression bomb: {exc}") from None
    except _DECODE_ERRORS as exc:
        if not _is_bad_data(exc):
            raise
        raise InvalidImage(f"cannot decode {img.format} image data: {exc}") from None
    if source_gray and gray.size == (IMAGE_SIZE, IMAGE_SIZE):
        return np.asarray(gray)  # already in the dataset's form
    return _dataset_form(gray)


def array_to_input(arr: object) -> np.ndarray:
    """A 28x28 array (or nested lists) of 0-255 pixel values → float32 ``[28, 28, 1]`` in [0, 1].

    The array is taken to be in the dataset's form (light object on black) and only scaled.
    Accepts shape ``[28, 28]`` or ``[28, 28, 1]``; raises :class:`InvalidImage` for other
    shapes, non-numbers, NaN/infinity or values outside 0-255.
    """
    try:
        a = np.asarray(arr)
    except (ValueError, TypeError):
        raise InvalidImage(
            "pixel array must be a rectangular 28x28 grid of numbers 0-255"
        ) from None
    if a.dtype == np.bool_ or not (
        np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
    ):
        raise InvalidImage(
            f"pixel array must hold numbers 0-255, got {a.dtype.kind!r} values"
            if a.dtype != object
            else "pixel array must be a rectangular 28x28 grid of numbers 0-255"
        )
    if a.shape not in ((IMAGE_SIZE, IMAGE_SIZE), (IMAGE_SIZE, IMAGE_SIZE, 1)):
        raise InvalidImage(
            f"pixel array must have shape [{IMAGE_SIZE}, {IMAGE_SIZE}], got "
            f"[{', '.join(str(d) for d in a.shape)}]"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # huge values become inf: refused below
        a = a.astype(np.float32, copy=False).reshape(IMAGE_SIZE, IMAGE_SIZE, 1)
    if not np.isfinite(a).all():
        raise InvalidImage("pixel array contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 255:
        raise InvalidImage(f"pixel values must be within 0-255, got {lo:g}..{hi:g}")
    return a / np.float32(255.0)


def to_batch(items: Sequence[np.ndarray], *, check_range: bool = True) -> np.ndarray:
    """Stack ``[28, 28, 1]`` inputs into one C-contiguous float32 batch ``[N, 28, 28, 1]``.

    Raises :class:`InvalidImage` for no items, an item of another shape or not numeric, or
    values outside [0, 1] (NaN included). ``check_range=False`` skips that last check, for
    items that come from :func:`decode_image` or :func:`array_to_input` (in range by
    construction): it is two passes over the batch, and each NumPy reduction releases the GIL,
    which costs a thread switch per call in a server with many busy threads. For the same
    reason a single float32 item is not copied: the batch is a view of it.
    """
    if len(items) == 0:
        raise InvalidImage("no images given")
    if len(items) == 1 and _is_input(items[0]):
        batch = items[0].reshape(1, IMAGE_SIZE, IMAGE_SIZE, 1)  # a view: no copy to make
    else:
        batch = _stacked(items)
    # One pass over the whole batch (NaN fails both comparisons).
    if check_range and not (batch.min() >= 0.0 and batch.max() <= 1.0):
        raise InvalidImage(
            "batch values must be within [0, 1]; use decode_image() or array_to_input()"
        )
    return batch


def _is_input(item: object) -> bool:
    """Already a C-contiguous float32 ``[28, 28, 1]`` array, as `decode_image` returns."""
    return (
        isinstance(item, np.ndarray)
        and item.dtype == np.float32
        and item.shape == (IMAGE_SIZE, IMAGE_SIZE, 1)
        and item.flags.c_contiguous
    )


def _stacked(items: Sequence[np.ndarray]) -> np.ndarray:
    batch = np.empty((len(items), IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32)
    for i, item in enumerate(items):
        try:
            shape = np.shape(item)
        except ValueError:
            raise InvalidImage(f"item {i} is a ragged nested list, not an array") from None
        if shape != (IMAGE_SIZE, IMAGE_SIZE, 1):
            raise InvalidImage(
                f"item {i} has shape {tuple(shape)}, expected "
                f"({IMAGE_SIZE}, {IMAGE_SIZE}, 1); use decode_image() or array_to_input()"
            )
        try:
            batch[i] = item
        except (TypeError, ValueError, OverflowError):
            raise InvalidImage(f"item {i} does not hold numbers") from None
    return batch
