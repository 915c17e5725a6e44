"""serving.modelserver.tensors: TensorProto and JSON conversions (no server)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from serving.modelserver import tensors as T
from serving.savedmodel import InvalidInput, Signature, TensorSpec

SPEC = TensorSpec("images", "serving_default_images:0", np.dtype(np.float32), (None, 2, 3, 1))
SIG = Signature("serving_default", "tensorflow/serving/predict", {"images": SPEC}, {})


def signature_for(name: str) -> Signature:
    if name not in ("", "serving_default"):
        raise InvalidInput(f'Serving signature name: "{name}" not found in signature def')
    return SIG


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "JSON Parse error: The document is empty"),
        (b'{"instances": [[[[1],[2],[3]],[[4],[5]]]]}', "nested lists are ragged"),
        (b'{"instances": [[[["a"],[2],[3]],[[4],[5],[6]]]]}', "JSON values must all be numbers"),
        (
            b'{"instances": [[[[2],[true],[3]],[[4],[5],[6]]]]}',
            "JSON Value: true Type: True is not of expected type: float",
        ),
        (b'{"instances": [[[[1e39],[2],[3]],[[4],[5],[6]]]]}', "without loss of precision"),
        (b'{"signature_name": 1, "instances": [1]}', "'signature_name' key must be a string"),
        (b'{"signature_name": "nope", "instances": [1]}', '"nope" not found'),
        (b'{"inputs": {"other": [1]}}', "Missing named input: images in 'inputs' object."),
    ],
)
def test_bad_predict_bodies(body, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        T.parse_predict_json(body, signature_for)


def test_row_and_columnar_bodies_parse_to_the_same_array():
    X = np.arange(12, dtype=np.float32).reshape(2, 2, 3, 1) / 7 - 0.5
    for body, fmt in (
        (json.dumps({"instances": X.tolist()}), "row"),
        (json.dumps({"inputs": X.tolist()}), "columnar"),
        (
            json.dumps({"signature_name": "serving_default", "inputs": {"images": X.tolist()}}),
            "columnar",
        ),
    ):
        _, inputs, got_fmt = T.parse_predict_json(body.encode(), signature_for)
        assert got_fmt == fmt
        assert inputs["images"].dtype == np.float32
        np.testing.assert_array_equal(inputs["images"], X)


def test_tensor_proto_round_trip_and_typed_fields():
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    proto = T.ndarray_to_tensor_proto(arr)
    assert proto.tensor_content == arr.tobytes()
    np.testing.assert_array_equal(T.tensor_proto_to_ndarray(proto), arr)

    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[
            tensor_shape_pb2.TensorShapeProto.Dim(size=2),
            tensor_shape_pb2.TensorShapeProto.Dim(size=2),
        ]
    )
    typed = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_INT64, tensor_shape=shape, int64_val=[1, 2, 3, 4]
    )
    np.testing.assert_array_equal(T.tensor_proto_to_ndarray(typed), [[1, 2], [3, 4]])
    fill = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=[7])
    np.testing.assert_array_equal(T.tensor_proto_to_ndarray(fill), np.full((2, 2), 7, np.float32))
    bad = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=[1, 2, 3])
    with pytest.raises(InvalidInput, match="3 values in float_val do not fill shape"):
        T.tensor_proto_to_ndarray(bad, "images")
    short = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, tensor_shape=shape, tensor_content=b"\0" * 12
    )
    with pytest.raises(InvalidInput, match="tensor_content has 12 bytes"):
        T.tensor_proto_to_ndarray(short, "images")
    strings = T.ndarray_to_tensor_proto(np.array([b"a", b"bc"], dtype=object))
    assert list(T.tensor_proto_to_ndarray(strings)) == [b"a", b"bc"]


def test_predict_response_shapes_follow_tf_serving():
    outputs = {
        "probabilities": np.array([[0.1, 0.9]], np.float32),
        "class_names": np.array([b"Bag"], dtype=object),
    }
    assert T.predict_response_json(outputs, "row") == {
        "predictions": [{"class_names": "Bag", "probabilities": [0.1, 0.9]}]
    }
    assert T.predict_response_json(outputs, "columnar") == {
        "outputs": {"class_names": ["Bag"], "probabilities": [[0.1, 0.9]]}
    }
    single = {"y": np.array([1.5, 2.0], np.float32)}
    assert T.predict_response_json(single, "row") == {"predictions": [1.5, 2.0]}
    assert T.dumps({"v": T._jsonable("p", np.array([0.1], np.float32))}) == b'{"v":[0.1]}'


@pytest.mark.parametrize(
    ("dims", "message"),
    [
        ([3000000, 28, 28, 1], "would take 9408000000 bytes, more than the limit of 67108864"),
        ([2**40, 2**40], "more than the limit"),
        ([0, 2**62, 2**62], "invalid shape"),
    ],
)
def test_one_value_fill_is_capped_before_allocating(dims, message):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]
    )
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=[0.5])
    if message == "invalid shape":
        proto.ClearField("float_val")
    with pytest.raises(InvalidInput, match=re.escape(message)):
        T.tensor_proto_to_ndarray(proto, "images")
