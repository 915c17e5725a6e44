"""Benchmark ``serving.preprocess``: accuracy under real-photo alterations, and speed.

Test-set images are saved as image files altered the way real photos differ from the dataset
(colour, size, dark object on a light background, JPEG compression, extra padding, transparent
RGBA cutouts of dark and light garments), decoded
with :func:`serving.preprocess.decode_image` and classified with the exported model's
``serving_default`` signature. Each alteration's accuracy is compared with the accuracy on the
raw test tensors (``x / 255``); the quality bar is "within 3 points". Then the decode time per
image is measured for each alteration.

Usage::

    FASHION_MNIST_DIR=/path/to/fashion-mnist \\
        python -m loadtest.preprocess --model models/fashion_mnist [--limit 10000]

Writes a Markdown table to stdout (and ``--json PATH`` for the raw numbers). Exit code 1 when an
alteration misses the 3-point bar, 2 on bad arguments or missing model/data.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from serving.cli_numbers import POSITIVE_INT
from serving.contract import CLASS_NAMES, INPUT_KEY, OUTPUT_CLASS_IDS, OUTPUT_PROBABILITIES
from serving.preprocess import LUMA, decode_image, to_batch

log = logging.getLogger("loadtest.preprocess")

QUALITY_BAR = 3.0  # percentage points below the raw accuracy
REFERENCE_IMAGES = Path(__file__).resolve().parents[1] / "tests" / "support" / "images"
BACKGROUND = 255  # product photos: white background


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image, quality: int = 75) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _rgb(x: np.ndarray) -> Image.Image:
    # A tinted RGB version whose luma equals the original (R, G, B weighted like Pillow's L).
    g = x.astype(np.float32)
    rgb = np.stack([g * 1.05, g * 0.98, g * 0.97], axis=-1)
    return Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8), "RGB")


def _x4(img: Image.Image) -> Image.Image:
    return img.resize((img.width * 4, img.height * 4), Image.Resampling.BICUBIC)


def _invert(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    return Image.fromarray(255 - arr, img.mode)


def _pad(img: Image.Image, fill: int | tuple[int, ...]) -> Image.Image:
    # Asymmetric extra margin: 40% of the size on the left/top, 15% right/bottom.
    w, h = img.size
    canvas = Image.new(img.mode, (w + int(0.55 * w), h + int(0.55 * h)), fill)
    canvas.paste(img, (int(0.4 * w), int(0.4 * h)))
    return canvas


def _cutout_rgba(x: np.ndarray, light: bool, masked: bool = False) -> Image.Image:
    """A catalogue-style RGBA cutout (112x112) of one test image, garment on transparency.

    The test image (light garment on black) is read as the photo it came from: its value is
    how much darker than the white page the photo is there. A cutout tool splits that into
    *coverage* (alpha) and the garment's *own colour* (PNG stores colour un-associated:
    what the pixel looks like where it is fully covered):

    - alpha: the silhouette with soft edges (Gaussian-blurred mask, ~1 px at 28x28, partly
      transparent on both sides of the outline, so the tool's edge is not exactly the
      photo's), times a ramp that leaves faint, thin or light parts partly transparent;
    - colour: the darkness that, at that coverage, gives the photo's darkness (clipped where
      the blurred edge is too transparent for it: those pixels come out lighter than the
      photo, as a tool's eroded edge does), with a per-image tint that keeps its luma;
    - ``light``: the garment is light (darkest part 25-60% of full scale: beige, light grey),
      as catalogues show; otherwise dark (85-100%). Fully transparent pixels store black;
    - ``masked``: instead of the garment's own colour, keep the photo's pixels (already mixed
      with the white page at soft edges and in light parts) under the same alpha, as masking
      a photo in an image editor does. This breaks PNG's un-associated rule (alpha x colour
      would count the coverage twice); `serving.preprocess` recognises such matted colour.
    """
    rng = np.random.default_rng(zlib.crc32(x.tobytes()))
    size = (x.shape[1] * 4, x.shape[0] * 4)
    g = np.asarray(Image.fromarray(x, "L").resize(size, Image.Resampling.BICUBIC), np.float64)
    tone = rng.uniform(0.25, 0.6) if light else rng.uniform(0.85, 1.0)
    darkness = tone * g  # the photo on white: 255 - darkness
    silhouette = Image.fromarray(((g > 8) * 255).astype(np.uint8), "L")
    edge = np.asarray(silhouette.filter(ImageFilter.GaussianBlur(2)), np.float64) / 255
    alpha = edge * np.clip(darkness / 64.0, 0.0, 1.0)
    if masked:
        own = darkness
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            own = np.where(alpha > 0, np.clip(darkness / alpha, 0.0, 255.0), 0.0)
    gray = 255.0 - own
    chroma = rng.normal(size=3)
    chroma -= LUMA * (chroma @ LUMA) / (LUMA @ LUMA)  # zero luma: the tint keeps the gray
    chroma /= np.abs(chroma).max()
    room = np.minimum(gray, 255.0 - gray)[..., None]
    rgb = gray[..., None] + 0.5 * room * chroma
    a8 = np.rint(alpha * 255).astype(np.uint8)
    rgba = np.dstack([np.rint(np.clip(rgb, 0, 255)).astype(np.uint8), a8])
    rgba[a8 == 0] = 0
    return Image.fromarray(rgba, "RGBA")


#: name → (description, function uint8 [28, 28] → encoded file bytes)
ALTERATIONS: dict[str, tuple[str, Callable[[np.ndarray], bytes]]] = {
    "png": ("28x28 grayscale PNG (the dataset's form)", lambda x: _png(Image.fromarray(x, "L"))),
    "rgb": ("28x28 RGB PNG", lambda x: _png(_rgb(x))),
    "x4": (
        "112x112 grayscale PNG (4x larger, bicubic)",
        lambda x: _png(_x4(Image.fromarray(x, "L"))),
    ),
    "dark_on_light": (
        "112x112 RGB PNG, inverted: dark object on white",
        lambda x: _png(_invert(_x4(_rgb(x)))),
    ),
    "jpeg75": ("112x112 RGB JPEG quality 75", lambda x: _jpeg(_x4(_rgb(x)))),
    "padding": (
        "28x28 on a 43x43 black canvas, off-centre",
        lambda x: _png(_pad(Image.fromarray(x, "L"), 0)),
    ),
    "photo": (
        "all at once: RGB, 4x, dark on white, padded, JPEG 75",
        lambda x: _jpeg(_pad(_invert(_x4(_rgb(x))), (255, 255, 255))),
    ),
    "cutout": (
        "112x112 RGBA PNG cutout, dark garment on transparency, soft edges",
        lambda x: _png(_cutout_rgba(x, light=False)),
    ),
    "cutout_light": (
        "112x112 RGBA PNG cutout, light garment on transparency, soft edges",
        lambda x: _png(_cutout_rgba(x, light=True)),
    ),
    "cutout_masked": (
        "112x112 RGBA PNG, light garment, the photo's own pixels under the alpha mask",
        lambda x: _png(_cutout_rgba(x, light=True, masked=True)),
    ),
}


def _classify(fn, batch: np.ndarray, chunk: int = 1000) -> np.ndarray:
    import tensorflow as tf

    ids = []
    for start in range(0, len(batch), chunk):
        out = fn(**{INPUT_KEY: tf.constant(batch[start : start + chunk])})
        ids.append(out[OUTPUT_CLASS_IDS].numpy())
    return np.concatenate(ids)


def _time_decode(files: list[bytes], repeat: int) -> float:
    """Median over ``repeat`` runs of the mean decode time per image, in microseconds."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for data in files:
            decode_image(data)
        runs.append((time.perf_counter() - t0) / len(files) * 1e6)
    return float(np.median(runs))


