"""What the lesson teaches, as PNGs: feature maps after each conv/pool layer, the first-layer
filters, and a hand-written 3x3 filter followed by 2x2 max pooling.

Example::

    from training.visualize import load_keras_model, plot_feature_maps
    model = load_keras_model("models/fashion_mnist")
    plot_feature_maps(model, [image], "maps.png")   # image: float32 [28,28] in [0,1]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, UnidentifiedImageError

from serving.contract import CLASS_NAMES, IMAGE_SIZE
from serving.preprocess import PreprocessError, decode_image
from training.errors import ImageError
from training.evaluate import ModelNotFoundError, resolve_version_dir

# TensorFlow/Keras (and training.model, which imports Keras) are imported inside the functions
# that need them: the filter demo and the CLI's other commands run without TensorFlow's runtime.

FEATURE_LAYERS = ("conv1", "pool1", "conv2", "pool2")
CELL_INCHES = 1.5
DPI = 100
FILTERS = {
    # Sobel-like kernels: "vertical" responds to vertical lines/edges (left-right intensity change).
    "vertical": np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32),
    "horizontal": np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=np.float32),
    "edges": np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float32),
}
MAX_FILTER_SIDE = 1024  # larger images are downscaled first (the demo is about shapes, not pixels)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path


def load_keras_model(export: str | Path):  # -> keras.Model
    """Rebuild :func:`training.model.build_model` with the weights of an exported SavedModel.

    ``export`` is a version folder or a base folder (newest version is used). The serving
    signature only returns probabilities; the Keras model exposes the intermediate layers.
    """
    import tensorflow as tf

    from training.model import build_model

    loaded = tf.saved_model.load(str(resolve_version_dir(export)))

    def key(name: str) -> str:  # "fashion_mnist_convnet/conv1/kernel:0" -> "conv1/kernel"
        return "/".join(name.split(":")[0].split("/")[-2:])

    by_key = {key(v.name): v for v in loaded.variables}
    model = build_model()
    for weight in model.weights:
        source = by_key.get(key(weight.path))
        if source is None or tuple(source.shape) != tuple(weight.shape):
            raise ModelNotFoundError(
                f"{export}: the SavedModel has no variable {key(weight.path)} of shape "
                f"{tuple(weight.shape)}; is it an export of training.model.build_model()?"
            )
        weight.assign(source.numpy())
    return model


def feature_maps(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """Activations after each conv/pool layer for float32 ``[N,28,28]`` (or ``[N,28,28,1]``)."""
    import keras

    x = np.asarray(images, dtype=np.float32).reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1)
    probe = keras.Model(model.inputs[0], [model.get_layer(n).output for n in FEATURE_LAYERS])
    return {n: np.asarray(a) for n, a in zip(FEATURE_LAYERS, probe(x, training=False), strict=True)}


def feature_maps_size(num_images: int, channels: int) -> tuple[int, int]:
    """PNG size (width, height) in pixels of :func:`plot_feature_maps`'s output."""
    if num_images == 1:
        cols, rows = channels + 1, len(FEATURE_LAYERS)
    else:
        cols, rows = len(FEATURE_LAYERS) + 1, num_images
    return round(cols * CELL_INCHES * DPI), round(rows * CELL_INCHES * DPI)


def plot_feature_maps(
    model,
    images: Sequence[np.ndarray] | np.ndarray,
    path: str | Path,
    *,
    channels: int = 8,
    channel: int = 0,
    titles: Sequence[str] | None = None,
) -> Path:
    """Write the feature maps of ``images`` (float32 28x28 in [0,1]) to a PNG.

    One image: rows = conv1, pool1, conv2, pool2; columns = the input and the first ``channels``
    channels. Several images (the lesson's figure): one row per image, columns = the input and
    channel ``channel`` after each layer, so the same filter can be compared across images.
    """
    arr = np.asarray(images, dtype=np.float32).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    if not 1 <= channels <= 64 or not 0 <= channel < 64:
        raise ValueError("channels must be 1-64 and channel 0-63")
    maps = feature_maps(model, arr)
    width, height = feature_maps_size(len(arr), channels)
    fig = Figure(figsize=(width / DPI, height / DPI))
    if len(arr) == 1:
        grid = fig.subplots(len(FEATURE_LAYERS), channels + 1, squeeze=False)
        for r, name in enumerate(FEATURE_LAYERS):
            grid[r, 0].imshow(arr[0], cmap="gray", vmin=0, vmax=1)
            grid[r, 0].set_title("input" if r == 0 else "", fontsize=8)
            for c in range(channels):
                a = maps[name][0, :, :, c]
                grid[r, c + 1].imshow(a, cmap="inferno")
                grid[r, c + 1].set_title(f"{name} {'x'.join(map(str, a.shape))} #{c}", fontsize=7)
    else:
        grid = fig.subplots(len(arr), len(FEATURE_LAYERS) + 1, squeeze=False)
        for r in range(len(arr)):
            grid[r, 0].imshow(arr[r], cmap="gray", vmin=0, vmax=1)
            grid[r, 0].set_title(titles[r] if titles else f"image {r}", fontsize=8)
            for c, name in enumerate(FEATURE_LAYERS):
                grid[r, c + 1].imshow(maps[name][r, :, :, channel], cmap="inferno")
                grid[r, c + 1].set_title(f"{name} channel {channel}", fontsize=8)
    for ax in grid.flat:
        ax.set_axis_off()
    return _save(fig, path)


