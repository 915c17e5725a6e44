"""Tests for serving.savedmodel: version listing, LoadedModel, ModelManager swaps and policies."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from serving.backends import VersionStatus
from serving.contract import CLASS_NAMES, list_versions
from serving.savedmodel import (
    InvalidInput,
    LoadedModel,
    LoadError,
    ModelManager,
    ServableNotFound,
    UnknownLabel,
    VersionPolicy,
)
from tests.support.modelserver import model_base_for_tests

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_base(request) -> Path:
    return model_base_for_tests(request)


@pytest.fixture(scope="module")
def loaded(model_base: Path) -> LoadedModel:
    return LoadedModel.load(model_base / "1")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).random((5, 28, 28, 1), dtype=np.float32)


def make_versions(tmp_path: Path, model_base: Path, versions: list[int]) -> Path:
    base = tmp_path / "fashion_mnist"
    base.mkdir()
    for v in versions:
        shutil.copytree(model_base / "1", base / str(v))
    return base


def test_list_versions_ignores_everything_but_integer_savedmodel_folders(tmp_path: Path):
    for name in ("1", "2", "10", ".tmp-11-123", "abc", "3"):
        (tmp_path / name).mkdir()
    for name in ("1", "2", "10", ".tmp-11-123", "abc"):
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    (tmp_path / "7").write_text("a file, not a folder")
    assert list_versions(tmp_path) == [1, 2, 10]  # 3 has no saved_model.pb
    assert list_versions(tmp_path / "missing") == []


def test_signatures_follow_the_export_contract(loaded: LoadedModel):
    sig = loaded.signature("serving_default")
    assert sig.method_name == "tensorflow/serving/predict"
    assert list(sig.inputs) == ["images"]
    assert sig.inputs["images"].dtype == np.float32
    assert sig.inputs["images"].shape == (None, 28, 28, 1)
    assert sorted(sig.outputs) == ["class_ids", "class_names", "probabilities"]
    assert sig.outputs["probabilities"].shape == (None, 10)
    assert sig.outputs["class_ids"].dtype == np.int64
    assert "serving_default" in loaded.signature_defs


def test_predict_matches_tf_saved_model_load(model_base: Path, loaded: LoadedModel, images):
    import tensorflow as tf

    reference = tf.saved_model.load(str(model_base / "1")).signatures["serving_default"]
    want = {k: v.numpy() for k, v in reference(images=tf.constant(images)).items()}
    got = loaded.predict({"images": images})
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got["class_ids"], want["class_ids"])
    assert [CLASS_NAMES.index(n.decode()) for n in got["class_names"]] == list(got["class_ids"])


def test_predict_converts_float64_input(loaded: LoadedModel, images):
    got = loaded.predict({"images": images.astype(np.float64)})
    np.testing.assert_allclose(
        got["probabilities"], loaded.predict({"images": images})["probabilities"], rtol=1e-6
    )


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "missing inputs: images"),
        (
            {"images": np.zeros((1, 28, 28, 1), np.float32), "x": np.zeros(1)},
            "unexpected inputs: x",
        ),
        ({"images": np.zeros((1, 28, 28), np.float32)}, r"expects shape float32\[\?,28,28,1\]"),
        ({"images": np.zeros((1, 27, 28, 1), np.float32)}, r"got \[1,27,28,1\]"),
        ({"images": np.array([["a"]])}, "expects float32, got str"),
    ],
)
def test_predict_rejects_bad_inputs(loaded: LoadedModel, inputs, message):
    with pytest.raises(InvalidInput, match=message):
        loaded.predict(inputs)


def test_unknown_signature_is_invalid_argument(loaded: LoadedModel, images):
    with pytest.raises(InvalidInput) as err:
        loaded.predict({"images": images}, "nope")
    assert str(err.value) == 'Serving signature name: "nope" not found in signature def'


def test_run_warmup_replays_the_export_records(loaded: LoadedModel):
    assert loaded.run_warmup() == 4  # training.export writes batch sizes 1, 8, 32, 64


def test_manager_serves_latest_and_swaps_versions(tmp_path: Path, model_base: Path, images):
    base = make_versions(tmp_path, model_base, [1])
    manager = ModelManager("fashion_mnist", base, poll_interval_s=0.1)
    manager.start()
    try:
        assert manager.wait_until_available(30)
        assert manager.predict({"images": images})[0] == 1
        shutil.copytree(base / "1", base / "2")
        assert manager.wait_until_available(30, version=2)
        deadline = time.monotonic() + 10
        while manager.status()[-1].state != "END" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert manager.status() == [VersionStatus(2, "AVAILABLE"), VersionStatus(1, "END")]
        assert manager.predict({"images": images})[0] == 2
        with pytest.raises(ServableNotFound, match=r"Specific\(fashion_mnist, 1\)"):
            manager.predict({"images": images}, version=1)
    finally:
        manager.close()
    assert manager.status() == [VersionStatus(2, "END"), VersionStatus(1, "END")]


def test_unload_waits_for_requests_in_flight(tmp_path: Path, model_base: Path, images):
    base = make_versions(tmp_path, model_base, [1])
    manager = ModelManager("fashion_mnist", base, poll_interval_s=3600, settle_s=0)
    manager.poll()
    held = threading.Event()
    release = threading.Event()
    results = []

    def slow_request() -> None:
        with manager.acquire() as model:
            held.set()
            release.wait(10)
            results.append(model.predict({"images": images})["class_ids"])

    t = threading.Thread(target=slow_request)
    t.start()
    assert held.wait(10)
    shutil.rmtree(base / "1")
    unload = threading.Thread(target=manager.poll)
    unload.start()
    deadline = time.monotonic() + 5
    while manager.status()[0].state != "UNLOADING" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert manager.status() == [VersionStatus(1, "UNLOADING")]
    with pytest.raises(ServableNotFound, match=r"Latest\(fashion_mnist\)"):
        manager.resolve()
    release.set()
    t.join(10)
    unload.join(10)
    assert len(results) == 1 and results[0].shape == (5,)
    assert manager.status() == [VersionStatus(1, "END")]


def test_policies_and_labels(tmp_path: Path, model_base: Path):
    base = make_versions(tmp_path, model_base, [1, 2, 3])
    loads: list[int] = []

    def loader(path: Path, version: int) -> LoadedModel:
        loads.append(version)
        return LoadedModel.load(path, version)

    manager = ModelManager(
        "fashion_mnist",
        base,
        VersionPolicy.latest(2),
        labels={"stable": 2, "canary": 3},
        loader=loader,
        settle_s=0,
    )
    manager.poll()
    assert manager.available_versions() == [2, 3]
    assert manager.resolve(label="stable") == 2
    assert manager.resolve(label="canary") == 3
    with pytest.raises(UnknownLabel, match="Unrecognized servable version label: beta"):
        manager.resolve(label="beta")
    manager.update(policy=VersionPolicy.specific([1]))
    manager.poll()
    assert manager.available_versions() == [1]
    manager.update(policy=VersionPolicy.all())
    manager.poll()
    assert manager.available_versions() == [1, 2, 3]
    assert loads == [2, 3, 1, 2, 3]
    manager.close()


def test_failed_load_is_reported_and_not_served(tmp_path: Path, model_base: Path):
    base = make_versions(tmp_path, model_base, [1])
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_bytes(b"not a protobuf")
    manager = ModelManager("fashion_mnist", base, VersionPolicy.all(), settle_s=0)
    manager.poll()
    status = {s.version: s for s in manager.status()}
    assert status[1] == VersionStatus(1, "AVAILABLE")
    assert status[2].state == "END" and "is not a SavedModel" in status[2].error
    assert manager.resolve() == 1
    assert manager.poll() is False  # a broken version is not retried on every poll
    manager.close()


def test_version_policy_validation():
    assert VersionPolicy.latest(2).select([1, 5, 3]) == [3, 5]
    assert VersionPolicy.specific([3, 9]).select([1, 3, 5]) == [3]
    with pytest.raises(ValueError, match="num_versions"):
        VersionPolicy.latest(0)
    with pytest.raises(ValueError, match="at least one"):
        VersionPolicy.specific([])


def test_unexpected_loader_error_is_reported_and_polling_goes_on(tmp_path: Path, model_base: Path):
    base = make_versions(tmp_path, model_base, [1])
    calls: list[int] = []

    def flaky_loader(path: Path, version: int) -> LoadedModel:
        calls.append(version)
        if version == 1:
            raise KeyError("broken graph")
        return LoadedModel.load(path, version)

    manager = ModelManager("fashion_mnist", base, loader=flaky_loader, poll_interval_s=0.05)
    manager.start()
    try:
        deadline = time.monotonic() + 10
        while [s.state for s in manager.status()] != ["END"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert manager.status() == [VersionStatus(1, "END", "KeyError: 'broken graph'")]
        shutil.copytree(base / "1", base / "2")
        assert manager.wait_until_available(30, version=2)  # the poller survived
    finally:
        manager.close()
    assert calls == [1, 2]


def test_failed_new_version_does_not_take_the_model_offline(tmp_path: Path, model_base: Path):
    # TF Serving's AvailabilityPreservingPolicy: v3 is unloaded only once a wanted version is up
    base = make_versions(tmp_path, model_base, [3])
    manager = ModelManager("fashion_mnist", base, VersionPolicy.latest(1), settle_s=0)
    manager.poll()
    assert manager.available_versions() == [3]
    (base / "4").mkdir()
    (base / "4" / "saved_model.pb").write_bytes(b"corrupt")
    manager.poll()
    status = {s.version: s for s in manager.status()}
    assert status[3] == VersionStatus(3, "AVAILABLE")
    assert status[4].state == "END" and "is not a SavedModel" in status[4].error
    assert manager.resolve() == 3
    shutil.rmtree(base / "4")
    shutil.copytree(base / "3", base / "5")
    manager.poll()  # a good newer version replaces v3
    assert manager.available_versions() == [5]
    assert {s.version: s.state for s in manager.status()}[3] == "END"
    manager.close()


def _clock(monkeypatch) -> list[float]:
    """Drive ``time.monotonic`` in serving.savedmodel by hand: ``now[0]`` is the time."""
    import serving.savedmodel as savedmodel

    now = [1000.0]
    monkeypatch.setattr(savedmodel.time, "monotonic", lambda: now[0])
    return now


def test_a_folder_is_loaded_only_once_it_stopped_changing(tmp_path, model_base, monkeypatch):
    base = make_versions(tmp_path, model_base, [1])
    now = _clock(monkeypatch)
    manager = ModelManager("fashion_mnist", base, VersionPolicy.latest(1), settle_s=1.0)
    assert manager.poll() is False and manager.settling_versions() == [1]  # first sight
    now[0] += 0.5
    assert manager.poll() is False  # unchanged, but not for settle_s yet
    now[0] += 0.6
    assert manager.poll() is True and manager.available_versions() == [1]
    # Version 2 is copied in file by file: every poll sees it grow, so it is never loaded.
    (base / "2").mkdir()
    src = base / "1"
    files = sorted(p for p in src.rglob("*") if p.is_file())
    for f in files:
        (base / "2" / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, base / "2" / f.relative_to(src))
        now[0] += 5.0  # however long the writer pauses between polls
        manager.poll()
        if f != files[-1]:
            assert manager.status() == [VersionStatus(1, "AVAILABLE")]
    assert manager.settling_versions() == [2] and manager.available_versions() == [1]
    now[0] += 1.0
    assert manager.poll() is True
    assert manager.status() == [VersionStatus(2, "AVAILABLE"), VersionStatus(1, "END")]
    assert manager.settling_versions() == []
    manager.close()


def test_a_failed_version_is_retried_once_its_folder_changes(tmp_path, model_base, monkeypatch):
    base = make_versions(tmp_path, model_base, [1])
    shutil.copytree(model_base / "1", base / "2")
    shutil.rmtree(base / "2" / "variables")  # a version folder with its variables missing
    now = _clock(monkeypatch)
    loads: list[int] = []

    def loader(path: Path, version: int) -> LoadedModel:
        loads.append(version)
        return LoadedModel.load(path, version)

    manager = ModelManager("fashion_mnist", base, VersionPolicy.all(), loader=loader, settle_s=1.0)
    for _ in range(3):
        manager.poll()
        now[0] += 1.0
    status = {s.version: s for s in manager.status()}
    assert status[1] == VersionStatus(1, "AVAILABLE")
    assert status[2].state == "END" and "variables" in status[2].error
    assert loads == [1, 2] and manager.resolve() == 1
    for _ in range(3):
        now[0] += 5.0
        assert manager.poll() is False  # unchanged: not retried, still reported
    shutil.copytree(model_base / "1" / "variables", base / "2" / "variables")
    manager.poll()  # changed: settles again (the failure stays reported meanwhile)
    assert {s.version: s.state for s in manager.status()} == {1: "AVAILABLE", 2: "END"}
    now[0] += 1.0
    assert manager.poll() is True
    assert manager.status() == [VersionStatus(2, "AVAILABLE"), VersionStatus(1, "AVAILABLE")]
    assert loads == [1, 2, 2]
    manager.close()


def test_truncated_variables_are_a_load_error(tmp_path, model_base):
    base = make_versions(tmp_path, model_base, [1])
    shard = base / "1" / "variables" / "variables.data-00000-of-00001"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(LoadError, match="Read less bytes than requested"):
        LoadedModel.load(base / "1")
