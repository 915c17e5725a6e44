"""Synthetic transparent cutouts for the preprocessing tests (drawn here, no dataset pixels).

A cutout is a garment's own colour plus its coverage (alpha), as PNG stores it::

    from tests.support.cutouts import coverage, cutout, coverage_png

    alpha = coverage()                       # uint8 [H, W]: a soft-edged garment silhouette
    img = cutout(alpha, colour=(40, 40, 40)) # RGBA: that garment, dark grey, on transparency
    ref = coverage_png(alpha * 0.5)          # the same intensities as a light-on-black L PNG

Everything is deterministic, so tests can compare tensors exactly.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = (96, 72)  # width, height: not square, so the resize and centring are exercised


def coverage(size: tuple[int, int] = SIZE, margin: int = 6, blur: float = 1.5) -> np.ndarray:
    """A T-shirt-like silhouette's coverage, 0-255, with soft (partly transparent) edges.

    ``margin`` pixels on each side stay fully transparent (0 there even after the blur, as
    long as ``margin`` > 3 x ``blur``); ``margin=0`` crops the garment to the canvas.
    """
    w, h = size
    img = Image.new("L", size, 0)
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = margin, margin, w - 1 - margin, h - 1 - margin
    cx, sw = (x0 + x1) / 2, (x1 - x0) / 2
    d.polygon(
        [
            (x0, y0 + 0.3 * (y1 - y0)),
            (cx - 0.45 * sw, y0),
            (cx + 0.45 * sw, y0),
            (x1, y0 + 0.3 * (y1 - y0)),
            (cx + 0.55 * sw, y0 + 0.45 * (y1 - y0)),
            (cx + 0.55 * sw, y1),
            (cx - 0.55 * sw, y1),
            (cx - 0.55 * sw, y0 + 0.45 * (y1 - y0)),
        ],
        fill=255,
    )
    d.rectangle((cx - 0.1 * sw, y0, cx + 0.1 * sw, y0 + 0.15 * (y1 - y0)), fill=96)  # thin part
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(img).copy()


def cutout(
    alpha: np.ndarray,
    colour: tuple[int, int, int] = (0, 0, 0),
    transparent_rgb: tuple[int, int, int] | None = (0, 0, 0),
) -> Image.Image:
    """RGBA image: ``colour`` everywhere under ``alpha``; fully transparent pixels store
    ``transparent_rgb`` (None keeps ``colour`` there too)."""
    h, w = alpha.shape
    rgba = np.empty((h, w, 4), dtype=np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = alpha
    if transparent_rgb is not None:
        rgba[alpha == 0, :3] = transparent_rgb
    return Image.fromarray(rgba, "RGBA")


def matted(alpha: np.ndarray, darkness: np.ndarray | float) -> Image.Image:
    """RGBA image of a garment of ``darkness`` (0-255 against white, per pixel or one value)
    whose colour is matted against white: mixed with the page in proportion to transparency,
    as a photo masked in an editor stores it. Fully transparent pixels store white."""
    mixed = np.rint(255.0 - (alpha / 255.0) * darkness).astype(np.uint8)
    rgba = np.dstack([mixed, mixed, mixed, alpha]).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


def texture(shape: tuple[int, int], low: float, high: float) -> np.ndarray:
    """A deterministic diagonal stripe pattern of darkness between ``low`` and ``high``."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    return low + (high - low) * (0.5 + 0.5 * np.sin((xx + yy) / 3.0))


def coverage_png(intensity: np.ndarray) -> bytes:
    """Intensities (0-255 floats, light garment on black) rounded once, as an L PNG."""
    return png(Image.fromarray(np.rint(intensity).astype(np.uint8), "L"))


def png(img: Image.Image, **params) -> bytes:
    """PNG bytes of an image."""
    buf = io.BytesIO()
    img.save(buf, "PNG", **params)
    return buf.getvalue()
