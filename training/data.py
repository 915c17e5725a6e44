"""Fashion-MNIST loading: the four canonical IDX ``.gz`` files, verified, or Keras' cache.

Example::

    from training.data import load_fashion_mnist
    ds = load_fashion_mnist(os.environ["FASHION_MNIST_DIR"])
    ds.x_train.shape  # (60000, 28, 28), uint8
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ENV_VAR = "FASHION_MNIST_DIR"
IMAGES_MAGIC = 0x00000803  # uint8 data, 3 dimensions
LABELS_MAGIC = 0x00000801  # uint8 data, 1 dimension
NUM_CLASSES = 10
HOW_TO_GET = (
    "Download the four files of the official release from "
    "https://github.com/zalandoresearch/fashion-mnist (data/fashion/*.gz) into that folder, "
    f"or unset {ENV_VAR} and drop --data-dir to use Keras' fashion_mnist.load_data() cache."
)


@dataclass(frozen=True)
class IdxFile:
    """What one canonical file must contain."""

    name: str
    md5: str
    magic: int
    count: int

    @property
    def shape(self) -> tuple[int, ...]:
        """Expected array shape."""
        return (self.count, 28, 28) if self.magic == IMAGES_MAGIC else (self.count,)


FILES: dict[str, IdxFile] = {
    "x_train": IdxFile(
        "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", IMAGES_MAGIC, 60000
    ),
    "y_train": IdxFile(
        "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", LABELS_MAGIC, 60000
    ),
    "x_test": IdxFile(
        "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", IMAGES_MAGIC, 10000
    ),
    "y_test": IdxFile(
        "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", LABELS_MAGIC, 10000
    ),
}


class DataError(Exception):
    """A data file is missing or corrupt; the message is one paragraph naming the file."""


@dataclass(frozen=True)
class Dataset:
    """Fashion-MNIST as uint8 arrays: images ``[N,28,28]``, labels ``[N]``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __post_init__(self) -> None:
        for x, y, split in (
            (self.x_train, self.y_train, "train"),
            (self.x_test, self.y_test, "test"),
        ):
            if x.dtype != np.uint8 or y.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
                raise DataError(
                    f"the {split} split must be uint8 [N,28,28] images and uint8 [N] labels, "
                    f"got {x.dtype} {x.shape} and {y.dtype} {y.shape}."
                )
            if len(x) != len(y):
                raise DataError(f"the {split} split has {len(x)} images but {len(y)} labels.")


def _fail(path: Path, problem: str, expected: str) -> DataError:
    return DataError(f"Fashion-MNIST file {path}: {problem}; expected {expected}. {HOW_TO_GET}")


def read_idx(
    path: str | Path,
    *,
    expected_magic: int | None = None,
    expected_shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Read one IDX file (gzipped if the name ends in ``.gz``) of uint8 data, with checks.

    Checks the gzip stream, the magic number (uint8 type code, dimension count), that the
    payload size matches the header, and optionally the magic number and shape expected.
    Raises :class:`DataError` with a message naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "the file does not exist", "a gzipped IDX file")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise _fail(
            path, f"it is not a complete gzip stream ({exc})", "an intact gzipped IDX file"
        ) from None
    if len(raw) < 4:
        raise _fail(path, f"it holds only {len(raw)} bytes", "an IDX header of at least 4 bytes")
    (magic,) = struct.unpack(">I", raw[:4])
    if expected_magic is not None and magic != expected_magic:
        raise _fail(path, f"the magic number is 0x{magic:08x}", f"0x{expected_magic:08x}")
    zero, dtype_code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise _fail(
            path,
            f"the magic number 0x{magic:08x} is not uint8 IDX data",
            "0x00000801 or 0x00000803",
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _fail(path, "the header is truncated", f"{header} header bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if expected_shape is not None and dims != expected_shape:
        raise _fail(
            path,
            f"the header says shape {'x'.join(map(str, dims))}",
            f"{'x'.join(map(str, expected_shape))}",
        )
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise _fail(
            path,
            f"the payload has {len(raw) - header} bytes (file truncated or padded)",
            f"{size} bytes for shape {'x'.join(map(str, dims))}",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


_MD5_CACHE: dict[tuple[str, int, int], str] = {}


def file_md5(path: Path) -> str:
    """MD5 of a file, cached per (path, size, mtime) so repeated loads cost nothing."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _MD5_CACHE:
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _MD5_CACHE[key] = digest.hexdigest()
    return _MD5_CACHE[key]


def _load_dir(data_dir: Path, verify_md5: bool) -> Dataset:
    if not data_dir.is_dir():
        raise DataError(
            f"Fashion-MNIST folder {data_dir} does not exist; expected a folder with "
            f"{', '.join(f.name for f in FILES.values())}. {HOW_TO_GET}"
        )
    arrays: dict[str, np.ndarray] = {}
    for key, spec in FILES.items():
        path = data_dir / spec.name
        arr = read_idx(path, expected_magic=spec.magic, expected_shape=spec.shape)
        if key.startswith("y") and arr.max() >= NUM_CLASSES:
            raise _fail(path, f"it holds label {int(arr.max())}", f"labels 0-{NUM_CLASSES - 1}")
        if verify_md5 and (md5 := file_md5(path)) != spec.md5:
            raise _fail(path, f"its md5 is {md5}", f"the official md5 {spec.md5}")
        arrays[key] = arr
    log.info("loaded Fashion-MNIST from %s", data_dir)
    return Dataset(**arrays)


def _load_keras() -> Dataset:
    import keras  # deferred: costs seconds

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as exc:  # network/cache errors come in many types; report them as data errors
        raise DataError(
            f"Fashion-MNIST: Keras' fashion_mnist.load_data() failed ({type(exc).__name__}: {exc}); "
            f"expected a cached or downloadable copy in ~/.keras/datasets. Set {ENV_VAR} or pass "
            "--data-dir to a folder with the four official .gz files instead."
        ) from None
    log.info("loaded Fashion-MNIST through keras.datasets")
    return Dataset(
        x_train.astype(np.uint8),
        y_train.astype(np.uint8),
        x_test.astype(np.uint8),
        y_test.astype(np.uint8),
    )


def load_fashion_mnist(data_dir: str | Path | None = None, *, verify_md5: bool = True) -> Dataset:
    """Load Fashion-MNIST from ``data_dir``, else ``$FASHION_MNIST_DIR``, else Keras' cache.

    Every file is checked (gzip stream, magic number, shape, payload size, label range and,
    unless ``verify_md5=False``, the official md5). Raises :class:`DataError` on a problem.
    """
    if data_dir is None:
        data_dir = os.environ.get(ENV_VAR) or None
    if data_dir is None:
        return _load_keras()
    return _load_dir(Path(data_dir), verify_md5)


def split_validation(
    x: np.ndarray, y: np.ndarray, fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split a stratified validation set off the training data: ``(x_tr, y_tr, x_val, y_val)``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val_idx: list[np.ndarray] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        val_idx.append(idx[: max(1, round(len(idx) * fraction))])
    val = np.sort(np.concatenate(val_idx))
    mask = np.ones(len(y), dtype=bool)
    mask[val] = False
    return x[mask], y[mask], x[val], y[val]
