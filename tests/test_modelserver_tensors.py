"""serving.modelserver.tensors: TensorProto and JSON conversions (no server)."""

from __future__ import annotations

import json

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


def general(body: bytes, monkeypatch: pytest.MonkeyPatch):
    with monkeypatch.context() as m:
        m.setattr(T, "_parse_numeric_body", lambda body, fn: None)
        return T.parse_predict_json(body, signature_for)


X = np.arange(12, dtype=np.float32).reshape(2, 2, 3, 1) / 7 - 0.5


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"instances": X.tolist()}).encode(),
        json.dumps({"inputs": X.tolist()}).encode(),
        json.dumps({"signature_name": "serving_default", "instances": X[:1].tolist()}).encode(),
        b'{"instances": [[[[1e-3],[2E+2],[-0]],[[0.5],[-1.25e-5],[3]]]]}',
        b' \n{ "instances" :[[[[1], [2], [3]], [[4], [5], [6]]]] } \n',
        json.dumps({"instances": X.tolist()}, separators=(",", ":")).encode(),
    ],
)
def test_fast_path_equals_general_path(body, monkeypatch):
    fast = T._parse_numeric_body(body, signature_for)
    assert fast is not None, "the fast path should take this body"
    name, inputs, fmt = general(body, monkeypatch)
    assert fast[0] == name and fast[2] == fmt
    assert fast[1]["images"].dtype == np.float32
    np.testing.assert_array_equal(fast[1]["images"], inputs["images"])


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[[[1 2],[2],[3]],[[4],[5],[6]]]]}',  # "1 2" is not 12
        b'{"instances": [[[[+1],[2],[3]],[[4],[5],[6]]]]}',
        b'{"instances": [[[[.5],[2],[3]],[[4],[5],[6]]]]}',
        b'{"instances": [[[[1.],[2],[3]],[[4],[5],[6]]]]}',
        b'{"instances": [[[[01],[2],[3]],[[4],[5],[6]]]]}',
        b'{"instances": [[[[e5],[2],[3]],[[4],[5],[6]]]]}',
        b'{"instances": [[[[1e],[2],[3]],[[4],[5],[6]]]]}',
        b'{"instances": [[[[--1],[2],[3]],[[4],[5],[6]]]]}',
        b'{"instances": [[[[],[2],[3]],[[4],[5],[6]]]]}',
        b'{"instances": [[[[1,],[2],[3]],[[4],[5],[6]]]]}',
        b'{"instances": [[[[1],[2],[3]],[[4],[5]]]]}',  # ragged
        b'{"instances": [[[[1e39],[2],[3]],[[4],[5],[6]]]]}',  # too large for float32
        b'{"instances": [[[[1],[2],[3]],[[4],[5],[6]]]], "instances": []}',
        b'{"instances": [], "x": [1]}',
        b'{"instances": []}',
        b'{"instances": [[[[1.5.5],[2],[3]],[[4],[5],[6]]]]}',
        b'{"instances": [[[[-],[2],[3]],[[4],[5],[6]]]]}',
        b'{"instances": [[[[1e5e5],[2],[3]],[[4],[5],[6]]]]}',
        b'{"instances": [[[[1-2],[2],[3]],[[4],[5],[6]]]]}',
    ],
)
def test_fast_path_declines_what_json_or_the_shape_rejects(body, monkeypatch):
    assert T._parse_numeric_body(body, signature_for) is None
    with pytest.raises(InvalidInput):
        general(body, monkeypatch)


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"instances": X.tolist()}, indent=2).encode(),
        b'{"instances": [ [ [ [0.5] , [1] , [2] ] , [ [3] , [4] , [5] ] ] ]}',
    ],
)
def test_other_whitespace_takes_the_general_path(body, monkeypatch):
    assert T._parse_numeric_body(body, signature_for) is None
    assert general(body, monkeypatch)[1]["images"].shape in ((2, 2, 3, 1), (1, 2, 3, 1))


def test_fast_path_declines_other_shapes(monkeypatch):
    body = b'{"instances": [[[1],[2],[3]],[[4],[5],[6]]]}'  # rank 3: check_inputs rejects it
    assert T._parse_numeric_body(body, signature_for) is None
    assert general(body, monkeypatch)[1]["images"].shape == (2, 3, 1)


def test_fast_path_unknown_signature_is_the_same_error():
    body = b'{"signature_name": "nope", "instances": [[[[1],[2],[3]],[[4],[5],[6]]]]}'
    with pytest.raises(InvalidInput, match='"nope" not found'):
        T.parse_predict_json(body, signature_for)


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
