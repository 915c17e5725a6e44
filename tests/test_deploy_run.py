"""The manifests' own command lines, run: TF Serving's flags given to serving.modelserver, the
gateway with exactly the manifests' GATEWAY_* environment and the image's ENTRYPOINT, a real
Prometheus with the project's scrape config and alert rules, the Grafana dashboard's queries
against live /metrics output, and the gateway image's gRPC path with no TensorFlow runtime.

Only hosts, ports and container paths are translated (loadtest.stack.Translation); a typo in a
flag, a port or a variable name makes these fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
import requests
import yaml
from packaging.requirements import Requirement

from loadtest.servers import StartError, free_ports, http_ok, launch
from loadtest.stack import (
    PROMETHEUS_CONFIG,
    compose_commands,
    local_prometheus_config,
    start_pair,
    start_prometheus,
)
from serving.gateway import protos_bundle
from serving.gateway.config import GatewayConfig
from tests.support.deploy import (
    COMPOSE_FILES,
    KUSTOMIZATIONS,
    MONITORING,
    ROOT,
    k8s_commands,
    render,
    tool,
)

pytestmark = pytest.mark.integration

MODEL_NAME = GatewayConfig().model_name
IMAGES = ROOT / "tests" / "support" / "images"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "convserve.json"
ALERTS = MONITORING / "prometheus" / "alerts.yml"
TRAFFIC = 6


def predict(gateway_url: str, image: str = "ankle_boot.png") -> requests.Response:
    return requests.post(
        f"{gateway_url}/v1/predict",
        data=(IMAGES / image).read_bytes(),
        headers={"Content-Type": "image/png"},
        timeout=30,
    )


def assert_ankle_boot(resp: requests.Response) -> None:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_name"] == MODEL_NAME and body["model_version"] == 1
    (pred,) = body["predictions"]
    assert len(pred["probabilities"]) == 10
    assert pred["label"] == "Ankle boot"


class Stack:
    """A model server and a gateway started from a manifest's commands."""

    def __init__(self, ms, gw, endpoints):
        self.modelserver, self.gateway, self.endpoints = ms, gw, endpoints


@pytest.fixture(scope="module")
def compose_stack(exported_model: Path, tmp_path_factory) -> Iterator[Stack]:
    compose = yaml.safe_load(COMPOSE_FILES[0].read_text())
    grpc, rest, http = free_ports(3)
    local = {"tfserving": {8500: grpc, 8501: rest}, "gateway": {8080: http}}
    ms, gw, _ = compose_commands(
        compose,
        model_root=exported_model.parent,
        workdir=tmp_path_factory.mktemp("compose"),
        local_ports=local,
    )
    servers = start_pair(ms, gw, model_name=MODEL_NAME)
    endpoints = {(svc, c): p for svc, ports in local.items() for c, p in ports.items()}
    try:
        yield Stack(*servers, endpoints)
    finally:
        for s in reversed(servers):
            s.close()


def test_compose_commands_serve_predictions(compose_stack):
    ms, gw = compose_stack.modelserver, compose_stack.gateway
    # exactly the compose command, translated: nothing added, nothing dropped
    compose = yaml.safe_load(COMPOSE_FILES[0].read_text())
    flags = [a.split("=")[0] for a in ms.proc.args[3:]]
    assert flags == [a.split("=")[0] for a in compose["services"]["tfserving"]["command"]]
    for image in ("ankle_boot.png", "ankle_boot.png"):
        assert_ankle_boot(predict(gw.url, image))
    status = requests.get(f"{ms.url}/v1/models/{MODEL_NAME}", timeout=5).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    # --enable_batching and the batching config took effect: the batcher ran the model
    text = requests.get(f"{ms.url}/monitoring/prometheus/metrics", timeout=5).text
    assert re.search(
        r'^:convserve:modelserver:batch_size_count\{model_name="fashion_mnist"\} [1-9]', text, re.M
    ), text


