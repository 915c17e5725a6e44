"""The gateway as it runs for real: gunicorn workers → ``serving.modelserver`` over gRPC and
REST, and the embedded backend, as separate processes.

Shared, module-scoped processes: one model server, three gateways (gRPC, REST, embedded; two
workers each). Covered: end-to-end correctness on 200 test-set PNGs against the model's own
predictions, metrics summed across workers (and ``promtool``), the model server going away
(503 within the deadline) and coming back (served again, no gateway restart), a new model
version exported while requests flow (answered by it, no failed request), SIGTERM shutdown.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from loadtest.servers import free_ports, start_gateway, start_modelserver
from loadtest.versions import publish_copy
from serving.contract import list_versions
from tests.support.ci import missing
from tests.support.metrics import scrape
from tests.support.modelserver import writable_copy
from tests.support.traffic import Traffic, post_image
from tests.support.workers import predictions_by_worker, wait_for_workers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_IMAGES = 200
TIMEOUT_S = 3.0  # GATEWAY_TIMEOUT_SECONDS of the gateways under test


@pytest.fixture(scope="module")
def ms_base(exported_model, tmp_path_factory) -> Path:
    return writable_copy(exported_model, tmp_path_factory.mktemp("gw-ms"))


@pytest.fixture(scope="module")
def embedded_base(exported_model, tmp_path_factory) -> Path:
    return writable_copy(exported_model, tmp_path_factory.mktemp("gw-emb"))


@pytest.fixture(scope="module")
def ms_ports() -> tuple[int, int]:
    grpc_port, rest_port = free_ports(2)
    return grpc_port, rest_port


@pytest.fixture(scope="module")
def embedded_gateway(embedded_base):
    # Started first and not waited for: its workers load TensorFlow while the rest starts.
    env = {
        "GATEWAY_TIMEOUT_SECONDS": str(TIMEOUT_S),
        "GATEWAY_MODEL_POLL_SECONDS": "0.5",
    }
    with start_gateway(f"embedded:{embedded_base}", env=env, workers=2, wait=False) as gw:
        yield gw


@pytest.fixture(scope="module")
def modelserver(ms_base, ms_ports, embedded_gateway):
    with _modelserver_on(ms_base, ms_ports) as server:
        yield server


def _modelserver_on(base: Path, ports: tuple[int, int]):
    grpc_port, rest_port = ports
    return start_modelserver(
        base,
        "--file_system_poll_wait_seconds=1",
        grpc_port=grpc_port,
        rest_port=rest_port,
        timeout=90.0,
    )


def _remote_env() -> dict[str, str]:
    return {
        "GATEWAY_WORKERS": "2",
        "GATEWAY_THREADS": "4",
        "GATEWAY_TIMEOUT_SECONDS": str(TIMEOUT_S),
        "GATEWAY_READY_CACHE_SECONDS": "0.2",
    }


@pytest.fixture(scope="module")
def grpc_gateway(modelserver, ms_ports):
    with start_gateway(f"grpc://127.0.0.1:{ms_ports[0]}", env=_remote_env()) as gw:
        yield gw


@pytest.fixture(scope="module")
def rest_gateway(modelserver, ms_ports):
    with start_gateway(f"http://127.0.0.1:{ms_ports[1]}", env=_remote_env()) as gw:
        yield gw


@pytest.fixture(scope="module")
def gateways(grpc_gateway, rest_gateway, embedded_gateway):
    embedded_gateway.wait_ready(120)
    # Every worker of the embedded gateway must have its model: a request reaching a worker
    # that is still loading waits for it (within the deadline), so warm both up.
    for _ in range(8):
        r = requests.post(
            f"{embedded_gateway.url}/v1/predict",
            json={"instances": [[[0] * 28] * 28]},
            timeout=30,
        )
        assert r.status_code == 200, r.text
    return {"grpc": grpc_gateway, "rest": rest_gateway, "embedded": embedded_gateway}


@pytest.fixture(scope="module")
def test_pngs(dataset) -> tuple[np.ndarray, list[bytes]]:
    """The first 200 test images as uint8 arrays and as 28x28 grayscale PNG files."""
    x = dataset.x_test[:N_IMAGES]
    pngs = []
    for arr in x:
        buf = io.BytesIO()
        Image.fromarray(arr, mode="L").save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return x, pngs


@pytest.fixture(scope="module")
def reference(exported_model, test_pngs) -> np.ndarray:
    """The model's own probabilities on the raw arrays (TensorFlow, no gateway code)."""
    import tensorflow as tf

    x, _ = test_pngs
    loaded = tf.saved_model.load(str(exported_model / "1"))
    fn = loaded.signatures["serving_default"]
    images = tf.constant(x.astype(np.float32)[..., None] / 255.0)
    return fn(images=images)["probabilities"].numpy()


