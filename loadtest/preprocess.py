"""Benchmark ``serving.preprocess``: accuracy under real-photo alterations, and speed.

Test-set images are saved as image files altered the way real photos differ from the dataset
(colour, size, dark object on a light background, JPEG compression, extra padding), decoded
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from serving.cli_numbers import POSITIVE_INT
from serving.contract import CLASS_NAMES, INPUT_KEY, OUTPUT_CLASS_IDS, OUTPUT_PROBABILITIES
from serving.preprocess import decode_image, to_batch

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
