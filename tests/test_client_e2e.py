"""End to end against the real model server (``python -m serving.modelserver`` as a subprocess,
serving the session's exported model): serving.tfserving's GrpcClient/RestClient, the
TFServingClient and the ``python -m client`` CLI over ``--grpc`` and ``--rest``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from client import TFServingClient
from serving.preprocess import decode_image, to_batch
from serving.tfserving import (
    BackendInvalidRequest,
    GrpcClient,
    ModelNotFound,
    RestClient,
    VersionStatus,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
IMAGES = sorted(str(p) for p in (ROOT / "tests" / "support" / "images").glob("*.png"))
N_TEST = 256


@pytest.fixture(scope="module")
def model_base(request) -> Path:
    from tests.support.modelserver import model_base_for_tests

    return model_base_for_tests(request)


@pytest.fixture(scope="module")
def server(model_base):
    from loadtest.servers import start_modelserver

    with start_modelserver(model_base) as handle:
        yield handle


@pytest.fixture(scope="module")
def test_batch(dataset) -> tuple[np.ndarray, np.ndarray]:
    x = dataset.x_test[:N_TEST]
    return (x.astype(np.float32) / 255)[..., None], dataset.y_test[:N_TEST]


@pytest.fixture(scope="module")
def in_process(model_base, test_batch) -> np.ndarray:
    """Probabilities of the same export computed in this process (tf.saved_model.load)."""
    import tensorflow as tf

    from training.evaluate import load_serving_fn

    _, fn = load_serving_fn(model_base)
    return fn(images=tf.constant(test_batch[0]))["probabilities"].numpy()


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_predict_matches_the_model_in_process(server, test_batch, in_process, protocol):
    client = GrpcClient(server.target) if protocol == "grpc" else RestClient(server.url)
    with client:
        result = client.predict(test_batch[0])
    assert result.model_version == 1
    assert result.probabilities.shape == (N_TEST, 10)
    assert result.probabilities.dtype == np.float32
    np.testing.assert_allclose(result.probabilities, in_process, atol=1e-5)
    np.testing.assert_array_equal(result.probabilities.argmax(1), in_process.argmax(1))


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_model_status(server, protocol):
    client = GrpcClient(server.target) if protocol == "grpc" else RestClient(server.url)
    with client:
        assert client.model_status() == [VersionStatus(1, "AVAILABLE", "")]


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_pinned_version(server, test_batch, protocol):
    cls, target = (GrpcClient, server.target) if protocol == "grpc" else (RestClient, server.url)
    with cls(target, version=1) as client:
        assert client.predict(test_batch[0][:2]).model_version == 1
        assert client.model_status() == [VersionStatus(1, "AVAILABLE", "")]
    with cls(target, version=2) as client, pytest.raises(ModelNotFound):
        client.predict(test_batch[0][:2])


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_unknown_model_is_model_not_found(server, test_batch, protocol):
    cls, target = (GrpcClient, server.target) if protocol == "grpc" else (RestClient, server.url)
    with cls(target, "no_such_model") as client:
        with pytest.raises(ModelNotFound):
            client.predict(test_batch[0][:1])
        with pytest.raises(ModelNotFound):
            client.model_status()


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_wrong_shape_is_invalid_request(server, protocol):
    cls, target = (GrpcClient, server.target) if protocol == "grpc" else (RestClient, server.url)
    with cls(target) as client, pytest.raises(BackendInvalidRequest):
        client.predict(np.zeros((1, 27, 28, 1), np.float32))


def test_tfserving_client_grpc_and_rest_agree(server):
    with TFServingClient(server.target, "grpc") as g, TFServingClient(server.url, "rest") as r:
        by_grpc, by_rest = g.predict(IMAGES), r.predict(IMAGES)
    assert [p.label for p in by_grpc] == [p.label for p in by_rest]
    for a, b in zip(by_grpc, by_rest, strict=True):
        assert a.model_version == b.model_version == 1
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)
        assert sum(a.probabilities) == pytest.approx(1.0, abs=1e-4)


def test_preprocessed_dataset_png_equals_raw_tensor(server, dataset, tmp_path):
    from PIL import Image

    paths = []
    for i, pixels in enumerate(dataset.x_test[:8]):
        path = tmp_path / f"test_{i}.png"
        Image.fromarray(pixels, mode="L").save(path)
        paths.append(path)
    raw = (dataset.x_test[:8].astype(np.float32) / 255)[..., None]
    np.testing.assert_array_equal(to_batch([decode_image(p.read_bytes()) for p in paths]), raw)
    with TFServingClient(server.target, "grpc") as client, GrpcClient(server.target) as direct:
        by_file = np.array([p.probabilities for p in client.predict(paths)], np.float32)
        np.testing.assert_allclose(by_file, direct.predict(raw).probabilities, atol=1e-6)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_grpc_and_rest(server):
    by_grpc = run_cli("predict", *IMAGES, "--grpc", server.target, "--json")
    by_rest = run_cli("predict", *IMAGES, "--rest", server.url, "--json")
    assert by_grpc.returncode == 0, by_grpc.stderr
    assert by_rest.returncode == 0, by_rest.stderr
    g, r = json.loads(by_grpc.stdout), json.loads(by_rest.stdout)
    assert g["target"] == f"grpc://{server.target}" and r["target"] == server.url
    assert [p["file"] for p in g["predictions"]] == IMAGES
    assert [p["label"] for p in g["predictions"]] == [p["label"] for p in r["predictions"]]
    assert {p["model_version"] for p in g["predictions"] + r["predictions"]} == {1}

    table = run_cli("predict", IMAGES[0], "--grpc", server.target, "--model-version", "1")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["file", "label", "confidence"]
    assert row.startswith(IMAGES[0]) and g["predictions"][0]["label"] in row


def test_cli_missing_version_is_a_server_error(server):
    proc = run_cli("predict", IMAGES[0], "--rest", server.url, "--model-version", "9")
    assert proc.returncode == 5, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {server.url}: HTTP 503 model_not_ready: ")
    assert proc.stderr.count("\n") == 1


@pytest.fixture(scope="module")
def labelled_server(model_base, tmp_path_factory):
    """A second model server with versions 1 and 2 and the labels stable=1, canary=2."""
    import shutil

    from loadtest.servers import start_modelserver

    base = tmp_path_factory.mktemp("labelled") / "fashion_mnist"
    shutil.copytree(model_base / "1", base / "1")
    shutil.copytree(model_base / "1", base / "2")
    config = base.parent / "models.config"
    config.write_text(
        "model_config_list {\n  config {\n    name: 'fashion_mnist'\n"
        f"    base_path: '{base}'\n    model_platform: 'tensorflow'\n"
        "    model_version_policy { specific { versions: 1 versions: 2 } }\n"
        "    version_labels { key: 'stable' value: 1 }\n"
        "    version_labels { key: 'canary' value: 2 }\n  }\n}\n"
    )
    with start_modelserver(None, f"--model_config_file={config}") as handle:
        yield handle


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_label_pinning(labelled_server, test_batch, protocol):
    server = labelled_server
    cls, target = (GrpcClient, server.target) if protocol == "grpc" else (RestClient, server.url)
    batch = test_batch[0][:2]
    with cls(target) as client:
        assert client.model_status() == [
            VersionStatus(1, "AVAILABLE", ""),
            VersionStatus(2, "AVAILABLE", ""),
        ]
        assert client.predict(batch).model_version == 2  # latest
    for label, version in (("stable", 1), ("canary", 2)):
        with cls(target, label=label) as client:
            assert client.predict(batch).model_version == version
    with cls(target, label="nope") as client, pytest.raises(ModelNotFound) as info:
        client.predict(batch)
    assert "Unrecognized servable version label: nope" in str(info.value)


@pytest.fixture(scope="module")
def gateway_process(server):
    """The real gateway (``python -m serving.gateway`` under gunicorn) on the model server's gRPC."""
    from loadtest.servers import start_gateway

    with start_gateway(f"grpc://{server.target}", workers=1) as gw:
        yield gw


def test_gateway_client_and_cli_through_the_whole_stack(gateway_process, server):
    from client import GatewayClient

    with GatewayClient(gateway_process.url) as gw, TFServingClient(server.target) as direct:
        via_gateway, via_grpc = gw.predict(IMAGES), direct.predict(IMAGES)
        assert gw.ready() is True
    assert [p.label for p in via_gateway] == [p.label for p in via_grpc]
    for a, b in zip(via_gateway, via_grpc, strict=True):
        assert a.model_version == b.model_version == 1
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)  # 6 decimals on the wire

    proc = run_cli("predict", *IMAGES, "--gateway", gateway_process.url, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [p["label"] for p in doc["predictions"]] == [p.label for p in via_grpc]