PREDICT_OK = (
    "gateway_requests_total",
    (("endpoint", "/v1/predict"), ("method", "POST"), ("status", "200")),
)


# -- correctness --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["grpc", "rest", "embedded"])
def test_predictions_equal_the_models_own(gateways, test_pngs, reference, kind):
    url = gateways[kind].url
    _, pngs = test_pngs
    probs, versions = [], set()
    # 180 images in multipart batches of 90 (more than the embedded batcher's 64 rows, so a
    # request is split across model calls), the last 20 one raw PNG per request
    for start in range(0, 180, 90):
        files = [("file", (f"{i}.png", pngs[i], "image/png")) for i in range(start, start + 90)]
        r = requests.post(f"{url}/v1/predict", files=files, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["predictions"]) == 90
        versions.add(body["model_version"])
        probs += [p["probabilities"] for p in body["predictions"]]
    for i in range(180, N_IMAGES):
        r = requests.post(
            f"{url}/v1/predict", data=pngs[i], headers={"Content-Type": "image/png"}, timeout=30
        )
        assert r.status_code == 200, r.text
        versions.add(r.json()["model_version"])
        probs += [r.json()["predictions"][0]["probabilities"]]
    got = np.asarray(probs)
    assert got.shape == (N_IMAGES, 10)
    np.testing.assert_array_equal(got.argmax(axis=1), reference.argmax(axis=1))
    np.testing.assert_allclose(got, reference, atol=1e-5)
    assert versions == {1}


def test_prediction_body_and_request_id(gateways, test_pngs):
    _, pngs = test_pngs
    r = requests.post(
        f"{gateways['grpc'].url}/v1/predict",
        data=pngs[0],
        headers={"Content-Type": "image/png", "X-Request-ID": "it-1"},
        timeout=30,
    )
    assert r.status_code == 200
    assert r.headers["X-Request-ID"] == "it-1"
    body = r.json()
    assert set(body) == {"model_name", "model_version", "predictions"}
    assert body["model_name"] == "fashion_mnist"
    pred = body["predictions"][0]
    assert pred["confidence"] == max(pred["probabilities"])
    assert pred["class_id"] == int(np.argmax(pred["probabilities"]))


# -- metrics across workers -----------------------------------------------------------------------
def test_metrics_sum_over_both_workers(gateways, test_pngs):
    gw = gateways["rest"]
    _, pngs = test_pngs
    workers = wait_for_workers(gw, 2)
    before_scrape = scrape(f"{gw.url}/metrics").get(PREDICT_OK, 0.0)
    before = predictions_by_worker(gw.metrics_dir)
    sent = 0
    with ThreadPoolExecutor(8) as pool:
        # Rounds of 16 requests (a new connection each) until each worker's own counter file
        # shows it answered some: only then does a scrape's total prove a sum over workers.
        while True:
            outcomes = list(pool.map(lambda i: post_image(gw.url, pngs[i % N_IMAGES]), range(16)))
            assert [o.status for o in outcomes] == [200] * 16, outcomes
            sent += 16
            now = predictions_by_worker(gw.metrics_dir)
            served = {pid: now.get(pid, 0.0) - before.get(pid, 0.0) for pid in now}
            if all(served.get(pid, 0.0) >= 5 for pid in workers):
                break
            assert sent < 480, f"one worker did (almost) all the work: {served}"
    assert set(served) >= workers and sum(served.values()) == sent
    # Whichever worker answers the scrape, it reports the sum over both workers.
    for _ in range(6):
        assert scrape(f"{gw.url}/metrics")[PREDICT_OK] - before_scrape == sent


