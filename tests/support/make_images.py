"""Draw the synthetic reference images in ``tests/support/images/`` (no dataset pixels involved).

They imitate product photos — a dark, filled silhouette on a light background — so they exercise
the whole preprocessing path (trim, resize, sharpen, centre, negate). Re-create them with::

    python tests/support/make_images.py            # writes tests/support/images/*.png
    python tests/support/make_images.py --out /tmp/imgs --check

The drawing is deterministic, so running it again reproduces the committed files byte for byte
(``--check`` compares instead of writing and exits 1 on a difference).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

OUT_DIR = Path(__file__).resolve().parent / "images"
BACKGROUND = (246, 246, 244)
SIZE = (192, 192)


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", SIZE, BACKGROUND)
    return img, ImageDraw.Draw(img)


def ankle_boot() -> Image.Image:
    """A side view of an ankle boot, toe to the left: shaft, heel, sole, laces."""
    img, d = _canvas()
    leather, sole = (48, 40, 36), (20, 20, 20)
    d.polygon(
        [
            (92, 30),
            (150, 26),
            (152, 120),
            (160, 140),
            (160, 152),
            (24, 152),
            (22, 134),
            (34, 118),
            (70, 104),
            (90, 86),
        ],
        fill=leather,
    )
    d.rectangle((20, 150, 162, 162), fill=sole)  # sole
    d.rectangle((128, 150, 162, 170), fill=sole)  # heel
    d.ellipse((16, 126, 46, 162), fill=leather)  # rounded toe
    for y in range(44, 100, 12):  # laces: lighter stitches on the shaft
        d.line((96, y, 120, y + 4), fill=(110, 100, 90), width=3)
    return img.filter(ImageFilter.GaussianBlur(0.8))


def trouser() -> Image.Image:
    """A pair of trousers, front view."""
    img, d = _canvas()
    cloth = (40, 52, 80)
    d.polygon(
        [(62, 14), (130, 14), (142, 180), (104, 180), (96, 70), (88, 180), (50, 180)], fill=cloth
    )
    d.rectangle((62, 14, 130, 24), fill=(28, 36, 60))  # waistband
    return img.filter(ImageFilter.GaussianBlur(0.8))


def tshirt() -> Image.Image:
    """A short-sleeved T-shirt, front view."""
    img, d = _canvas()
    cloth = (60, 60, 64)
    d.polygon(
        [
            (66, 24),
            (82, 30),
            (110, 30),
            (126, 24),
            (170, 52),
            (154, 84),
            (136, 74),
            (136, 172),
            (56, 172),
            (56, 74),
            (38, 84),
            (22, 52),
        ],
        fill=cloth,
    )
    d.ellipse((82, 18, 110, 40), fill=BACKGROUND)  # neckline
    return img.filter(ImageFilter.GaussianBlur(0.8))


def bag() -> Image.Image:
    """A handbag with a handle."""
    img, d = _canvas()
    leather = (70, 44, 30)
    d.arc((60, 20, 132, 100), 180, 360, fill=leather, width=10)
    d.rounded_rectangle((26, 60, 166, 170), radius=14, fill=leather)
    d.line((26, 92, 166, 92), fill=(40, 26, 18), width=3)
    return img.filter(ImageFilter.GaussianBlur(0.8))


IMAGES: dict[str, Callable[[], Image.Image]] = {
    "ankle_boot": ankle_boot,
    "trouser": trouser,
    "tshirt": tshirt,
    "bag": bag,
}


def render(name: str) -> bytes:
    """PNG bytes of one reference image (deterministic: no metadata, fixed compression)."""
    buf = io.BytesIO()
    IMAGES[name]().save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) every reference image; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=OUT_DIR, help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--check", action="store_true", help="compare with the files instead of writing"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stale = []
    for name in IMAGES:
        path, data = args.out / f"{name}.png", render(name)
        if args.check:
            if not path.is_file() or path.read_bytes() != data:
                stale.append(path.name)
        else:
            path.write_bytes(data)
            print(f"wrote {path} ({len(data)} bytes)")
    if stale:
        print(
            f"out of date: {', '.join(stale)}; run python tests/support/make_images.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