def run(model_dir: Path, limit: int, timing_images: int, repeat: int) -> dict:
    """Measure accuracy and decode time for every alteration; returns the results."""
    from training.data import load_fashion_mnist
    from training.evaluate import load_serving_fn

    dataset = load_fashion_mnist(None)
    x, y = dataset.x_test[:limit], dataset.y_test[:limit]
    version_dir, fn = load_serving_fn(model_dir)
    raw = (x.astype(np.float32) / 255.0)[..., None]
    raw_acc = float((_classify(fn, raw) == y).mean() * 100)
    results = {
        "model": str(version_dir),
        "images": len(x),
        "raw_accuracy": raw_acc,
        "alterations": {},
    }
    for name, (desc, alter) in ALTERATIONS.items():
        files = [alter(img) for img in tqdm(x, desc=f"encode {name}", leave=False, disable=None)]
        batch = to_batch(
            [decode_image(f) for f in tqdm(files, desc=f"decode {name}", leave=False, disable=None)]
        )
        acc = float((_classify(fn, batch) == y).mean() * 100)
        sample = files[:timing_images]
        us = _time_decode(sample, repeat)
        size = Image.open(io.BytesIO(files[0])).size
        results["alterations"][name] = {
            "description": desc,
            "size": f"{size[0]}x{size[1]}",
            "accuracy": acc,
            "delta": acc - raw_acc,
            "decode_us": us,
            "mean_bytes": float(np.mean([len(f) for f in files])),
        }
        log.info("%s: accuracy %.2f%% (raw %.2f%%), %.0f us/image", name, acc, raw_acc, us)
    results["reference_images"] = _reference_images(fn)
    return results


