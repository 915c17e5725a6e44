"""serving.modelserver run as a real process: gRPC and REST against tf.saved_model.load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from loadtest.servers import start_modelserver
from serving.labels import CLASS_NAMES, MODEL_NAME
from tests.support.modelserver import model_base_for_tests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MONITORING = "--monitoring_config_file=serving/config/monitoring.config"


@pytest.fixture(scope="module")
def model_base(request, tmp_path_factory) -> Path:
    src = model_base_for_tests(request)
    dst = tmp_path_factory.mktemp("ms") / MODEL_NAME
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(7).random((4, 28, 28, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def reference(model_base: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    import tensorflow as tf

    fn = tf.saved_model.load(str(model_base / "1")).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(images=tf.constant(images)).items()}


@pytest.fixture(scope="module")
def server(model_base: Path):
    with start_modelserver(model_base, MONITORING) as handle:
        yield handle


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.target) as ch:
        yield ch


def grpc_request(images: np.ndarray, **spec):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = spec.pop("name", MODEL_NAME)
    request.model_spec.signature_name = "serving_default"
    if "version" in spec:
        request.model_spec.version.value = spec.pop("version")
    if "label" in spec:
        request.model_spec.version_label = spec.pop("label")
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    return request


def grpc_predict(channel, images: np.ndarray, **spec):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return stub.Predict(grpc_request(images, **spec), timeout=30)


# --- REST ----------------------------------------------------------------------------------


def test_rest_status_body_is_tf_servings(server):
    r = requests.get(f"{server.url}/v1/models/{MODEL_NAME}", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    r = requests.get(f"{server.url}/v1/models/{MODEL_NAME}/versions/1", timeout=10)
    assert r.status_code == 200 and r.json()["model_version_status"][0]["version"] == "1"


def test_rest_metadata_body(server):
    r = requests.get(f"{server.url}/v1/models/{MODEL_NAME}/metadata", timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["model_spec"] == {"name": MODEL_NAME, "signature_name": "", "version": "1"}
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"] == {
        "images": {
            "dtype": "DT_FLOAT",
            "tensor_shape": {
                "dim": [
                    {"size": "-1", "name": ""},
                    {"size": "28", "name": ""},
                    {"size": "28", "name": ""},
                    {"size": "1", "name": ""},
                ],
                "unknown_rank": False,
            },
            "name": "serving_default_images:0",
        }
    }
    assert sorted(sig["outputs"]) == ["class_ids", "class_names", "probabilities"]
    assert sig["outputs"]["class_ids"]["dtype"] == "DT_INT64"
    assert sig["outputs"]["class_names"]["dtype"] == "DT_STRING"


def test_rest_predict_row_format_matches_savedmodel(server, images, reference):
    r = requests.post(
        f"{server.url}/v1/models/{MODEL_NAME}:predict",
        json={"instances": images.tolist()},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == 4
    for i, p in enumerate(predictions):
        assert sorted(p) == ["class_ids", "class_names", "probabilities"]
        # float32 values are written in shortest round-trip form: they parse back exactly
        np.testing.assert_array_equal(np.float32(p["probabilities"]), reference["probabilities"][i])
        assert p["class_ids"] == int(reference["class_ids"][i])
        assert p["class_names"] == CLASS_NAMES[p["class_ids"]]


def test_rest_predict_accepts_a_chunked_body(server, images, reference):
    body = json.dumps({"instances": images.tolist()}).encode()
    chunks = (body[i : i + 4096] for i in range(0, len(body), 4096))  # a generator: chunked
    r = requests.post(f"{server.url}/v1/models/{MODEL_NAME}:predict", data=chunks, timeout=30)
    assert r.status_code == 200, r.text
    probabilities = [p["probabilities"] for p in r.json()["predictions"]]
    np.testing.assert_array_equal(np.float32(probabilities), reference["probabilities"])


def test_rest_predict_columnar_format_and_version_path(server, images, reference):
    r = requests.post(
        f"{server.url}/v1/models/{MODEL_NAME}/versions/1:predict",
        json={"signature_name": "serving_default", "inputs": {"images": images.tolist()}},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    outputs = r.json()["outputs"]
    assert sorted(outputs) == ["class_ids", "class_names", "probabilities"]
    np.testing.assert_array_equal(np.float32(outputs["probabilities"]), reference["probabilities"])
    assert outputs["class_ids"] == reference["class_ids"].tolist()


@pytest.mark.parametrize(
    ("method", "path", "body", "code", "error"),
    [
        (
            "POST",
            "/v1/models/half:predict",
            b'{"instances": [1.0, 5.0]}',
            404,
            "Servable not found for request: Latest(half)",
        ),
        (
            "POST",
            f"/v1/models/{MODEL_NAME}/versions/9:predict",
            b'{"instances": [1.0]}',
            404,
            f"Servable not found for request: Specific({MODEL_NAME}, 9)",
        ),
        ("GET", "/v1/models/half", b"", 404, "Could not find any versions of model half"),
        (
            "GET",
            f"/v1/models/{MODEL_NAME}/versions/9",
            b"",
            404,
            f"Could not find version 9 of model {MODEL_NAME}",
        ),
        (
            "POST",
            f"/v1/models/{MODEL_NAME}:predict",
            b"",
            400,
            "JSON Parse error: The document is empty",
        ),
        (
            "POST",
            f"/v1/models/{MODEL_NAME}:predict",
            b"[1, 2]",
            400,
            "JSON Value: [1,2] Is not object",
        ),
        (
            "POST",
            f"/v1/models/{MODEL_NAME}:predict",
            b'{"foo": 1}',
            400,
            "Missing 'inputs' or 'instances' key",
        ),
        (
            "POST",
            f"/v1/models/{MODEL_NAME}:predict",
            b'{"instances": []}',
            400,
            "No values in 'instances' array",
        ),
        (
            "POST",
            f"/v1/models/{MODEL_NAME}:predict",
            b'{"instances": [1], "inputs": [1]}',
            400,
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist",
        ),
        (
            "POST",
            f"/v1/models/{MODEL_NAME}:predict",
            b'{"instances": [[1.0, 2.0]]}',
            400,
            "input 'images' expects shape float32[?,28,28,1], got [1,2]",
        ),
        (
            "POST",
            f"/v1/models/{MODEL_NAME}:predict",
            b'{"signature_name": "nope", "instances": [1.0]}',
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        ("GET", "/v1/models/x:predict", b"", 400, "Malformed request: GET /v1/models/x:predict"),
        (
            "POST",
            f"/v1/models/{MODEL_NAME}:classify",
            b"{}",
            501,
            "classify is not implemented by serving.modelserver (predict only)",
        ),
    ],
)
def test_rest_errors_match_tf_serving(server, method, path, body, code, error):
    r = requests.request(method, server.url + path, data=body, timeout=10)
    assert r.status_code == code, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"error": error}


def test_rest_bad_json_is_400_and_server_keeps_serving(server, images):
    r = requests.post(f"{server.url}/v1/models/{MODEL_NAME}:predict", data=b"{nope", timeout=10)
    assert r.status_code == 400
    assert r.json()["error"].startswith("JSON Parse error:")
    deep = b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    r = requests.post(f"{server.url}/v1/models/{MODEL_NAME}:predict", data=deep, timeout=10)
    assert r.status_code == 400
    assert r.json() == {"error": "JSON Parse error: nested too deeply"}
    r = requests.post(
        f"{server.url}/v1/models/{MODEL_NAME}:predict",
        data=json.dumps({"instances": [[["x"] * 28] * 28]}),
        timeout=10,
    )
    assert r.status_code == 400
    assert "JSON values must all be numbers" in r.json()["error"]
    ok = requests.post(
        f"{server.url}/v1/models/{MODEL_NAME}:predict", json={"instances": images[:1].tolist()}
    )
    assert ok.status_code == 200


def test_metrics_use_tf_serving_names(server, images):
    requests.post(f"{server.url}/v1/models/nope:predict", json={"instances": [1]}, timeout=10)
    r = requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=10)
    assert r.status_code == 200
    text = r.text
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert ':tensorflow:serving:request_count{model_name="nope",status="NOT_FOUND"} 1' in text
    assert f':tensorflow:serving:request_count{{model_name="{MODEL_NAME}",status="OK"}}' in text
    assert ":tensorflow:serving:request_latency_bucket{" in text
    if shutil.which("promtool"):
        import subprocess

        check = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
        )
        # It parses; the only lint findings are TF Serving's own naming (":" in names, a
        # counter without "_total"), which dashboards written for TF Serving depend on.
        assert check.returncode in (0, 3), check.stderr
        expected_lint = (
            "metric names should not contain ':'",
            'counter metrics should have "_total" suffix',
            'non-histogram and non-summary metrics should not have "_count" suffix',
        )
        for line in (check.stdout + check.stderr).strip().splitlines():
            assert any(e in line for e in expected_lint), line
    assert "_created" not in text


# --- gRPC ----------------------------------------------------------------------------------


def test_grpc_predict_with_official_stub_matches_savedmodel(channel, images, reference):
    import tensorflow as tf

    response = grpc_predict(channel, images)
    assert response.model_spec.name == MODEL_NAME
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    np.testing.assert_array_equal(
        tf.make_ndarray(response.outputs["probabilities"]), reference["probabilities"]
    )
    np.testing.assert_array_equal(
        tf.make_ndarray(response.outputs["class_ids"]), reference["class_ids"]
    )
    names = tf.make_ndarray(response.outputs["class_names"])
    assert list(names) == list(reference["class_names"])


def test_grpc_predict_accepts_typed_float_val(channel, images, reference):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.inputs["images"].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in images[:2].shape]
            ),
            float_val=images[:2].reshape(-1).tolist(),
        )
    )
    response = stub.Predict(request, timeout=30)
    out = np.frombuffer(response.outputs["probabilities"].tensor_content, np.float32)
    # a batch of 2 may take other CPU kernels than the reference's batch of 4: last-bit noise
    np.testing.assert_allclose(
        out.reshape(2, 10), reference["probabilities"][:2], rtol=1e-5, atol=1e-7
    )


def test_grpc_errors_have_tf_serving_codes(channel, images):
    with pytest.raises(grpc.RpcError) as err:
        grpc_predict(channel, images, name="half")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "Servable not found for request: Latest(half)"
    with pytest.raises(grpc.RpcError) as err:
        grpc_predict(channel, images, version=9)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        grpc_predict(channel, images[:, :27])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "input 'images' expects shape float32[?,28,28,1], got [4,27,28,1]"
    with pytest.raises(grpc.RpcError) as err:
        grpc_predict(channel, images, label="nope")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "Unrecognized servable version label: nope"


def test_grpc_output_filter(channel, images, reference):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = grpc_request(images)
    request.output_filter.append("class_ids")
    response = stub.Predict(request, timeout=30)
    assert list(response.outputs) == ["class_ids"]
    np.testing.assert_array_equal(
        tf.make_ndarray(response.outputs["class_ids"]), reference["class_ids"]
    )
    request.output_filter.append("logits")
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("output tensor alias not found in signature: logits")


def test_grpc_metadata_and_status(channel):
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        prediction_service_pb2_grpc,
    )

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL_NAME
    response = stub.GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == 1
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    sig = sig_map.signature_def["serving_default"]
    assert sig.inputs["images"].name == "serving_default_images:0"
    assert [d.size for d in sig.inputs["images"].tensor_shape.dim] == [-1, 28, 28, 1]

    bad = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["nope"])
    bad.model_spec.name = MODEL_NAME
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModelMetadata(bad, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "Metadata field nope is not supported"

    model_stub = model_service_pb2_grpc.ModelServiceStub(channel)
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = MODEL_NAME
    status = model_stub.GetModelStatus(status_request, timeout=10)
    assert [(s.version, s.state, s.status.error_code) for s in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)
    ]
    status_request.model_spec.name = "half"
    with pytest.raises(grpc.RpcError) as err:
        model_stub.GetModelStatus(status_request, timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "Could not find any versions of model half"
