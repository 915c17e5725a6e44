"""`python -m training`: commands run in-process (TensorFlow is already loaded), error paths
as real subprocesses (exit code, one message, no traceback), and the kernels the CLI picks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.training_idx import write_fake_dataset, write_idx
from training.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m training ARGS` in a fresh interpreter."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def assert_clean_failure(proc: subprocess.CompletedProcess[str], code: int, expected: str) -> str:
    """Exit ``code``, exactly one error line containing ``expected``, no traceback."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0], lines[0]
    return lines[0]


# ---- TensorFlow's kernels ----

_ONEDNN_PROBE = (
    "import runpy; runpy.run_module('training', run_name='probe'); "
    "from tensorflow.python.framework import test_util; print(test_util.IsMklEnabled())"
)


@pytest.mark.slow
@pytest.mark.parametrize(("setting", "enabled"), [(None, "True"), ("0", "False")])
def test_the_cli_runs_on_onednn_unless_turned_off(setting: str | None, enabled: str) -> None:
    """`python -m training` turns oneDNN on (a quarter less CPU per epoch here) before
    TensorFlow loads; TF_ENABLE_ONEDNN_OPTS in the environment decides when it is set."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    proc = subprocess.run(
        [sys.executable, "-c", _ONEDNN_PROBE],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == enabled


# ---- error paths, as subprocesses (none of these needs TensorFlow) ----


def test_train_missing_data_dir(tmp_path: Path) -> None:
    proc = run_cli(
        "train", "--data-dir", str(tmp_path / "nowhere"), "--export-dir", str(tmp_path / "m")
    )
    line = assert_clean_failure(
        proc,
        1,
        f"error: Fashion-MNIST folder {tmp_path / 'nowhere'} does not exist; expected a folder with train-images-idx3-ubyte.gz",
    )
    assert "https://github.com/zalandoresearch/fashion-mnist" in line
    assert not (tmp_path / "m").exists()


def test_train_corrupt_file(tmp_path: Path) -> None:
    data = write_fake_dataset(tmp_path / "data", n_train=10, n_test=10)
    write_idx(
        data / "train-images-idx3-ubyte.gz", np.zeros((60000, 28, 28), np.uint8), truncate=100
    )
    proc = run_cli("train", "--data-dir", str(data), "--export-dir", str(tmp_path / "m"))
    assert_clean_failure(
        proc, 1,
        f"error: Fashion-MNIST file {data / 'train-images-idx3-ubyte.gz'}: the payload has 47039900 bytes "
        "(file truncated or padded); expected 47040000 bytes for shape 60000x28x28.",
    )  # fmt: skip
    assert not (tmp_path / "m").exists()


def test_train_env_var_names_the_folder(tmp_path: Path) -> None:
    proc = run_cli(
        "train",
        "--export-dir",
        str(tmp_path / "m"),
        env={"FASHION_MNIST_DIR": str(tmp_path / "env-dir")},
    )
    assert_clean_failure(proc, 1, f"Fashion-MNIST folder {tmp_path / 'env-dir'} does not exist")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--epochs", "0"], "argument --epochs: expected an integer >= 1, got '0'"),
        (
            ["train", "--batch-size", "big"],
            "argument --batch-size: expected an integer >= 1, got 'big'",
        ),
        (
            ["train", "--validation-fraction", "1.5"],
            "argument --validation-fraction: expected a finite number in [0, 1), got '1.5'",
        ),
        (
            ["train", "--learning-rate", "inf"],
            "argument --learning-rate: expected a finite number > 0, got 'inf'",
        ),
        (
            ["train", "--validation-fraction", "nan"],
            "argument --validation-fraction: expected a finite number in [0, 1), got 'nan'",
        ),
        (["train", "--recipe", "huge"], "argument --recipe: invalid choice: 'huge'"),
        (
            ["train", "--erase", "1.5"],
            "argument --erase: expected a finite number in [0, 1], got '1.5'",
        ),
        (
            ["train", "--weight-decay", "-1"],
            "argument --weight-decay: expected a finite number >= 0, got '-1'",
        ),
        (
            ["visualize", "--model", "m"],
            "one of the arguments --image --test-index --class-id is required",
        ),
        (
            ["visualize", "--model", "m", "--class-id", "10"],
            "argument --class-id: invalid choice: 10",
        ),
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_arguments_exit_2(args: list[str], message: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("usage: python -m training")
    assert message in proc.stderr.rstrip().splitlines()[-1]


def test_evaluate_without_a_model(tmp_path: Path) -> None:
    proc = run_cli("evaluate", str(tmp_path))
    assert_clean_failure(
        proc, 1, f"error: {tmp_path}: no SavedModel here; expected a version folder"
    )


def test_filter_rejects_a_non_image(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.png"
    bogus.write_text("not an image")
    proc = run_cli("filter", str(bogus), "--out", str(tmp_path / "f.png"))
    assert_clean_failure(proc, 1, f"error: {bogus}: cannot read the image")
    assert not (tmp_path / "f.png").exists()


def test_filter_rejects_a_decompression_bomb(tmp_path: Path) -> None:
    from tests.test_preprocess import png_header_only

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(30000, 30000))  # 900 megapixels declared, ~100 bytes
    proc = run_cli("filter", str(bomb), "--out", str(tmp_path / "f.png"))
    assert_clean_failure(proc, 1, f"error: {bomb}: cannot read the image")
    assert not (tmp_path / "f.png").exists()


def test_train_unwritable_export_dir_fails_before_training(
    fashion_mnist_dir: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a folder")
    export_dir = blocker / "fashion_mnist"
    proc = run_cli(
        "train", "--data-dir", str(fashion_mnist_dir), "--export-dir", str(export_dir),
        "--max-train-samples", "500", "--epochs", "1", "--no-progress",
    )  # fmt: skip
    assert_clean_failure(proc, 1, f"error: cannot create the export folder {export_dir}: ")
    assert "epoch" not in proc.stderr  # it failed before training


def test_filter_needs_exactly_one_source(tmp_path: Path) -> None:
    proc = run_cli("filter", "--out", str(tmp_path / "f.png"))
    assert_clean_failure(proc, 1, "error: give either an IMAGE file or --test-index N (not both)")
    proc = run_cli("filter", str(tmp_path / "missing.png"))
    assert_clean_failure(proc, 1, f"error: {tmp_path / 'missing.png'}: no such image file")


# ---- commands, in-process ----


def test_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary"]) == 0
    out = capsys.readouterr().out.splitlines()
    shapes = [line.split()[2] for line in out[1:-1]]
    assert shapes == ["26x26x64", "13x13x64", "11x11x64", "5x5x64", "1600", "128", "10"]
    assert [line.split()[0] for line in out[1:-1]] == [
        "conv1",
        "pool1",
        "conv2",
        "pool2",
        "flatten",
        "dense",
        "probabilities",
    ]
    assert [line.split()[3] for line in out[1:-1]] == [
        "640",
        "0",
        "36,928",
        "0",
        "0",
        "204,928",
        "1,290",
    ]
    assert out[-1] == "Total params: 243,786"


@pytest.mark.slow
def test_inspect(exported_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(exported_model)]) == 0
    out = capsys.readouterr().out
    assert f"SavedModel: {exported_model / '1'}\n" in out
    assert (
        "signature_def['serving_default']:\n"
        "  The given SavedModel SignatureDef contains the following input(s):\n"
        "    inputs['images'] tensor_info:\n"
        "        dtype: DT_FLOAT\n"
        "        shape: (-1, 28, 28, 1)\n"
        "  The given SavedModel SignatureDef contains the following output(s):\n"
        "    outputs['class_ids'] tensor_info:\n"
        "        dtype: DT_INT64\n"
        "        shape: (-1,)\n"
        "    outputs['class_names'] tensor_info:\n"
        "        dtype: DT_STRING\n"
        "        shape: (-1,)\n"
        "    outputs['probabilities'] tensor_info:\n"
        "        dtype: DT_FLOAT\n"
        "        shape: (-1, 10)\n"
    ) in out
    assert (
        "other files: assets.extra, confusion_matrix.png, metrics.json, model.tflite, training_curves.png"
        in out
    )


@pytest.mark.slow
def test_evaluate_prints_the_report_and_writes_json(
    exported_model: Path,
    fashion_mnist_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out_json = tmp_path / "eval.json"
    args = [
        "evaluate",
        str(exported_model / "1"),
        "--data-dir",
        str(fashion_mnist_dir),
        "--json",
        str(out_json),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    written = json.loads(out_json.read_text())
    stored = json.loads((exported_model / "1" / "metrics.json").read_text())
    assert written["confusion_matrix"] == stored["confusion_matrix"]
    assert f"test accuracy {stored['test_accuracy']:.4f} on 10000 images" in out
    assert "9 Ankle boot" in out and "confusion matrix (rows = true class" in out


@pytest.mark.slow
def test_train_cli_exports_next_version_and_refuses_existing(
    exported_model: Path,
    fashion_mnist_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = tmp_path / "fashion_mnist"
    shutil.copytree(exported_model, base)
    common = ["--data-dir", str(fashion_mnist_dir), "--export-dir", str(base), "--recipe", "lesson",
              "--epochs", "1", "--max-train-samples", "600", "--seed", "5", "--no-progress",
              "--erase", "0.25", "--weight-decay", "0.01", "--test-time-flip"]  # fmt: skip
    assert main(["train", *common, "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert f"exported to {base / '2'}" in out
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]
    metrics = json.loads((base / "2" / "metrics.json").read_text())
    assert metrics["version"] == 2
    recipe = metrics["recipe"]
    # the lesson's recipe with the command line's overrides, as trained
    assert (recipe["optimizer"], recipe["batch_size"], recipe["ema"]) == ("adam", 32, False)
    assert recipe["epochs"] == 1
    assert (recipe["seed"], recipe["max_train_samples"]) == (5, 600)
    assert (recipe["erase"], recipe["weight_decay"]) == (0.25, 0.01)
    assert recipe["test_time_flip"] is True
    assert not (base / "2" / "confusion_matrix.png").exists()

    assert main(["train", *common, "--version", "1"]) == 1
    err = capsys.readouterr().err
    assert (
        f"error: version 1 already exists in {base}; pass --overwrite to replace it or omit --version to export as version 3"
        in err
    )
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]


@pytest.mark.slow
def test_visualize_one_image_and_a_class(
    exported_model: Path,
    fashion_mnist_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from PIL import Image

    from training.visualize import FILTERS_SIZE, feature_maps_size

    out = tmp_path / "maps.png"
    args = ["visualize", "--model", str(exported_model), "--data-dir", str(fashion_mnist_dir)]
    assert main([*args, "--test-index", "0", "--channels", "6", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out} and {tmp_path / 'maps_filters.png'}"
    with Image.open(out) as img:
        assert img.size == feature_maps_size(1, 6) == (1050, 600)
    with Image.open(tmp_path / "maps_filters.png") as img:
        assert img.size == FILTERS_SIZE == (720, 720)

    boots = tmp_path / "boots.png"
    assert main([*args, "--class-id", "9", "--channel", "3", "--out", str(boots)]) == 0
    with Image.open(boots) as img:
        assert img.size == feature_maps_size(3, 8) == (750, 450)


@pytest.mark.slow
def test_visualize_an_image_file(exported_model: Path, dataset, tmp_path: Path) -> None:
    from PIL import Image

    from training.visualize import feature_maps_size

    src = tmp_path / "boot.png"
    Image.fromarray(dataset.x_test[0]).resize((112, 112)).save(src)
    out = tmp_path / "file_maps.png"
    assert (
        main(["visualize", "--model", str(exported_model), "--image", str(src), "--out", str(out)])
        == 0
    )
    with Image.open(out) as img:
        assert img.size == feature_maps_size(1, 8)


def test_filter_on_a_file_and_a_test_image(fashion_mnist_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    from training.visualize import FILTER_DEMO_SIZE

    src = tmp_path / "stripes.png"
    Image.fromarray(np.tile(np.array([0, 255] * 50, np.uint8), (60, 1))).save(src)
    out = tmp_path / "f.png"
    assert main(["filter", str(src), "--out", str(out)]) == 0
    with Image.open(out) as img:
        assert img.size == FILTER_DEMO_SIZE == (1200, 440)
    out2 = tmp_path / "f2.png"
    assert (
        main(
            [
                "filter",
                "--test-index",
                "3",
                "--data-dir",
                str(fashion_mnist_dir),
                "--filter",
                "horizontal",
                "--out",
                str(out2),
            ]
        )
        == 0
    )
    assert out2.is_file()


def test_train_too_few_samples_for_a_validation_split(
    fashion_mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--data-dir", str(fashion_mnist_dir), "--export-dir", str(tmp_path / "m"),
            "--max-train-samples", "3", "--no-progress"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert (
        "error: 3 training images leave none to train on after the validation split (fraction "
        "0.1); use more samples or --validation-fraction 0\n"
    ) in err
    assert not (tmp_path / "m").exists()