FILTERS_SIZE = (round(8 * 0.9 * DPI), round(8 * 0.9 * DPI))


def plot_first_layer_filters(model, path: str | Path) -> Path:
    """Write the 64 learned 3x3 kernels of the first convolution as an 8x8 grid."""
    kernels = np.asarray(model.get_layer(FEATURE_LAYERS[0]).kernel)[:, :, 0, :]  # [3,3,64]
    fig = Figure(figsize=(FILTERS_SIZE[0] / DPI, FILTERS_SIZE[1] / DPI))
    grid = fig.subplots(8, 8)
    lim = float(np.abs(kernels).max()) or 1.0
    for i, ax in enumerate(grid.flat):
        ax.imshow(kernels[:, :, i], cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_axis_off()
    fig.suptitle("conv1: the 64 learned 3x3 filters (red +, blue -)", fontsize=9)
    return _save(fig, path)


def read_grayscale(path: str | Path, max_side: int = MAX_FILTER_SIDE) -> np.ndarray:
    """Any image file as float32 grayscale in [0,255], downscaled to at most ``max_side``."""

    try:
        with Image.open(path) as img:
            img = img.convert("L")
            if max(img.size) > max_side:
                img.thumbnail((max_side, max_side))
            return np.asarray(img, dtype=np.float32)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise ImageError(f"{path}: cannot read the image ({exc})") from None


def image_to_model_input(path: str | Path) -> np.ndarray:
    """An image file as the model's float32 ``[28,28]`` input in [0,1].

    Uses ``serving.preprocess.decode_image`` (the gateway's preprocessing), so the picture
    shows what the served model sees.
    """
    data = Path(path).read_bytes()
    try:
        return np.asarray(decode_image(data), dtype=np.float32).reshape(IMAGE_SIZE, IMAGE_SIZE)
    except PreprocessError as exc:
        raise ImageError(f"{path}: {exc}") from None


def apply_filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve (valid, as the lesson's loop does) and clip to [0,255]."""
    image = np.asarray(image, dtype=np.float32)
    kh, kw = kernel.shape
    if image.ndim != 2 or image.shape[0] < kh or image.shape[1] < kw:
        raise ImageError(f"the image must be 2-D and at least {kh}x{kw}, got {image.shape}")
    h, w = image.shape[0] - kh + 1, image.shape[1] - kw + 1
    out = np.zeros((h, w), dtype=np.float32)
    for dy in range(kh):
        for dx in range(kw):
            out += kernel[dy, dx] * image[dy : dy + h, dx : dx + w]
    return np.clip(out, 0, 255)


def max_pool(image: np.ndarray, size: int = 2) -> np.ndarray:
    """Non-overlapping ``size`` x ``size`` max pooling (odd edges are dropped)."""
    h, w = image.shape[0] // size, image.shape[1] // size
    return image[: h * size, : w * size].reshape(h, size, w, size).max(axis=(1, 3))


FILTER_DEMO_SIZE = (round(3 * 4 * DPI), round(4.4 * DPI))


def plot_filter_demo(image: np.ndarray, path: str | Path, kernel_name: str = "vertical") -> Path:
    """Write original / filtered / 2x2-max-pooled side by side for a grayscale [0,255] image."""
    kernel = FILTERS[kernel_name]
    filtered = apply_filter(image, kernel)
    pooled = max_pool(filtered)
    fig = Figure(figsize=(FILTER_DEMO_SIZE[0] / DPI, FILTER_DEMO_SIZE[1] / DPI))
    axes = fig.subplots(1, 3)
    for ax, img, title in zip(
        axes,
        (image, filtered, pooled),
        (
            f"original {image.shape[1]}x{image.shape[0]}",
            f"{kernel_name} filter {kernel.astype(int).tolist()}",
            f"2x2 max pooling {pooled.shape[1]}x{pooled.shape[0]}",
        ),
        strict=True,
    ):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    return _save(fig, path)


def class_examples(x: np.ndarray, y: np.ndarray, class_id: int, count: int = 3) -> np.ndarray:
    """Indices of the first ``count`` images of ``class_id``."""
    if not 0 <= class_id < len(CLASS_NAMES):
        raise ValueError(f"class id must be 0-{len(CLASS_NAMES) - 1}, got {class_id}")
    return np.flatnonzero(y == class_id)[:count]
