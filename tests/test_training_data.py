"""IDX loading with checks, the official files, the validation split."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.support.training_idx import idx_bytes, write_fake_dataset, write_idx
from training.data import (
    FILES,
    DataError,
    Dataset,
    load_fashion_mnist,
    read_idx,
    split_validation,
)


def test_read_idx_roundtrip(tmp_path: Path) -> None:
    images = np.arange(5 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(5, 28, 28)
    path = write_idx(tmp_path / "x-idx3-ubyte.gz", images)
    out = read_idx(path, expected_magic=0x803, expected_shape=(5, 28, 28))
    np.testing.assert_array_equal(out, images)
    assert out.dtype == np.uint8


def test_read_idx_uncompressed(tmp_path: Path) -> None:
    path = tmp_path / "y-idx1-ubyte"
    path.write_bytes(idx_bytes(np.array([3, 1, 4], np.uint8)))
    np.testing.assert_array_equal(read_idx(path), [3, 1, 4])


def test_read_idx_truncated_payload(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "t-idx3-ubyte.gz", np.zeros((4, 28, 28), np.uint8), truncate=10)
    with pytest.raises(DataError) as err:
        read_idx(path)
    msg = str(err.value)
    assert str(path) in msg
    assert (
        "the payload has 3126 bytes (file truncated or padded); expected 3136 bytes for shape 4x28x28"
        in msg
    )
    assert "\n" not in msg


def test_read_idx_truncated_gzip_stream(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "g.gz", np.zeros((100, 28, 28), np.uint8))
    cut = tmp_path / "cut-idx3-ubyte.gz"
    cut.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"cut-idx3-ubyte\.gz: it is not a complete gzip stream"):
        read_idx(cut)


def test_read_idx_wrong_magic(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "m.gz", np.zeros(10, np.uint8), magic=0x00000803)
    with pytest.raises(DataError, match=r"the magic number is 0x00000803; expected 0x00000801"):
        read_idx(path, expected_magic=0x00000801)


def test_read_idx_not_uint8(tmp_path: Path) -> None:
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x0d\x01\x00\x00\x00\x01" + b"\x00" * 4))
    with pytest.raises(DataError, match=r"0x00000d01 is not uint8 IDX data"):
        read_idx(path)


def test_read_idx_wrong_count(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "c.gz", np.zeros(7, np.uint8))
    with pytest.raises(DataError, match=r"the header says shape 7; expected 10000"):
        read_idx(path, expected_shape=(10000,))


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.gz: the file does not exist"):
        read_idx(tmp_path / "nope.gz")


def test_load_missing_dir_names_it_and_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_fashion_mnist(tmp_path / "absent")
    msg = str(err.value)
    assert msg.startswith(f"Fashion-MNIST folder {tmp_path / 'absent'} does not exist")
    assert "train-images-idx3-ubyte.gz" in msg and "zalandoresearch/fashion-mnist" in msg


def test_load_missing_one_file(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    for spec in FILES.values():
        if spec.name != "t10k-labels-idx1-ubyte.gz":
            (tmp_path / spec.name).symlink_to(fashion_mnist_dir / spec.name)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: the file does not exist"):
        load_fashion_mnist(tmp_path)


def test_load_wrong_count_in_canonical_file(tmp_path: Path) -> None:
    write_fake_dataset(tmp_path, n_train=60000, n_test=100)
    with pytest.raises(
        DataError,
        match=r"t10k-images-idx3-ubyte\.gz: the header says shape 100x28x28; expected 10000x28x28",
    ):
        load_fashion_mnist(tmp_path, verify_md5=False)


def test_load_md5_mismatch_on_structurally_valid_files(tmp_path: Path) -> None:
    write_fake_dataset(tmp_path)
    with pytest.raises(
        DataError,
        match=r"train-images-idx3-ubyte\.gz: its md5 is [0-9a-f]{32}; expected the official md5 8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ):
        load_fashion_mnist(tmp_path)
    ds = load_fashion_mnist(tmp_path, verify_md5=False)  # the structure itself is fine
    assert ds.x_train.shape == (60000, 28, 28) and ds.y_test.shape == (10000,)


def test_load_label_out_of_range(tmp_path: Path) -> None:
    write_fake_dataset(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(60000, 10, np.uint8))
    with pytest.raises(
        DataError, match=r"train-labels-idx1-ubyte\.gz: it holds label 10; expected labels 0-9"
    ):
        load_fashion_mnist(tmp_path, verify_md5=False)


def test_load_uses_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "from-env"))
    with pytest.raises(DataError, match="from-env does not exist"):
        load_fashion_mnist()


def test_official_files(dataset: Dataset) -> None:
    assert dataset.x_train.shape == (60000, 28, 28) and dataset.x_train.dtype == np.uint8
    assert dataset.x_test.shape == (10000, 28, 28)
    assert dataset.y_train[0] == 9 and int(dataset.x_train[0].sum()) == 76247
    assert dataset.y_test[0] == 9 and int(dataset.x_test[0].sum()) == 33456
    assert np.bincount(dataset.y_train).tolist() == [6000] * 10
    assert np.bincount(dataset.y_test).tolist() == [1000] * 10


def test_corrupt_byte_in_official_copy_is_caught(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    for spec in FILES.values():
        shutil.copy(fashion_mnist_dir / spec.name, tmp_path / spec.name)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz"):
        load_fashion_mnist(tmp_path)


def test_split_validation_is_stratified_disjoint_and_seeded() -> None:
    x = np.arange(1000, dtype=np.uint8).reshape(1000, 1, 1).repeat(28, 1).repeat(28, 2)
    y = (np.arange(1000) % 10).astype(np.uint8)
    ids = np.arange(1000)
    x_tr, _, x_val, y_val = split_validation(ids, y, 0.1, seed=1)
    assert len(x_val) == 100 and len(x_tr) == 900
    assert np.bincount(y_val).tolist() == [10] * 10
    assert set(x_tr.tolist()).isdisjoint(x_val.tolist())
    np.testing.assert_array_equal(split_validation(ids, y, 0.1, seed=1)[2], x_val)
    assert not np.array_equal(split_validation(ids, y, 0.1, seed=2)[2], x_val)
    assert split_validation(x, y, 0.1, seed=1)[0].shape == (900, 28, 28)
    with pytest.raises(ValueError, match="fraction"):
        split_validation(ids, y, 1.0)


def test_without_a_folder_keras_load_data_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    fake = (
        (np.ones((6, 28, 28), np.int64), np.arange(6) % 10),
        (np.zeros((2, 28, 28), np.int64), np.array([1, 2])),
    )
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", lambda: fake)
    ds = load_fashion_mnist()
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape == (6, 28, 28)
    assert ds.y_test.tolist() == [1, 2]


def test_keras_download_failure_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    def offline():
        raise OSError("Name or service not known")

    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(DataError) as err:
        load_fashion_mnist()
    assert str(err.value).startswith(
        "Fashion-MNIST: Keras' fashion_mnist.load_data() failed (OSError: Name or service not known)"
    )
    assert "FASHION_MNIST_DIR" in str(err.value)
