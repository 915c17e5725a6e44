"""Load tests for real: the locustfile under the real Locust CLI against a real gateway and model
server, ``python -m loadtest run`` (artefacts, thresholds, errors), and ``compare`` end to end.

Every Locust run is a couple of seconds; the counts Locust reports are checked against what the
servers themselves counted (their Prometheus metrics), so a user that silently skipped requests
or double-counted them would fail.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from loadtest.images import images_source, load_images
from loadtest.run import SUMMARY_KEYS, LoadSpec, Unreachable, aggregate, check_reachable, run_load
from loadtest.servers import ROOT, start_gateway, start_modelserver
from serving.contract import MODEL_NAME
from tests.support.cli import loadtest_main
from tests.support.metrics import scrape

MONITORING = f"--monitoring_config_file={ROOT / 'serving' / 'config' / 'monitoring.config'}"
ARTEFACTS = (
    "summary.json",
    "checks.json",
    "timeline.png",
    "report.html",
    "locust.log",
    "locust_stats.csv",
    "locust_stats_history.csv",
    "locust_failures.csv",
    "locust_exceptions.csv",
    "locust_stats_final.json",
)


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loadtest", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


GATEWAY_PREDICT_OK = (
    "gateway_requests_total",
    (("endpoint", "/v1/predict"), ("method", "POST"), ("status", "200")),
)
GRPC_PREDICTS = (
    ":tensorflow:serving:request_latency_count",
    (("API", "predict"), ("entrypoint", "GRPC"), ("model_name", MODEL_NAME)),
)


# -- fast: no servers ----------------------------------------------------------------------------
def test_generated_images_without_dataset(monkeypatch):
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    images = load_images(50)
    assert len(images) == 50 and images.labels is None
    assert images.pixels.shape == (50, 28, 28) and images.pngs[0][:8] == b"\x89PNG\r\n\x1a\n"
    assert load_images(50).pngs == images.pngs  # deterministic
    expected = "generated (50 unlabelled images; set FASHION_MNIST_DIR to check labels)"
    assert images_source(50) == images.source == expected


def test_dataset_images_carry_labels(fashion_mnist_dir, dataset):
    images = load_images(20, fashion_mnist_dir)
    assert (images.labels == dataset.y_test[:20]).all()
    assert (images.pixels == dataset.x_test[:20]).all()
    expected = f"Fashion-MNIST test set (20 images from {fashion_mnist_dir})"
    assert images_source(20, fashion_mnist_dir) == images.source == expected


def test_aggregate_matches_locusts_percentile_rule():
    entries = [
        {"num_requests": 3, "num_failures": 1, "response_times": {"10": 2, "30": 1},
         "start_time": 100.0, "last_request_timestamp": 102.0},
        {"num_requests": 1, "num_failures": 0, "response_times": {"20": 1},
         "start_time": 100.5, "last_request_timestamp": 104.0},
    ]  # fmt: skip
    agg = aggregate(entries)
    assert agg["requests"] == 4 and agg["failures"] == 1
    assert agg["requests_per_second"] == pytest.approx(4 / 4.0)
    # 4 samples 10, 10, 20, 30: Locust takes the smallest time with at most half above it
    assert (agg["p50_ms"], agg["p95_ms"], agg["p99_ms"]) == (20.0, 30.0, 30.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--duration", "10x"], "bad duration '10x'"),
        (["--duration", "0s"], "must be longer than 0s"),
        (["--users", "0"], "argument --users: expected an integer >= 1, got '0'"),
        (
            ["--max-fail-ratio", "1.5"],
            "argument --max-fail-ratio: expected a finite number in [0, 1], got '1.5'",
        ),
        (["--spawn-rate", "inf"], "argument --spawn-rate: expected a finite number > 0, got 'inf'"),
        (["--max-p99-ms", "nan"], "argument --max-p99-ms: expected a finite number > 0, got 'nan'"),
        (["--payload", "png", "--batch-size", "4"], "one raw image per request"),
        (["--target", "grpc"], "takes grpc://host:port"),
        ([], "is not reachable (GET /readyz"),  # nothing listens on port 1
    ],
)
def test_run_usage_errors_are_one_line_exit_2(tmp_path, capsys, args, message):
    base = ["run", "--target", "gateway", "--host", "http://127.0.0.1:1", "--out", str(tmp_path)]
    code = loadtest_main([*base, "--duration", "2s", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "summary.json").exists()


class _Readyz(http.server.BaseHTTPRequestHandler):
    """GET /readyz: 503 for the first ``not_ready`` requests, then 200."""

    not_ready = 0
    seen = 0

    def do_GET(self) -> None:
        type(self).seen += 1
        code = 503 if type(self).seen <= type(self).not_ready else 200
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def readyz_server():
    handler = type("Handler", (_Readyz,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_gateway_not_ready_yet_is_waited_for(readyz_server, tmp_path):
    """One worker still loading its model answers 503: the load waits instead of failing."""
    handler, url = readyz_server
    handler.not_ready = 3
    check_reachable(LoadSpec("gateway", url, 1, 1, "1s", tmp_path))
    assert handler.seen == 4


def test_gateway_that_stays_unready_is_unreachable(readyz_server, tmp_path, monkeypatch):
    handler, url = readyz_server
    handler.not_ready = 10**6
    monkeypatch.setattr("loadtest.run.READY_GRACE_SECONDS", 0.5)
    with pytest.raises(Unreachable, match=r"is not ready after 0.5s \(GET /readyz: 503\)"):
        check_reachable(LoadSpec("gateway", url, 1, 1, "1s", tmp_path))
    assert 2 <= handler.seen <= 5


def test_cli_unreachable_grpc_host_exit_2(tmp_path):
    """The real command line: an unreachable host is one line and exit status 2."""
    proc = _cli("run", "--target", "grpc", "--host", "grpc://127.0.0.1:1", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "loadtest run: error: gRPC model server grpc://127.0.0.1:1 is not"
    )
    assert len(proc.stderr.strip().splitlines()) == 1


# -- real servers --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def modelserver(exported_model):
    with start_modelserver(exported_model, MONITORING) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(modelserver):
    with start_gateway(f"grpc://{modelserver.target}", workers=1, threads=8) as gw:
        yield gw


@pytest.mark.integration
@pytest.mark.slow
def test_locustfile_gateway_mix_counts_match_the_gateways(gateway, tmp_path, fashion_mnist_dir):
    """Raw PNG, multipart and JSON b64 in turn: no failure, every request the gateway answered
    is one Locust counted, every image's label compared."""
    before = scrape(f"{gateway.url}/metrics").get(GATEWAY_PREDICT_OK, 0.0)
    spec = LoadSpec("gateway", gateway.url, 4, 4, "3s", tmp_path, payload="mix", images=300)
    summary = run_load(spec)
    after = scrape(f"{gateway.url}/metrics")[GATEWAY_PREDICT_OK]
    assert summary["failures"] == 0 and summary["requests"] > 20
    assert after - before == summary["requests"]
    assert summary["images_checked"] == summary["requests"]
    assert summary["labelled"] is True
    # the quick test model is ~75% accurate: wrong labels are counted, and not all answers
    assert 0 < summary["wrong_labels"] < summary["images_checked"] / 2
    names = {e["name"] for e in json.loads((tmp_path / "locust_stats_final.json").read_text())}
    assert names == {f"/v1/predict [{kind} x1]" for kind in ("png", "multipart", "b64")}


