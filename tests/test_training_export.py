"""The exported SavedModel: contract names, versions, atomic writes, warmup records, metrics."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from serving.contract import CLASS_NAMES, MODEL_NAME, list_versions

pytestmark = pytest.mark.slow  # needs the session's trained model (about 15 s, once)


@pytest.fixture(scope="module")
def signature(exported_model: Path):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(exported_model / "1"))
    return loaded, loaded.signatures["serving_default"]


def test_base_dir_holds_only_version_1(exported_model: Path) -> None:
    assert sorted(p.name for p in exported_model.iterdir()) == ["1"]


def test_signature_contract(signature) -> None:
    import tensorflow as tf

    _, fn = signature
    _, kwargs = fn.structured_input_signature
    assert list(kwargs) == ["images"]
    assert kwargs["images"].dtype == tf.float32
    assert kwargs["images"].shape.as_list() == [None, 28, 28, 1]
    outs = fn.structured_outputs
    assert sorted(outs) == ["class_ids", "class_names", "probabilities"]
    assert (outs["probabilities"].dtype, outs["probabilities"].shape.as_list()) == (
        tf.float32,
        [None, 10],
    )
    assert (outs["class_ids"].dtype, outs["class_ids"].shape.as_list()) == (tf.int64, [None])
    assert (outs["class_names"].dtype, outs["class_names"].shape.as_list()) == (tf.string, [None])


def test_predictions_are_consistent_and_useful(signature, dataset) -> None:
    import tensorflow as tf

    _, fn = signature
    images = dataset.x_test[:500].astype(np.float32)[..., None] / 255.0
    out = fn(images=tf.constant(images))
    probs = out["probabilities"].numpy()
    ids = out["class_ids"].numpy()
    names = [n.decode() for n in out["class_names"].numpy()]
    assert probs.shape == (500, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(ids, probs.argmax(axis=1))
    assert names == [CLASS_NAMES[i] for i in ids]
    assert len(set(ids.tolist())) >= 5, "the fixture model predicts (almost) one class only"
    assert (ids == dataset.y_test[:500]).mean() > 0.6


def test_warmup_records_parse_as_prediction_logs(exported_model: Path) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = exported_model / "1" / "assets.extra" / "tf_serving_warmup_requests"
    records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    assert len(records) == 4
    sizes = []
    for raw in records:
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        assert log.WhichOneof("log_type") == "predict_log"
        req = log.predict_log.request
        assert req.model_spec.name == MODEL_NAME
        assert req.model_spec.signature_name == "serving_default"
        assert list(req.inputs) == ["images"]
        arr = tf.make_ndarray(req.inputs["images"])
        assert arr.dtype == np.float32 and arr.shape[1:] == (28, 28, 1)
        assert arr.min() >= 0.0 and arr.max() <= 1.0
        sizes.append(arr.shape[0])
    assert sizes == [1, 8, 32, 64]


def test_exported_model_has_exactly_the_lessons_parameters(signature) -> None:
    loaded, _ = signature
    shapes = sorted(tuple(v.shape) for v in loaded.variables)
    assert shapes == sorted(
        [(3, 3, 1, 64), (64,), (3, 3, 64, 64), (64,), (1600, 128), (128,), (128, 10), (10,)]
    )
    assert sum(int(np.prod(s)) for s in shapes) == 243_786


def test_metrics_json_beside_the_export(exported_model: Path, dataset) -> None:
    from training.evaluate import evaluate_export

    version_dir = exported_model / "1"
    metrics = json.loads((version_dir / "metrics.json").read_text())
    assert metrics["model_name"] == MODEL_NAME and metrics["version"] == 1
    assert metrics["num_test_images"] == 10000
    assert metrics["labels"] == list(CLASS_NAMES)
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 10000
    assert cm.sum(axis=1).tolist() == [1000] * 10
    assert metrics["test_accuracy"] == pytest.approx(np.trace(cm) / 10000)
    for c, row in enumerate(metrics["per_class"]):
        assert (row["class_id"], row["label"], row["support"]) == (c, CLASS_NAMES[c], 1000)
        assert row["accuracy"] == pytest.approx(cm[c, c] / 1000)
        assert row["recall"] == row["accuracy"]
        assert row["precision"] == pytest.approx(
            cm[c, c] / cm[:, c].sum() if cm[:, c].sum() else 0.0
        )
    assert metrics["recipe"]["max_train_samples"] == 3000
    assert metrics["training"]["epochs_run"] == 1
    assert metrics["training"]["seconds"] > 0 and metrics["training"]["cpu_seconds"] > 0
    assert len(metrics["training"]["load_average"]) == 2
    # The report describes the exported artefact: re-evaluating it gives the same numbers.
    again = evaluate_export(exported_model, dataset)
    assert again["confusion_matrix"] == metrics["confusion_matrix"]
    assert again["model_path"] == str(version_dir)


def test_report_plots_beside_the_export(exported_model: Path) -> None:
    from PIL import Image

    with Image.open(exported_model / "1" / "confusion_matrix.png") as img:
        assert (img.format, img.size) == ("PNG", (800, 700))
    with Image.open(exported_model / "1" / "training_curves.png") as img:
        assert (img.format, img.size) == ("PNG", (1000, 400))


@pytest.fixture
def base_copy(exported_model: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "fashion_mnist"
    shutil.copytree(exported_model, dest)
    return dest


@pytest.fixture(scope="module")
def small_model():
    from training.model import build_model

    return build_model(seed=3)


def _entries(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir())


def test_second_export_becomes_version_2(base_copy: Path, small_model) -> None:
    from training.export import export_model

    path = export_model(small_model, base_copy)
    assert path == base_copy / "2"
    assert (path / "saved_model.pb").is_file()
    assert (path / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert list_versions(base_copy) == [1, 2]
    assert _entries(base_copy) == ["1", "2"]  # no temporary folder left behind


def test_export_is_staged_under_a_non_integer_name(tmp_path: Path, small_model) -> None:
    from training.export import export_model

    base = tmp_path / "m"
    seen: dict[str, object] = {}

    def probe(tmp: Path, version: int) -> None:
        seen["tmp_name"] = tmp.name
        seen["final_exists_while_writing"] = (base / str(version)).exists()
        seen["entries_while_writing"] = _entries(base)
        seen["complete"] = (tmp / "saved_model.pb").is_file() and (tmp / "variables").is_dir()

    export_model(small_model, base, 7, extras=probe)
    assert seen["tmp_name"] == f".tmp-7-{os.getpid()}"
    assert seen["final_exists_while_writing"] is False
    assert seen["entries_while_writing"] == [f".tmp-7-{os.getpid()}"]
    assert seen["complete"] is True
    assert _entries(base) == ["7"]


def test_failed_export_leaves_nothing(tmp_path: Path, small_model) -> None:
    from training.export import export_model

    def boom(tmp: Path, version: int) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        export_model(small_model, tmp_path, 1, extras=boom)
    assert _entries(tmp_path) == []


def test_existing_version_is_an_error_unless_overwrite(base_copy: Path, small_model) -> None:
    from training.export import ExportError, export_model

    before = (base_copy / "1" / "saved_model.pb").read_bytes()
    with pytest.raises(ExportError) as err:
        export_model(small_model, base_copy, 1)
    assert str(err.value) == (
        f"version 1 already exists in {base_copy}; pass --overwrite to replace it "
        "or omit --version to export as version 2"
    )
    assert (base_copy / "1" / "saved_model.pb").read_bytes() == before
    assert (base_copy / "1" / "metrics.json").is_file()

    export_model(small_model, base_copy, 1, overwrite=True)
    assert _entries(base_copy) == ["1"]
    assert not (base_copy / "1" / "metrics.json").exists()  # a fresh version, nothing stale


@pytest.mark.parametrize("bad", [0, -1, True, "2"])
def test_invalid_version(tmp_path: Path, small_model, bad) -> None:
    from training.export import ExportError, export_model

    with pytest.raises(ExportError, match="version must be a positive integer"):
        export_model(small_model, tmp_path, bad)
    assert _entries(tmp_path) == []


def test_next_version_follows_list_versions_and_skips_taken_names(tmp_path: Path) -> None:
    from training.export import next_version

    assert next_version(tmp_path / "missing") == 1
    for name in ("3", "10", ".tmp-11-123", "abc", "2.5", "40"):
        (tmp_path / name).mkdir()
    for name in ("3", "10", ".tmp-11-123"):
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    assert next_version(tmp_path) == 11  # 40 holds no SavedModel: not a version
    (tmp_path / "11").mkdir()  # an empty integer folder left by hand is not overwritten
    (tmp_path / "12").write_text("a file, not a version")
    assert next_version(tmp_path) == 13


def test_test_time_flip_exports_the_mean_of_each_image_and_its_mirror(
    tmp_path: Path, small_model
) -> None:
    import tensorflow as tf

    from serving.savedmodel import LoadedModel
    from training.evaluate import load_serving_fn
    from training.export import export_model

    rng = np.random.default_rng(0)
    images = rng.random((5, 28, 28, 1), dtype=np.float32)
    images[:, :, :14] = 0.0  # left half dark: an image and its mirror are told apart
    plain = small_model.predict(images, verbose=0)
    mirrored = small_model.predict(images[:, :, ::-1], verbose=0)
    assert np.abs(plain - mirrored).max() > 1e-3  # the untrained model is not symmetric

    path = export_model(small_model, tmp_path, 1, test_time_flip=True)
    _, fn = load_serving_fn(path)
    out = fn(images=tf.constant(images))
    np.testing.assert_allclose(out["probabilities"].numpy(), (plain + mirrored) / 2, atol=1e-6)
    np.testing.assert_array_equal(out["class_ids"].numpy(), ((plain + mirrored) / 2).argmax(axis=1))
    # An empty batch through the servers' loader (the raw function fails on one wherever
    # TensorFlow runs oneDNN's convolutions, its default on CPUs with AVX-512 VNNI or AMX).
    empty = LoadedModel.load(path).predict({"images": np.zeros((0, 28, 28, 1), np.float32)})
    assert empty["probabilities"].shape == (0, 10) and empty["class_ids"].shape == (0,)
    # without the option: the model's own probabilities
    _, fn = load_serving_fn(export_model(small_model, tmp_path, 2))
    np.testing.assert_allclose(fn(images=tf.constant(images))["probabilities"], plain, atol=1e-6)


def test_the_tflite_copy_of_a_flip_export_gives_the_flip_mean(tmp_path: Path, small_model) -> None:
    from serving.savedmodel import LoadedModel
    from training.export import export_model

    images = np.random.default_rng(3).random((4, 28, 28, 1), dtype=np.float32)
    plain = small_model.predict(images, verbose=0)
    mirrored = small_model.predict(images[:, :, ::-1], verbose=0)
    model = LoadedModel.load(
        export_model(small_model, tmp_path, 1, test_time_flip=True), prefer_tflite=True
    )
    assert model.runtime == "tflite"
    got = model.predict({"images": images})["probabilities"]
    np.testing.assert_allclose(got, (plain + mirrored) / 2, atol=1e-5)


def test_a_failed_tflite_conversion_fails_the_export(tmp_path: Path, small_model, monkeypatch):
    import training.export
    from training.errors import ExportError

    def refuse(path: Path) -> Path:
        raise RuntimeError("op not supported")

    monkeypatch.setattr(training.export, "write_tflite", refuse)
    with pytest.raises(
        ExportError, match=r"^cannot convert the SavedModel to TensorFlow Lite: op not supported$"
    ):
        training.export.export_model(small_model, tmp_path, 1)
    assert _entries(tmp_path) == []
