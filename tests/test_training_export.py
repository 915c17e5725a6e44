"""The exported SavedModel: contract names, versions, atomic writes, warmup records, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.labels import CLASS_NAMES, MODEL_NAME

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