def _worker_pids(metrics_dir: Path) -> set[int]:
    """Pids of the workers that wrote live gauges (files of dead workers are removed)."""
    return {int(p.stem.rsplit("_", 1)[-1]) for p in metrics_dir.glob("gauge_livesum_*.db")}


def test_killed_worker_is_replaced_and_its_counts_survive(gateways, test_pngs):
    gw = gateways["rest"]
    _, pngs = test_pngs
    before = scrape(f"{gw.url}/metrics")[PREDICT_OK]
    pids = _worker_pids(gw.metrics_dir)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    # child_exit marks it dead (its live gauges go); gunicorn starts a replacement worker
    while victim in _worker_pids(gw.metrics_dir) or len(_worker_pids(gw.metrics_dir)) < 2:
        assert time.monotonic() < deadline, sorted(_worker_pids(gw.metrics_dir))
        requests.get(f"{gw.url}/healthz", timeout=10)  # the new worker writes its gauges
        time.sleep(0.2)
    assert (
        scrape(f"{gw.url}/metrics")[PREDICT_OK] == before
    )  # the dead worker's requests still count
    for i in range(4):
        r = requests.post(
            f"{gw.url}/v1/predict", data=pngs[i], headers={"Content-Type": "image/png"}, timeout=30
        )
        assert r.status_code == 200, r.text
    assert scrape(f"{gw.url}/metrics")[PREDICT_OK] == before + 4
    assert scrape(f"{gw.url}/metrics")[("gateway_in_flight_requests", ())] == 1  # just the scrape


def test_multiprocess_metrics_pass_promtool(gateways, test_pngs):
    promtool = shutil.which("promtool")
    if promtool is None:
        missing("promtool not installed (apt-get install prometheus)")
    for png in test_pngs[1][:4]:  # both workers have something in every metric
        requests.post(
            f"{gateways['grpc'].url}/v1/predict",
            data=png,
            headers={"Content-Type": "image/png"},
            timeout=30,
        )
    text = requests.get(f"{gateways['grpc'].url}/metrics", timeout=10).content
    assert b"gateway_model_info" in text
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- version swaps --------------------------------------------------------------------------------
def _model_version_answered(url: str, png: bytes) -> tuple[int | None, int | None]:
    """(status, model_version) of one prediction; (None, None) when the connection failed."""
    o = post_image(url, png)
    return o.status, o.body.get("model_version") if isinstance(o.body, dict) else None


@pytest.mark.parametrize(
    ("kind", "base_fixture"), [("embedded", "embedded_base"), ("grpc", "ms_base")]
)
def test_new_version_takes_over_without_failures(gateways, test_pngs, request, kind, base_fixture):
    url = gateways[kind].url
    base: Path = request.getfixturevalue(base_fixture)
    new = list_versions(base)[-1] + 1
    _, pngs = test_pngs
    images = itertools.cycle(pngs[:4])
    # A thread that raises fails the test when the block ends (Traffic re-raises).
    with Traffic(lambda: _model_version_answered(url, next(images)), threads=4) as traffic:
        traffic.wait_for(lambda out: len(out) >= 8, 30, "answers from the old version")
        publish_copy(base, new - 1, new)
        # until a few answers in a row came from the new version (every worker switched)
        traffic.wait_for(
            lambda out: len(out) >= 20 and all(v == new for _, v in out[-20:]),
            60,
            f"20 answers in a row from version {new}",
        )
    results = traffic.outcomes
    codes = {c for c, _ in results}
    assert codes == {200}, f"failed requests during the swap: {sorted(codes)}"
    versions = [v for _, v in results]
    assert versions[0] == new - 1 and set(versions) == {new - 1, new}
    # The 20 in a row were checked above. Answers after them may still come from the old
    # version: each worker loads the new one on its own poll, and one that is still loading
    # answers from the old one meanwhile (no bound on how many without knowing which worker
    # answered), so there is no tail check here.
    models = requests.get(f"{url}/v1/models", timeout=10).json()
    assert {"version": new, "state": "AVAILABLE", "error": ""} in models["versions"]


