"""The deployment files pass the real validators: hadolint, the compose spec, kustomize +
kubernetes-validate, promtool (config, rules and the alert unit tests), Grafana's JSON."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from serving.gateway.config import GatewayConfig
from tests.support.deploy import (
    COMPOSE_FILES,
    DOCKERFILES,
    K8S,
    KUSTOMIZATIONS,
    MONITORING,
    SERVING_CONFIG,
    container,
    env_of,
    find,
    render,
    run_tool,
    tool,
)

PROM = MONITORING / "prometheus"
GRAFANA = MONITORING / "grafana"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_accepts_dockerfile(dockerfile):
    result = run_tool(tool("hadolint"), "--failure-threshold", "info", str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_files_match_the_compose_spec():
    result = run_tool(
        tool("check-jsonschema"),
        "--builtin-schema",
        "vendor.compose-spec",
        *map(str, COMPOSE_FILES),
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_kustomization_renders_and_validates_strictly(name, tmp_path):
    objects = render(KUSTOMIZATIONS[name])
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "Deployment", "Service", "Job", "ConfigMap"} <= kinds
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert {"PersistentVolumeClaim"} <= kinds
    rendered = tmp_path / f"{name}.yaml"
    rendered.write_text(yaml.safe_dump_all(objects))
    result = run_tool(tool("kubernetes-validate"), "--strict", "--quiet", str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr


def test_api_keys_component_mounts_the_secret_file_the_gateway_reads(tmp_path):
    # kustomize takes relative paths only: a throwaway overlay of base + the component.
    rel = os.path.relpath(K8S, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{rel}/base]\ncomponents: [{rel}/components/api-keys]\n"
    )
    objects = render(tmp_path)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(objects))
    result = run_tool(tool("kubernetes-validate"), "--strict", "--quiet", str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr
    dep = find(objects, "Deployment", "gateway")
    gw = container(dep, "gateway")
    env = env_of(gw)
    cfg = GatewayConfig.from_env(env)  # the names are config fields, the value a file path
    mount = {m["name"]: m for m in gw["volumeMounts"]}["api-keys"]
    assert mount["readOnly"] is True
    assert os.path.dirname(cfg.api_keys_file) == mount["mountPath"]
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["api-keys"]["secret"]["secretName"] == "gateway-api-keys"
    assert not any(k.startswith("GATEWAY_API_KEYS") and k != "GATEWAY_API_KEYS_FILE" for k in env)


def test_kubernetes_validate_rejects_an_unknown_field(tmp_path):
    # The validator really runs in strict mode: a misspelt field fails.
    objects = render(KUSTOMIZATIONS["base"])
    dep = find(objects, "Deployment", "gateway")
    dep["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"tcpSocket": {"port": 1}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(dep))
    result = run_tool(tool("kubernetes-validate"), "--strict", "--quiet", str(bad))
    assert result.returncode != 0


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_rendered_configmap_is_serving_config(name):
    """k8s/base/tfserving-config/ holds copies (kustomize's load restrictor): they must not drift."""
    cm = find(render(KUSTOMIZATIONS[name]), "ConfigMap", "tfserving-config")
    expected = {p.name: p.read_text() for p in sorted(SERVING_CONFIG.glob("*.config"))}
    assert cm["data"] == expected


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-k8s.yml"])
def test_promtool_checks_config_and_rules(config):
    result = run_tool(tool("promtool"), "check", "config", str(PROM / config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_promtool_checks_rules():
    result = run_tool(tool("promtool"), "check", "rules", str(PROM / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout


def test_alert_rule_unit_tests_pass():
    result = run_tool(tool("promtool"), "test", "rules", str(PROM / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test():
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    fired = {
        t["alertname"]
        for case in tests["tests"]
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    assert alerts == {
        "GatewayHighErrorRatio",
        "GatewayHighLatencyP99",
        "BackendUnavailable",
        "NoModelVersionAvailable",
    }
    assert fired == alerts


def test_grafana_provisioning_points_at_the_dashboard_folder():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert (source["type"], source["uid"], source["url"]) == (
        "prometheus",
        "prometheus",
        "http://prometheus:9090",
    )
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "convserve.yml").read_text()
    )
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load(COMPOSE_FILES[0].read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./serving/monitoring/grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_grafana_dashboard_parses_and_uses_the_provisioned_datasource():
    dash = json.loads((GRAFANA / "dashboards" / "convserve.json").read_text())
    assert dash["uid"] == "convserve"
    titles = [p["title"] for p in dash["panels"]]
    assert len(titles) == len(set(titles)) >= 6
    for panel in dash["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