def _reference_images(fn) -> list[dict]:
    """Predictions for the synthetic drawings in tests/support/images (named after their class)."""
    import tensorflow as tf

    paths = sorted(REFERENCE_IMAGES.glob("*.png"))
    if not paths:
        return []
    batch = to_batch([decode_image(p.read_bytes()) for p in paths])
    probs = fn(**{INPUT_KEY: tf.constant(batch)})[OUTPUT_PROBABILITIES].numpy()
    return [
        {"file": p.name, "label": CLASS_NAMES[int(row.argmax())], "confidence": float(row.max())}
        for p, row in zip(paths, probs, strict=True)
    ]


def markdown(results: dict) -> str:
    """The results as a Markdown table."""
    lines = [
        f"Model `{results['model']}`, {results['images']} test images; raw tensor accuracy "
        f"**{results['raw_accuracy']:.2f}%**.",
        "",
        "| alteration | input | accuracy | Δ vs raw | decode µs/image |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, r in results["alterations"].items():
        lines.append(
            f"| `{name}` | {r['description']} | {r['accuracy']:.2f}% | {r['delta']:+.2f} | "
            f"{r['decode_us']:.0f} |"
        )
    if results.get("reference_images"):
        lines += ["", "| reference image | predicted | confidence |", "| --- | --- | ---: |"]
        lines += [
            f"| `{r['file']}` | {r['label']} | {r['confidence']:.3f} |"
            for r in results["reference_images"]
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.preprocess",
        description="Accuracy and speed of serving.preprocess on altered Fashion-MNIST test images.",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=Path("models/fashion_mnist"),
        help="export base dir or version dir (default: %(default)s)",
    )
    parser.add_argument(
        "--limit", type=POSITIVE_INT, default=10000, help="test images to use (default all)"
    )
    parser.add_argument(
        "--timing-images",
        type=POSITIVE_INT,
        default=500,
        help="images per timing run (default 500)",
    )
    parser.add_argument(
        "--repeat", type=POSITIVE_INT, default=5, help="timing runs (median; default 5)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the raw numbers here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not args.model.exists():
        print(
            f"error: no model at {args.model} (train one: python -m training train)",
            file=sys.stderr,
        )
        return 2
    results = run(args.model, args.limit, args.timing_images, args.repeat)
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    misses = [n for n, r in results["alterations"].items() if r["delta"] < -QUALITY_BAR]
    if misses:
        print(f"below the {QUALITY_BAR:g}-point bar: {', '.join(misses)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