def test_a_typo_in_a_manifest_flag_fails(exported_model, tmp_path):
    compose = yaml.safe_load(COMPOSE_FILES[0].read_text())
    cmd = compose["services"]["tfserving"]["command"]
    cmd[cmd.index("--enable_batching=true")] = "--enable_bathcing=true"
    grpc, rest, http = free_ports(3)
    ms, gw, _ = compose_commands(
        compose,
        model_root=exported_model.parent,
        workdir=tmp_path,
        local_ports={"tfserving": {8500: grpc, 8501: rest}, "gateway": {8080: http}},
    )
    with pytest.raises(StartError, match="unrecognized arguments: --enable_bathcing=true"):
        start_pair(ms, gw, model_name=MODEL_NAME, timeout=60)


def test_k8s_commands_serve_predictions_and_export_the_dashboard_metrics(exported_model, tmp_path):
    objects = render(KUSTOMIZATIONS["base"])
    grpc, rest, http = free_ports(3)
    ms, gw = k8s_commands(
        objects,
        model_root=exported_model.parent,
        workdir=tmp_path,
        local_ports={"tfserving": {8500: grpc, 8501: rest}, "gateway": {8080: http}},
    )
    # the config files the model server reads are the rendered ConfigMap's
    assert any(a.startswith(f"--model_config_file={tmp_path}/etc/tfserving/") for a in ms.argv)
    servers = start_pair(ms, gw, model_name=MODEL_NAME)
    try:
        modelserver, gateway = servers
        assert_ankle_boot(predict(gateway.url))
        live = exported_names(
            requests.get(f"{modelserver.url}/monitoring/prometheus/metrics", timeout=5).text
        )
        modelserver.stop()  # the backend goes away: the gateway answers 503 and counts why
        resp = predict(gateway.url)
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "backend_unavailable"
        live |= exported_names(requests.get(f"{gateway.url}/metrics", timeout=5).text)
    finally:
        for s in reversed(servers):
            s.close()
    used = set().union(*map(metric_names, dashboard_exprs()))
    assert {"gateway_requests_total", ":tensorflow:serving:request_count"} <= used
    assert used <= live, used - live
    alerting = set().union(*map(metric_names, alert_exprs().values())) - {"up"}
    assert alerting <= live, alerting - live


# --- Prometheus ----------------------------------------------------------------------------------
def _query(prom_url: str, expr: str) -> dict:
    resp = requests.get(f"{prom_url}/api/v1/query", params={"query": expr}, timeout=10)
    return resp.json()


def _wait_value(prom_url: str, expr: str, minimum: float, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        result = _query(prom_url, expr)["data"]["result"]
        if result:
            value = float(result[0]["value"][1])
            if value >= minimum:
                return value
        time.sleep(0.5)
    raise AssertionError(f"{expr} = {value}, expected >= {minimum}")


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}


