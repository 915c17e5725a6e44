"""Writers for small synthetic IDX files (valid or deliberately broken) for the data tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Raw IDX bytes for a uint8 array (header: magic, then one uint32 per dimension)."""
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x00000800 | array.ndim
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, truncate: int = 0) -> Path:
    """Write a gzipped IDX file; ``truncate`` drops that many bytes from the payload's end."""
    data = idx_bytes(array, magic)
    if truncate:
        data = data[:-truncate]
    path.write_bytes(gzip.compress(data, compresslevel=1))
    return path


def write_fake_dataset(folder: Path, n_train: int = 60000, n_test: int = 10000) -> Path:
    """A folder with the four canonical names holding structurally valid, all-zero data."""
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((n_train, 28, 28), np.uint8))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((n_test, 28, 28), np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)
    return folder
