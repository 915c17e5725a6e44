"""serving.modelserver lifecycle as a real process: version swaps under load, labels and config
reloads, server-side batching, graceful SIGTERM, and flag errors."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from loadtest.servers import ROOT, start_modelserver
from loadtest.versions import publish_copy
from serving.contract import MODEL_NAME
from tests.support.modelserver import model_base_for_tests

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def model_src(request) -> Path:
    return model_base_for_tests(request)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(3).random((16, 28, 28, 1), dtype=np.float32)


def make_base(tmp_path: Path, model_src: Path, versions: list[int]) -> Path:
    base = tmp_path / MODEL_NAME
    base.mkdir()
    for v in versions:
        shutil.copytree(model_src / "1", base / str(v))
    return base


def predict_request(images: np.ndarray, *, version: int | None = None, label: str | None = None):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    return request


def stub_for(channel):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def states(server) -> dict[int, str]:
    r = requests.get(f"{server.url}/v1/models/{MODEL_NAME}", timeout=10)
    assert r.status_code == 200, r.text
    return {int(s["version"]): s["state"] for s in r.json()["model_version_status"]}


def wait_for_states(server, want: dict[int, str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if states(server) == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"states {states(server)} never became {want}")


def metric_value(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert m, f"{name} not in metrics"
    return float(m.group(1))


# --- versions ------------------------------------------------------------------------------


def test_new_version_is_picked_up_under_load_and_removed_one_unloaded(tmp_path, model_src, images):
    base = make_base(tmp_path, model_src, [1])
    with start_modelserver(base, "--file_system_poll_wait_seconds=0.2") as server:
        request = predict_request(images[:2])
        stop = threading.Event()
        errors: list[str] = []
        seen: list[list[int]] = [[] for _ in range(4)]

        def client(i: int) -> None:
            with grpc.insecure_channel(server.target) as ch:
                stub = stub_for(ch)
                for _ in range(3000):  # bounded even if the swap never happens
                    if stop.is_set():
                        return
                    try:
                        seen[i].append(stub.Predict(request, timeout=30).model_spec.version.value)
                    except grpc.RpcError as exc:
                        errors.append(f"{exc.code()}: {exc.details()}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        publish_copy(base, 1, 2)
        wait_for_states(server, {2: "AVAILABLE", 1: "END"})
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(60)
        assert errors == []
        assert all(s and s[-1] == 2 for s in seen), [s[-3:] for s in seen]
        assert any(1 in s for s in seen)

        shutil.rmtree(base / "2")  # latest is 1 again: 2 is unloaded, 1 reloaded
        wait_for_states(server, {2: "END", 1: "AVAILABLE"})
        with grpc.insecure_channel(server.target) as ch:
            assert stub_for(ch).Predict(request, timeout=30).model_spec.version.value == 1


# --- labels and config reloads -------------------------------------------------------------


def test_labels_from_models_config_and_reload(tmp_path, model_src, images):
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    from serving.modelserver.config import load_model_server_config

    base = make_base(tmp_path, model_src, [1, 2])
    config = ROOT / "serving" / "config" / "models.config"  # latest 2, stable=1, canary=2
    with start_modelserver(
        None, f"--model_config_file={config}", f"--model_base_path={base}"
    ) as server:
        assert states(server) == {2: "AVAILABLE", 1: "AVAILABLE"}
        r = requests.get(f"{server.url}/v1/models/{MODEL_NAME}/labels/canary", timeout=10)
        assert r.json()["model_version_status"][0]["version"] == "2"
        r = requests.post(
            f"{server.url}/v1/models/{MODEL_NAME}/labels/stable:predict",
            json={"instances": images[:1].tolist()},
            timeout=30,
        )
        assert r.status_code == 200
        r = requests.post(
            f"{server.url}/v1/models/{MODEL_NAME}/labels/beta:predict",
            json={"instances": images[:1].tolist()},
            timeout=30,
        )
        assert r.status_code == 400
        assert r.json() == {"error": "Unrecognized servable version label: beta"}

        with grpc.insecure_channel(server.target) as ch:
            stub = stub_for(ch)
            assert (
                stub.Predict(predict_request(images[:1], label="stable")).model_spec.version.value
                == 1
            )
            assert (
                stub.Predict(predict_request(images[:1], label="canary")).model_spec.version.value
                == 2
            )

            # promote the canary through HandleReloadConfigRequest
            new_config = load_model_server_config(config, base_path_override=str(base))
            new_config.model_config_list.config[0].version_labels["stable"] = 2
            reload_request = model_management_pb2.ReloadConfigRequest(config=new_config)
            model_service_pb2_grpc.ModelServiceStub(ch).HandleReloadConfigRequest(
                reload_request, timeout=60
            )
            assert (
                stub.Predict(predict_request(images[:1], label="stable")).model_spec.version.value
                == 2
            )


# --- batching and SIGTERM ------------------------------------------------------------------


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory, model_src):
    tmp = tmp_path_factory.mktemp("batching")
    base = make_base(tmp, model_src, [1])
    params = tmp / "batching.config"
    # a long timeout makes merging deterministic here and gives SIGTERM a slow request
    params.write_text(
        "max_batch_size { value: 64 }\n"
        "batch_timeout_micros { value: 2000000 }\n"
        "max_enqueued_batches { value: 8 }\n"
        "num_batch_threads { value: 1 }\n"
    )
    with start_modelserver(
        base,
        "--enable_batching",
        f"--batching_parameters_file={params}",
        "--monitoring_config_file=serving/config/monitoring.config",
    ) as server:
        yield server


def test_batching_merges_concurrent_requests(batching_server, images):
    import tensorflow as tf

    n = 16
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def call(i: int) -> None:
        with grpc.insecure_channel(batching_server.target) as ch:
            stub = stub_for(ch)
            request = predict_request(images[i : i + 1])
            barrier.wait()
            try:
                response = stub.Predict(request, timeout=30)
                results[i] = tf.make_ndarray(response.outputs["probabilities"])
            except grpc.RpcError as exc:
                results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(isinstance(r, np.ndarray) for r in results), results
    text = requests.get(f"{batching_server.url}/monitoring/prometheus/metrics", timeout=10).text
    batches = metric_value(
        text, f':convserve:modelserver:batch_size_count{{model_name="{MODEL_NAME}"}}'
    )
    rows = metric_value(text, f':convserve:modelserver:batch_size_sum{{model_name="{MODEL_NAME}"}}')
    assert rows == n
    assert batches <= n // 2  # 16 single-image requests ran as a few model calls
    # each caller got its own row back: compare with one unbatched call on all 16 images
    r = requests.post(
        f"{batching_server.url}/v1/models/{MODEL_NAME}:predict",
        json={"inputs": images[:n].tolist()},
        timeout=30,
    )
    together = np.float32(r.json()["outputs"]["probabilities"])
    for i in range(n):
        np.testing.assert_allclose(results[i][0], together[i], rtol=1e-5, atol=1e-7)


def test_sigterm_drains_in_flight_request_and_exits_0(batching_server, images):
    """A request waiting in the 2 s batching window still completes after SIGTERM."""
    outcome: dict[str, object] = {}

    def slow_request() -> None:
        try:
            r = requests.post(
                f"{batching_server.url}/v1/models/{MODEL_NAME}:predict",
                json={"instances": images[:1].tolist()},
                timeout=30,
            )
            outcome["status"] = r.status_code
            outcome["body"] = r.json()
        except requests.RequestException as exc:
            outcome["error"] = exc

    t = threading.Thread(target=slow_request)
    started = time.monotonic()
    t.start()
    time.sleep(0.7)  # the request is now waiting for its batch to fill or time out
    batching_server.proc.send_signal(signal.SIGTERM)
    t.join(30)
    rc = batching_server.proc.wait(30)
    assert outcome.get("status") == 200, outcome
    assert len(outcome["body"]["predictions"]) == 1
    assert time.monotonic() - started >= 1.9  # it really was in flight for the whole window
    assert rc == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{batching_server.url}/v1/models/{MODEL_NAME}", timeout=5)
    assert "shutting down" in batching_server.output()


# --- flags ---------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving.modelserver", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model_base_path=/m", "--bogus=1"], "unrecognized arguments: --bogus=1"),
        ([], "either --model_base_path (with --model_name) or --model_config_file is required"),
        (
            ["--model_name=x", "--model_base_path=/m", "--model_config_file=c"],
            "--model_name cannot be combined with --model_config_file",
        ),
        (
            ["--model_base_path=/m", "--port=9000", "--rest_api_port=9000"],
            "--port and --rest_api_port are both 9000",
        ),
        (
            ["--model_base_path=/m", "--enable_batching=maybe"],
            "expected true or false, got 'maybe'",
        ),
        (
            ["--model_base_path=/m", "--port=70000"],
            "argument --port: expected an integer in [0, 65535], got '70000'",
        ),
        (
            ["--model_base_path=/m", "--batching_parameters_file=b"],
            "--batching_parameters_file needs --enable_batching",
        ),
        (
            ["--model_base_path", "/m", "--file_system_poll_wait_seconds", "-1"],
            "argument --file_system_poll_wait_seconds: expected a finite number >= 0, got '-1'",
        ),
        (
            ["--model_base_path", "/m", "--file_system_poll_wait_seconds", "inf"],
            "argument --file_system_poll_wait_seconds: expected a finite number >= 0, got 'inf'",
        ),
        (
            ["--model_base_path", "/m", "--shutdown_grace_seconds", "nan"],
            "argument --shutdown_grace_seconds: expected a finite number >= 0, got 'nan'",
        ),
        (
            ["--model_base_path", "/m", "--rest_api_timeout_in_ms", "1e400"],
            "argument --rest_api_timeout_in_ms: expected an integer >= 0, got '1e400'",
        ),
        (
            ["--model_base_path", "/m", "--rest_api_num_threads", "0"],
            "argument --rest_api_num_threads: expected an integer >= 1, got '0'",
        ),
    ],
)
def test_bad_flags_exit_2_with_one_line(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("python -m serving.modelserver: error: ")
    assert message in lines[0]


def test_invalid_config_file_exits_1_with_one_line(tmp_path):
    bad = tmp_path / "models.config"
    bad.write_text('model_config_list { config { name: "m" base_pth: "/m" } }\n')
    result = run_cli(f"--model_config_file={bad}")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"modelserver: {bad}:1:")
    assert "base_pth" in lines[-1]
    assert "Traceback" not in result.stderr


def test_model_config_file_is_polled(tmp_path, model_src, images):
    base = make_base(tmp_path, model_src, [1, 2])
    config = tmp_path / "models.config"
    template = (
        'model_config_list {{ config {{ name: "{name}" base_path: "{base}" '
        'model_platform: "tensorflow" model_version_policy {{ all {{}} }} '
        'version_labels {{ key: "stable" value: {stable} }} }} }}\n'
    )
    config.write_text(template.format(name=MODEL_NAME, base=base, stable=1))
    with start_modelserver(
        None, f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1"
    ) as server:
        with grpc.insecure_channel(server.target) as ch:
            stub = stub_for(ch)
            request = predict_request(images[:1], label="stable")
            assert stub.Predict(request, timeout=30).model_spec.version.value == 1
            config.write_text(template.format(name=MODEL_NAME, base=base, stable=2))
            deadline = time.monotonic() + 20
            while stub.Predict(request, timeout=30).model_spec.version.value != 2:
                assert time.monotonic() < deadline, "the edited config was never applied"
                time.sleep(0.2)
            # a broken edit is logged and ignored: the server keeps the last good config
            config.write_text("model_config_list { config { nme: 1 } }\n")
            time.sleep(2.5)
            assert stub.Predict(request, timeout=30).model_spec.version.value == 2
        assert "keeping the current config" in server.output()


def test_port_in_use_exits_1_with_one_line(model_src):
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            f"--port={port}",
            "--rest_api_port=0",
            f"--model_name={MODEL_NAME}",
            f"--model_base_path={model_src}",
            "--log_level=ERROR",
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last
        == f"modelserver: cannot start: cannot bind the gRPC port 0.0.0.0:{port}: address in use?"
    )
