"""Tests for serving.litemodel and LoadedModel's TFLite path: the same answers as the SavedModel,
safe across threads, and a stale or broken model.tflite refused at load."""

from __future__ import annotations

import logging
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from serving.contract import INPUT_KEY, OUTPUT_PROBABILITIES, SIGNATURE_NAME
from serving.litemodel import TFLITE_FILE, LiteSignature
from serving.savedmodel import (
    InvalidInput,
    LoadedModel,
    LoadError,
    ModelManager,
    VersionPolicy,
    make_loader,
)
from tests.support.modelserver import model_base_for_tests, writable_copy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_base(request) -> Path:
    return model_base_for_tests(request)


@pytest.fixture(scope="module")
def on_tensorflow(model_base: Path) -> LoadedModel:
    return LoadedModel.load(model_base / "1")


@pytest.fixture(scope="module")
def on_tflite(model_base: Path) -> LoadedModel:
    return LoadedModel.load(model_base / "1", prefer_tflite=True)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(7).random((9, 28, 28, 1), dtype=np.float32)


def test_the_export_holds_a_tflite_copy_that_loadedmodel_runs(
    model_base: Path, on_tensorflow: LoadedModel, on_tflite: LoadedModel
):
    assert (model_base / "1" / TFLITE_FILE).stat().st_size > 100_000
    assert on_tensorflow.runtime == "tensorflow"
    assert on_tflite.runtime == "tflite"
    # Metadata and validation stay the SavedModel's.
    assert on_tflite.signatures == on_tensorflow.signatures
    assert on_tflite.run_warmup() == on_tensorflow.run_warmup() > 0


@pytest.mark.parametrize("rows", [0, 1, 2, 9])
def test_tflite_gives_the_sessions_outputs(
    on_tensorflow: LoadedModel, on_tflite: LoadedModel, images: np.ndarray, rows: int
):
    want = on_tensorflow.predict({INPUT_KEY: images[:rows]})
    got = on_tflite.predict({INPUT_KEY: images[:rows]})
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert got[key].shape == want[key].shape, key
    np.testing.assert_allclose(got[OUTPUT_PROBABILITIES], want[OUTPUT_PROBABILITIES], atol=1e-5)
    np.testing.assert_array_equal(got["class_ids"], want["class_ids"])
    np.testing.assert_array_equal(got["class_names"], want["class_names"])


def test_tflite_rejects_what_the_session_rejects(
    on_tensorflow: LoadedModel, on_tflite: LoadedModel
):
    bad = {INPUT_KEY: np.zeros((2, 27, 28, 1), np.float32)}
    with pytest.raises(InvalidInput) as want:
        on_tensorflow.predict(bad)
    with pytest.raises(InvalidInput) as got:
        on_tflite.predict(bad)
    assert str(got.value) == str(want.value)
    assert "images" in str(got.value)


def test_concurrent_calls_each_get_their_own_answer(on_tflite: LoadedModel, images: np.ndarray):
    # Each thread sends one image (its own batch size too), many times; interpreters are not
    # thread-safe, so a shared one would mix inputs or sizes between threads.
    expected = [on_tflite.predict({INPUT_KEY: images[: i + 1]}) for i in range(8)]
    wrong: list[int] = []
    start = threading.Barrier(8)

    def work(i: int) -> None:
        start.wait()
        for _ in range(40):
            got = on_tflite.predict({INPUT_KEY: images[: i + 1]})[OUTPUT_PROBABILITIES]
            if not np.array_equal(got, expected[i][OUTPUT_PROBABILITIES]):
                wrong.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_lite_signature_needs_the_savedmodels_inputs_and_outputs(model_base: Path):
    blob = (model_base / "1" / TFLITE_FILE).read_bytes()
    with pytest.raises(
        ValueError, match=r"outputs \['class_ids', 'class_names', 'probabilities'\]"
    ):
        LiteSignature(blob, SIGNATURE_NAME, [INPUT_KEY], [OUTPUT_PROBABILITIES])
    with pytest.raises(ValueError, match="no signature 'other'"):
        LiteSignature(blob, "other", [INPUT_KEY], [OUTPUT_PROBABILITIES])