def test_pinned_versions(gateways, ms_base, ms_ports, test_pngs):
    """GATEWAY_MODEL_VERSION: the served version answers; a version not served is not ready."""
    _, pngs = test_pngs
    served = list_versions(ms_base)[-1]  # after the swap
    post = dict(data=pngs[0], headers={"Content-Type": "image/png"}, timeout=30)
    backend = f"grpc://127.0.0.1:{ms_ports[0]}"
    pinned = {**_remote_env(), "GATEWAY_WORKERS": "1"}
    with start_gateway(backend, env={**pinned, "GATEWAY_MODEL_VERSION": str(served)}) as gw:
        r = requests.post(f"{gw.url}/v1/predict", **post)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == served
        assert requests.get(f"{gw.url}/v1/models", timeout=10).json()["pinned_version"] == served
    with start_gateway(backend, env={**pinned, "GATEWAY_MODEL_VERSION": "99"}, wait=False) as gw:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = requests.get(f"{gw.url}/readyz", timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, gw.output()
                time.sleep(0.2)
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        r = requests.post(f"{gw.url}/v1/predict", **post)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "model_not_ready"


# -- backend outage -------------------------------------------------------------------------------
def test_modelserver_down_then_back(gateways, modelserver, ms_base, ms_ports, test_pngs):
    gw = gateways["grpc"]
    _, pngs = test_pngs
    modelserver.stop()
    post = dict(data=pngs[0], headers={"Content-Type": "image/png"}, timeout=30)
    for _ in range(4):  # both workers, whatever their channel state
        started = time.monotonic()
        r = requests.post(f"{gw.url}/v1/predict", **post)
        elapsed = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "backend_unavailable"
        assert r.headers["Retry-After"] == "1"
        assert elapsed < TIMEOUT_S
    time.sleep(0.3)  # readiness cache (0.2 s) expires
    r = requests.get(f"{gw.url}/readyz", timeout=10)
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
    rest = requests.post(f"{gateways['rest'].url}/v1/predict", **post)
    assert rest.status_code == 503 and rest.json()["error"]["code"] == "backend_unavailable"

    with _modelserver_on(ms_base, ms_ports):
        # Each worker's gRPC channel reconnects on its own backoff (at most 2 s, see
        # serving.backends.grpc): within a few seconds every request succeeds again.
        deadline = time.monotonic() + 15
        in_a_row = 0
        while in_a_row < 10:
            assert time.monotonic() < deadline, "gateway did not serve again after the restart"
            ok = requests.post(f"{gw.url}/v1/predict", **post).status_code == 200
            in_a_row = in_a_row + 1 if ok else 0
            time.sleep(0.05 if ok else 0.2)
        assert requests.get(f"{gw.url}/readyz", timeout=10).status_code == 200
        deadline = time.monotonic() + 15
        while requests.post(f"{gateways['rest'].url}/v1/predict", **post).status_code != 200:
            assert time.monotonic() < deadline, "REST gateway did not serve again"
            time.sleep(0.2)
        m = scrape(f"{gw.url}/metrics")
        assert m[("gateway_backend_errors_total", (("reason", "unavailable"),))] >= 4


def test_sigterm_shuts_down_cleanly(gateways):
    gw = gateways["embedded"]
    assert gw.stop(timeout=30) == 0
    assert "Shutting down: Master" in gw.output()
