"""The images every load test sends: the Fashion-MNIST test set, else a small generated set.

``load_images()`` reads the test split from ``$FASHION_MNIST_DIR`` (the IDX files, checked by
``training.data.read_idx``; no TensorFlow) with its labels, so a load test can count wrong
answers. Without the variable it generates a few hundred deterministic 28x28 images *without*
labels: the load test then checks shapes and statuses only, and says so. Every image is also
encoded once as a 28x28 grayscale PNG, which the gateway takes in the dataset's form unchanged.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from serving.contract import IMAGE_SIZE
from training.data import ENV_VAR, FILES, read_idx

GENERATED_COUNT = 256


@dataclass(frozen=True)
class ImageSet:
    """``pixels`` uint8 ``[N, 28, 28]``, their PNG files, and labels when known."""

    pixels: np.ndarray
    pngs: list[bytes]
    labels: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(self.pngs)

    def tensor(self, indices: list[int]) -> np.ndarray:
        """The images at ``indices`` as the model's float32 ``[n, 28, 28, 1]`` input in [0, 1]."""
        return (self.pixels[indices].astype(np.float32) / 255.0)[..., None]


def encode_png(pixels: np.ndarray) -> bytes:
    """A uint8 ``[28, 28]`` array as a grayscale PNG file."""
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def generated_pixels(count: int = GENERATED_COUNT, seed: int = 0) -> np.ndarray:
    """``count`` deterministic 28x28 images: a light blob of random size and place on black."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    out = np.empty((count, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for i in range(count):
        cy, cx = rng.uniform(8, 20, size=2)
        ry, rx = rng.uniform(3, 11, size=2)
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        noise = rng.integers(0, 40, size=blob.shape)
        out[i] = np.where(blob, rng.integers(120, 256), 0) + noise * blob
    return out


def load_images(limit: int = 1000, data_dir: str | os.PathLike[str] | None = None) -> ImageSet:
    """The first ``limit`` test images with labels from ``data_dir`` or ``$FASHION_MNIST_DIR``;
    without either, a generated unlabelled set. Raises ``training.data.DataError`` on bad files."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    folder = data_dir or os.environ.get(ENV_VAR)
    if folder:
        spec_x, spec_y = FILES["x_test"], FILES["y_test"]
        x = read_idx(Path(folder) / spec_x.name, expected_magic=spec_x.magic)
        y = read_idx(Path(folder) / spec_y.name, expected_magic=spec_y.magic)
        pixels, labels = x[:limit], y[:limit].astype(np.int64)
    else:
        pixels, labels = generated_pixels(min(limit, GENERATED_COUNT)), None
    source = images_source(len(pixels), folder)
    return ImageSet(pixels, [encode_png(p) for p in pixels], labels, source)


def images_source(limit: int = 1000, data_dir: str | os.PathLike[str] | None = None) -> str:
    """Where `load_images` with the same arguments takes its images from (reads nothing): a
    report says it, as a generated set carries no labels to check answers against."""
    folder = data_dir or os.environ.get(ENV_VAR)
    if folder:
        return f"Fashion-MNIST test set ({limit} images from {folder})"
    count = min(limit, GENERATED_COUNT)
    return f"generated ({count} unlabelled images; set {ENV_VAR} to check labels)"