def test_without_the_file_the_savedmodel_serves(tmp_path: Path, model_base: Path, caplog):
    base = writable_copy(model_base, tmp_path)
    (base / "1" / TFLITE_FILE).unlink()
    with caplog.at_level(logging.INFO, logger="serving.savedmodel"):
        model = LoadedModel.load(base / "1", prefer_tflite=True)
    assert model.runtime == "tensorflow"
    assert f"version 1: no {TFLITE_FILE} in {base / '1'}; serving the SavedModel" in caplog.text


def test_a_stale_tflite_file_is_refused(tmp_path: Path, model_base: Path):
    # The file of another model (same signature, other weights): the probe batch tells.
    from training.export import export_model
    from training.model import build_model

    other = export_model(build_model(seed=1), tmp_path / "other", version=1)
    base = writable_copy(model_base, tmp_path)
    shutil.copy(other / TFLITE_FILE, base / "1" / TFLITE_FILE)
    message = (
        re.escape(f"{TFLITE_FILE} of {base / '1'} does not match its SavedModel: output ")
        + "'(class_ids|class_names|probabilities)'"
        + re.escape(" of 'serving_default' differs on a probe batch (a stale file?)")
    )
    with pytest.raises(LoadError, match=f"^{message}$"):
        LoadedModel.load(base / "1", prefer_tflite=True)
    assert LoadedModel.load(base / "1").runtime == "tensorflow"  # the SavedModel still loads


def test_a_broken_tflite_file_fails_the_version_not_the_server(tmp_path: Path, model_base: Path):
    base = writable_copy(model_base, tmp_path)
    (base / "1" / TFLITE_FILE).write_bytes(b"not a flatbuffer")
    manager = ModelManager(
        "fashion_mnist",
        base,
        VersionPolicy.latest(1),
        settle_s=0,
        loader=make_loader(prefer_tflite=True),
    )
    manager.poll()
    [status] = manager.status()
    assert status.state == "END"
    assert status.error.startswith(f"{TFLITE_FILE} of {base / '1'}: ")
    manager.close()


def _runtime_of(manager: ModelManager) -> str:
    with manager.acquire() as model:
        return model.runtime


@pytest.mark.parametrize("prefer, runtime", [(True, "tflite"), (False, "tensorflow")])
def test_the_embedded_backend_prefers_the_tflite_copy_unless_told_not_to(
    model_base: Path, images: np.ndarray, prefer: bool, runtime: str
):
    from serving.backends.embedded import EmbeddedBackend

    backend = EmbeddedBackend(model_base, prefer_tflite_model=prefer)
    try:
        assert backend.predict(images[:3]).probabilities.shape == (3, 10)
        assert _runtime_of(backend.manager) == runtime
    finally:
        backend.close()


@pytest.mark.parametrize(
    "flag, runtime", [([], "tensorflow"), (["--prefer_tflite_model"], "tflite")]
)
def test_the_model_server_runs_the_tflite_copy_only_with_the_flag(
    model_base: Path, flag: list[str], runtime: str
):
    from serving.modelserver.server import ModelServer, parse_args

    args = parse_args([f"--model_base_path={model_base}", "--model_name=fashion_mnist", *flag])
    core = ModelServer(args).core  # the server's core, its front ends not started
    core.start()
    try:
        assert _runtime_of(core._managers["fashion_mnist"]) == runtime
    finally:
        core.close()


def test_close_releases_the_interpreters_and_predict_fails(model_base: Path, images: np.ndarray):
    model = LoadedModel.load(model_base / "1", prefer_tflite=True)
    assert model.predict({INPUT_KEY: images[:1]})[OUTPUT_PROBABILITIES].shape == (1, 10)
    model.close()
    with pytest.raises(RuntimeError, match="TFLite signature 'serving_default' is closed"):
        model.predict({INPUT_KEY: images[:1]})


def test_a_failing_check_closes_the_session(model_base: Path, monkeypatch):
    import serving.savedmodel

    closed: list[int] = []
    real_close = LoadedModel.close

    def recording_close(self: LoadedModel) -> None:
        closed.append(self.version)
        real_close(self)

    def broken(*_args, **_kw):
        raise TypeError("unexpected")

    monkeypatch.setattr(LoadedModel, "close", recording_close)
    monkeypatch.setattr(serving.savedmodel, "LiteSignature", broken)
    with pytest.raises(TypeError, match="unexpected"):
        LoadedModel.load(model_base / "1", prefer_tflite=True)
    assert closed == [1]