def test_prometheus_scrapes_the_stack_with_the_alert_rules(compose_stack, tmp_path):
    tool("prometheus")
    (port,) = free_ports(1)
    config = local_prometheus_config(
        PROMETHEUS_CONFIG, compose_stack.endpoints, scrape_interval="1s"
    )
    with start_prometheus(config, port, tmp_path / "prom") as prom:
        before = _query(prom.url, "up")  # let a first scrape land
        assert before["status"] == "success"
        for _ in range(TRAFFIC):
            assert predict(compose_stack.gateway.url).status_code == 200
        _wait_value(prom.url, 'min(up{job=~"gateway|tfserving"})', 1)
        # the module's earlier tests sent predictions too: at least TRAFFIC
        _wait_value(
            prom.url,
            'sum(gateway_requests_total{job="gateway",endpoint="/v1/predict",status="200"})',
            TRAFFIC,
        )
        _wait_value(
            prom.url,
            f'sum(:tensorflow:serving:request_count{{job="tfserving",model_name="{MODEL_NAME}",status="OK"}})',
            TRAFFIC,
        )
        rules = requests.get(f"{prom.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        loaded = {r["name"]: r for g in rules for r in g["rules"]}
        assert set(loaded) == set(alert_exprs())
        for name in loaded:
            assert loaded[name]["health"] in ("ok", "unknown"), loaded[name]
        # every dashboard and alert query is valid PromQL for this server
        for expr in [*dashboard_exprs(), *alert_exprs().values()]:
            answer = _query(prom.url, expr.replace("$__rate_interval", "1m"))
            assert answer["status"] == "success", (expr, answer)
        # the stack is healthy: no alert is firing
        firing = [r["name"] for r in loaded.values() if r["state"] == "firing"]
        assert firing == []


# --- Grafana dashboard vs live /metrics ------------------------------------------------------------
_NAME = re.compile(r"(?<![\w:\"'$])([A-Za-z_:][A-Za-z0-9_:]*)\s*(?=\{|\[|\)|\s|$)")
_PROMQL_WORDS = {
    "sum", "rate", "by", "max", "min", "avg", "histogram_quantile", "ignoring", "group_left",
    "on", "without", "or", "and", "unless", "le", "increase", "count",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names of a PromQL expression (label matchers and grouping labels removed)."""
    stripped = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    stripped = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", stripped)
    names = {m for m in _NAME.findall(stripped) if m not in _PROMQL_WORDS}
    return {n for n in names if not re.fullmatch(r"[0-9.e]+", n)}


def exported_names(text: str) -> set[str]:
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"
    }


def test_metric_name_extraction():
    expr = 'sum by (le) (rate(a_bucket{job="x",le="1"}[5m])) / ignoring(reason) group_left sum(rate(:b:c{d="e"}[1m]))'
    assert metric_names(expr) == {"a_bucket", ":b:c"}


# --- the gateway image's gRPC path without TensorFlow -------------------------------------------
def _requirement_closure(names: list[str]) -> list[metadata.Distribution]:
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        req = Requirement(todo.pop())
        key = req.name.lower().replace("_", "-")
        if key in seen:
            continue
        dist = metadata.distribution(req.name)
        seen[key] = dist
        for dep in dist.requires or []:
            r = Requirement(dep)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(str(r.name))
    return list(seen.values())


def _link_distributions(dists: list[metadata.Distribution], dest: Path) -> None:
    """Symlink each distribution's files (as its RECORD lists them) into ``dest``."""
    for dist in dists:
        for f in dist.files or []:
            if f.parts[0] == ".." or "__pycache__" in f.parts:
                continue
            src = Path(dist.locate_file(f))
            if src.is_file():
                (dest / f).parent.mkdir(parents=True, exist_ok=True)
                if not (dest / f).exists():
                    (dest / f).symlink_to(src)


def test_gateway_grpc_path_runs_with_only_the_bundled_protos(compose_stack, tmp_path):
    lines = (ROOT / "serving" / "gateway" / "requirements.txt").read_text().splitlines()
    names = [line.split("==")[0] for line in lines if line and not line.startswith("#")]
    dists = _requirement_closure(names)
    assert not any(d.metadata["Name"].lower().startswith(("tensorflow", "keras")) for d in dists)
    site = tmp_path / "site"
    _link_distributions(dists, site)
    protos = tmp_path / "protos"
    copied = protos_bundle.bundle(protos)
    assert Path("tensorflow/core/framework/tensor_pb2.py") in copied
    assert not (protos / "tensorflow" / "python").exists()
    # -S: no site-packages (no venv, no .pth files); only the source, the protos and the deps.
    env = {"PYTHONPATH": f"{ROOT}:{protos}:{site}", "PYTHONNOUSERSITE": "1"}
    probe = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "import importlib.util\n"
            "assert importlib.util.find_spec('keras') is None\n"
            "assert importlib.util.find_spec('tensorflow.python') is None\n"
            "import tensorflow\n",
        ],
        env={**env, "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 1, probe.stdout + probe.stderr
    assert (
        "ImportError: this environment holds TensorFlow's generated protobuf modules"
        in probe.stderr
    )
    (port,) = free_ports(1)
    grpc_target = f"127.0.0.1:{compose_stack.modelserver.ports['grpc']}"
    with launch(
        "gateway-no-tf",
        [sys.executable, "-S", "-m", "serving.gateway", "--port", str(port)],
        ready=lambda s: http_ok(f"{s.url}/readyz"),
        ports={"http": port},
        env={**env, "GATEWAY_BACKEND": f"grpc://{grpc_target}", "GATEWAY_HOST": "127.0.0.1"},
        strip_env_prefixes=("GATEWAY_", "PROMETHEUS_MULTIPROC_DIR", "PYTHON"),
        timeout=60,
    ) as gw:
        assert_ankle_boot(predict(gw.url))