@pytest.mark.integration
@pytest.mark.slow
def test_locustfile_grpc_distributed_counts_match_the_model_servers(modelserver, tmp_path):
    """The gRPC user, batch 4, on a master and two workers: the workers' label checks are
    summed on the master and the model server saw exactly the requests Locust counted."""
    metrics = f"{modelserver.url}/monitoring/prometheus/metrics"
    before = scrape(metrics).get(GRPC_PREDICTS, 0.0)
    spec = LoadSpec(
        "grpc", f"grpc://{modelserver.target}", 4, 4, "3s", tmp_path, batch_size=4, processes=2
    )
    summary = run_load(spec)
    after = scrape(metrics)[GRPC_PREDICTS]
    assert summary["failures"] == 0 and summary["requests"] > 20
    assert after - before == summary["requests"]
    assert summary["images_checked"] == 4 * summary["requests"]
    assert summary["images_per_second"] == pytest.approx(4 * summary["requests_per_second"], 0.01)
    assert "2 workers connected" in (tmp_path / "locust.log").read_text()


@pytest.mark.integration
@pytest.mark.slow
def test_run_cli_writes_every_artefact_and_honours_thresholds(modelserver, tmp_path):
    ok, strict = tmp_path / "ok", tmp_path / "strict"
    common = ["--users", "2", "--duration", "2s", "--images", "100"]
    proc = _cli("run", "--target", "rest", "--host", modelserver.url, "--out", str(ok), *common)
    assert proc.returncode == 0, proc.stderr
    for name in ARTEFACTS:
        assert (ok / name).is_file() and (ok / name).stat().st_size > 0, name
    assert (ok / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((ok / "summary.json").read_text())
    assert set(summary) >= set(SUMMARY_KEYS)
    assert json.loads(proc.stdout) == summary
    assert (summary["target"], summary["users"], summary["batch_size"]) == ("rest", 2, 1)
    assert summary["failures"] == 0 and summary["requests"] > 0
    assert summary["thresholds_crossed"] == []

    target = f"grpc://{modelserver.target}"
    proc = _cli(
        "run", "--target", "grpc", "--host", target, "--out", str(strict), *common,
        "--max-p99-ms", "0.001",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "threshold crossed: p99" in proc.stderr
    summary = json.loads((strict / "summary.json").read_text())
    assert summary["failures"] == 0
    assert summary["thresholds_crossed"] == [f"p99 {summary['p99_ms']} ms > 0.001 ms"]


@pytest.mark.integration
@pytest.mark.slow
def test_compare_end_to_end_with_absent_peers_skipped(exported_model, tmp_path):
    out = tmp_path / "cmp"
    env = {**os.environ, "CONVSERVE_PEERS_DIR": str(tmp_path / "no-peers")}
    proc = subprocess.run(
        [
            sys.executable, "-m", "loadtest", "compare", "--model-dir", str(exported_model),
            "--users", "2", "--duration", "2s", "--images", "100", "--workers", "1",
            "--out", str(out),
            "--only", "model server gRPC direct", "gateway → model server gRPC", "peer", "plug-in",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "compare.json").read_text())
    rows = {r["name"]: r for r in doc["rows"]}
    for name in ("model server gRPC direct", "gateway → model server gRPC"):
        row = rows.pop(name)
        assert row["status"] == "ok", row
        assert row["failures"] == 0 and row["requests"] > 0
        assert (Path(row["out"]) / "summary.json").is_file()
        assert f"| {name} |" in proc.stdout
        # every request cost the servers and Locust some CPU, and less than a second each
        assert 0 < row["server_cpu_ms_per_request"] < 1000, row
        assert 0 < row["locust_cpu_ms_per_request"] < 1000, row
    # what is left are the peers (none installed here) or the peers plug-in row itself
    assert rows, "compare listed no peer row"
    for row in rows.values():
        assert row["status"] == "skipped", row
        assert "make bench-peers" in row["reason"] or "not in this checkout" in row["reason"]
        assert row["server_cpu_ms_per_request"] is None
    assert (out / "compare.md").read_text().count("| skipped:") == len(rows)
    assert "| server CPU ms/req | Locust CPU ms/req |" in proc.stdout
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["settings"]["users"] == 2 and doc["settings"]["duration"] == "2s"
    # the report says where its images came from: labels are only checked on the dataset
    assert doc["settings"]["images_source"] == images_source(100)
    assert f"Images: {images_source(100)}." in proc.stdout
