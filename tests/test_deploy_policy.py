"""Policy over the Dockerfiles, docker-compose.yml and the rendered k8s manifests.

Every container is probed, bounded and locked down with a pinned image; and the names that tie
the pieces together (ports, GATEWAY_* variables, the model name, paths, TF Serving's flags)
agree across compose, k8s, serving/config/*, the monitoring config and the code.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import re
from pathlib import Path, PurePosixPath

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from loadtest.stack import (
    TFSERVING_BINARY,
    compose_env,
    dockerfile_env,
    dockerfile_instruction,
    flag,
)
from serving.gateway.config import GatewayConfig, env_name
from serving.modelserver.config import load_monitoring_config
from serving.modelserver.server import parse_args
from tests.support.deploy import (
    COMPOSE_FILES,
    DOCKERFILES,
    KUSTOMIZATIONS,
    MONITORING,
    ROOT,
    SERVING_CONFIG,
    container,
    container_port,
    env_of,
    find,
    mounts_of,
    pod_spec,
    render,
    workloads,
)

GATEWAY_ENV_NAMES = frozenset(env_name(f.name) for f in dataclasses.fields(GatewayConfig))
DEFAULTS = GatewayConfig()
MODEL_NAME = DEFAULTS.model_name
MODELSERVER_DEFAULTS = parse_args(["--model_base_path=/x"])
GRPC_PORT, REST_PORT = MODELSERVER_DEFAULTS.port, MODELSERVER_DEFAULTS.rest_api_port
PINNED = re.compile(r"^[a-z0-9./_-]+(:[A-Za-z0-9._-]+)?(@sha256:[0-9a-f]{64})?$")


@functools.cache
def _rendered(name: str) -> tuple:
    return tuple(render(KUSTOMIZATIONS[name]))


def rendered(name: str) -> list[dict]:
    """Rendered objects of a kustomization (cached; do not mutate)."""
    return list(_rendered(name))


@functools.cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILES[0].read_text())


@functools.cache
def compose_gpu() -> dict:
    return yaml.safe_load(COMPOSE_FILES[1].read_text())


def assert_pinned(image: str) -> None:
    """A tag other than latest, or a digest."""
    assert PINNED.match(image), image
    name, _, tag = image.partition("@")[0].rpartition(":")
    assert "@sha256:" in image or (name and tag and tag != "latest"), f"unpinned image {image}"


def models_config():
    return text_format.Parse(
        (SERVING_CONFIG / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )


# --- k8s -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_every_container_is_bounded_locked_down_and_pinned(name):
    for w in workloads(rendered(name)):
        spec = pod_spec(w)
        who = f"{name}/{w['kind']}/{w['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, who
        assert spec["securityContext"]["runAsUser"] != 0, who
        assert spec.get("terminationGracePeriodSeconds", 0) >= 10, who
        assert spec.get("automountServiceAccountToken") is False, who
        for c in spec["containers"] + spec.get("initContainers", []):
            where = f"{who}/{c['name']}"
            assert_pinned(c["image"])
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][bound]), where
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            # nothing in a container undoes the pod's non-root setting
            assert sc.get("runAsNonRoot", True) is True, where
            assert sc.get("runAsUser", spec["securityContext"]["runAsUser"]) != 0, where
            assert sc.get("privileged", False) is False, where


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_long_running_containers_are_probed_and_drain(name):
    for w in (o for o in rendered(name) if o["kind"] == "Deployment"):
        spec = pod_spec(w)
        for c in spec["containers"]:
            where = f"{name}/{w['metadata']['name']}/{c['name']}"
            assert "livenessProbe" in c and "readinessProbe" in c, where
            pause = c["lifecycle"]["preStop"]["exec"]["command"]
            assert pause[0] == "sleep", where
            assert spec["terminationGracePeriodSeconds"] > int(pause[1]), where


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_tfserving_runs_the_binary_with_flags_serving_modelserver_accepts(name):
    tfs = container(find(rendered(name), "Deployment", "tfserving"), "tfserving")
    assert tfs["command"] == [TFSERVING_BINARY]
    args = parse_args(tfs["args"])  # exits (SystemExit 2) on an unknown or bad flag
    assert (args.port, args.rest_api_port) == (GRPC_PORT, REST_PORT)
    assert tfs["args"] == compose()["services"]["tfserving"]["command"]
    ports = {p["name"]: p["containerPort"] for p in tfs["ports"]}
    assert ports == {"grpc": GRPC_PORT, "rest": REST_PORT}


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_tfserving_readiness_means_model_available(name):
    tfs = container(find(rendered(name), "Deployment", "tfserving"), "tfserving")
    script = tfs["readinessProbe"]["exec"]["command"][-1]
    assert f"/dev/tcp/127.0.0.1/{flag(tfs['args'], 'rest_api_port')}" in script
    assert f"GET /v1/models/{MODEL_NAME} " in script
    assert "grep -q '\"AVAILABLE\"'" in script
    assert tfs["readinessProbe"]["exec"]["command"][0] == "bash"  # no curl in the image
    compose_check = compose()["services"]["tfserving"]["healthcheck"]["test"][-1]
    assert " ".join(compose_check.split()) == " ".join(script.split())


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_services_name_their_ports_and_reach_the_containers(name):
    objects = rendered(name)
    svc = find(objects, "Service", "tfserving")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {
        "grpc": GRPC_PORT,
        "rest": REST_PORT,
    }
    tfs = container(find(objects, "Deployment", "tfserving"), "tfserving")
    for p in svc["spec"]["ports"]:
        assert container_port(tfs, p["targetPort"]) == p["port"]
    gw_svc = find(objects, "Service", "gateway")
    gw = container(find(objects, "Deployment", "gateway"), "gateway")
    (port,) = gw_svc["spec"]["ports"]
    assert container_port(gw, port["targetPort"]) == port["port"] == DEFAULTS.port
    assert gw["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gw["livenessProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_gateway_env_names_are_config_fields_and_match_compose(name):
    gw = container(find(rendered(name), "Deployment", "gateway"), "gateway")
    env = env_of(gw)
    assert set(env) <= GATEWAY_ENV_NAMES, set(env) - GATEWAY_ENV_NAMES
    assert env == compose_env(compose()["services"]["gateway"])
    GatewayConfig.from_env(env)  # the values parse and validate
    assert env["GATEWAY_BACKEND"] == f"grpc://tfserving:{GRPC_PORT}"
    assert env["GATEWAY_MODEL_NAME"] == MODEL_NAME
    assert int(env["GATEWAY_PORT"]) == DEFAULTS.port


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_models_volume_is_written_by_the_job_and_read_only_for_tfserving(name):
    objects = rendered(name)
    tfs_dep = find(objects, "Deployment", "tfserving")
    tfs = container(tfs_dep, "tfserving")
    mounts = mounts_of(objects, tfs_dep, tfs)
    config = models_config().model_config_list.config[0]
    base = PurePosixPath(config.base_path)
    assert mounts[str(base.parent)] == ("pvc", "models")
    assert all(m["readOnly"] for m in tfs["volumeMounts"] if m["mountPath"] != "/tmp")
    claims = [v for v in pod_spec(tfs_dep)["volumes"] if "persistentVolumeClaim" in v]
    assert all(v["persistentVolumeClaim"]["readOnly"] for v in claims)
    cm_dir = str(PurePosixPath(flag(tfs["args"], "model_config_file")).parent)
    kind, data = mounts[cm_dir]
    assert kind == "configmap"
    for f in ("model_config_file", "monitoring_config_file", "batching_parameters_file"):
        path = PurePosixPath(flag(tfs["args"], f))
        assert str(path.parent) == cm_dir and path.name in data, f
    job = find(objects, "Job", "train-fashion-mnist")
    training = pod_spec(job)["containers"][0]
    job_mounts = mounts_of(objects, job, training)
    assert job_mounts[str(base.parent)] == ("pvc", "models")
    assert training["args"][training["args"].index("--export-dir") + 1] == str(base)


def test_gpu_overlay_swaps_the_image_and_asks_for_a_gpu():
    base = container(find(rendered("base"), "Deployment", "tfserving"), "tfserving")
    gpu = container(find(rendered("gpu"), "Deployment", "tfserving"), "tfserving")
    assert gpu["image"] == base["image"] + "-gpu"
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["args"] == base["args"]
    assert compose_gpu()["services"]["tfserving"]["image"] == gpu["image"]
    assert compose()["services"]["tfserving"]["image"] == base["image"]
    assert env_of(gpu) == compose_env(compose_gpu()["services"]["tfserving"])


def test_network_policy_admits_only_the_gateway_and_prometheus():
    objects = rendered("base")
    policy = find(objects, "NetworkPolicy", "tfserving-ingress")
    tfs_labels = find(objects, "Deployment", "tfserving")["spec"]["template"]["metadata"]["labels"]
    gw_labels = find(objects, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert all(tfs_labels[k] == v for k, v in selector.items())
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    peers = [
        (rule["from"][0]["podSelector"]["matchLabels"], {p["port"] for p in rule["ports"]})
        for rule in policy["spec"]["ingress"]
    ]
    gw_sel, gw_ports = peers[0]
    assert all(gw_labels[k] == v for k, v in gw_sel.items()) and gw_ports == {"grpc", "rest"}
    assert peers[1] == ({"app.kubernetes.io/name": "prometheus"}, {"rest"})
    assert len(peers) == 2


def test_hpa_scales_the_gateway_on_cpu_and_pdb_keeps_one():
    objects = rendered("base")
    hpa = find(objects, "HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = find(objects, "PodDisruptionBudget", "gateway")
    assert pdb["spec"]["minAvailable"] == 1


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_scrape_annotations_name_the_metrics_endpoints(name):
    objects = rendered(name)
    monitoring = load_monitoring_config(SERVING_CONFIG / "monitoring.config")
    assert monitoring.enabled
    expected = {
        "tfserving": (str(REST_PORT), monitoring.path),
        "gateway": (str(DEFAULTS.port), "/metrics"),
    }
    for dep, (port, path) in expected.items():
        ann = find(objects, "Deployment", dep)["spec"]["template"]["metadata"]["annotations"]
        assert (
            ann["prometheus.io/scrape"],
            ann["prometheus.io/port"],
            ann["prometheus.io/path"],
        ) == (
            "true",
            port,
            path,
        )


# --- compose -------------------------------------------------------------------------------------
def test_compose_images_are_pinned_and_services_checked():
    services = compose()["services"]
    for name, svc in services.items():
        assert_pinned(svc["image"])
        assert svc.get("read_only") is True, name
        assert svc.get("cap_drop") == ["ALL"], name
    for name in ("tfserving", "gateway", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name


def _compose_uid(user: str) -> str:
    """The user id of a compose ``user:`` value (``${VAR:-default}`` read as its default)."""
    uid = user.split(":")[0]
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", uid)


def test_compose_services_run_as_non_root_without_privileges():
    services = compose()["services"]
    ours = {svc["image"] for svc in services.values() if "build" in svc}
    for svc in services.values():
        if "build" in svc:  # its Dockerfile's last USER is checked to be non-root below
            assert ROOT / svc["build"]["dockerfile"] in DOCKERFILES, svc["build"]
    for name, svc in services.items():
        assert svc.get("privileged", False) is False, name
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
        if "user" in svc:
            assert _compose_uid(str(svc["user"])) not in ("", "0", "root"), name
        else:  # no user: then the image must be one of ours (non-root USER)
            assert svc["image"] in ours, f"{name}: a third-party image needs an explicit user:"


def test_compose_start_order():
    services = compose()["services"]
    assert services["tfserving"]["depends_on"] == {
        "trainer": {"condition": "service_completed_successfully"}
    }
    assert services["gateway"]["depends_on"] == {"tfserving": {"condition": "service_healthy"}}
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert services["locust-master"]["depends_on"]["gateway"]["condition"] == "service_healthy"
    for name in ("locust-master", "locust-worker"):
        assert services[name]["profiles"] == ["loadtest"]
    assert services["trainer"]["restart"] == "no"


def test_compose_tfserving_runs_the_binary_as_uid_1000_with_a_grace_period():
    tfs = compose()["services"]["tfserving"]
    assert tfs["entrypoint"] == [TFSERVING_BINARY]
    assert tfs["user"] == "1000:1000" and tfs["init"] is True
    assert tfs["stop_grace_period"]
    parse_args(tfs["command"])
    assert {int(p) for p in tfs["expose"]} == {GRPC_PORT, REST_PORT}
    volumes = dict(v.rsplit(":", 1)[0].split(":", 1)[::-1] for v in tfs["volumes"])
    base = PurePosixPath(models_config().model_config_list.config[0].base_path)
    assert volumes[str(base.parent)] == "./models"
    config_dir = str(PurePosixPath(flag(tfs["command"], "model_config_file")).parent)
    assert volumes[config_dir] == "./serving/config"
    for f in ("model_config_file", "monitoring_config_file", "batching_parameters_file"):
        assert (SERVING_CONFIG / PurePosixPath(flag(tfs["command"], f)).name).is_file()


def test_compose_trainer_writes_the_models_volume():
    trainer = compose()["services"]["trainer"]
    base = models_config().model_config_list.config[0].base_path
    assert f"--export-dir {base}" in trainer["command"][0]
    assert f"ls {base}/*/saved_model.pb" in trainer["command"][0]
    assert "./models:/models" in trainer["volumes"]


def test_compose_gateway_env_names_are_config_fields():
    gw = compose()["services"]["gateway"]
    env = compose_env(gw)
    assert set(env) <= GATEWAY_ENV_NAMES, set(env) - GATEWAY_ENV_NAMES
    GatewayConfig.from_env(env)
    assert gw["ports"] == [f"{DEFAULTS.port}:{env['GATEWAY_PORT']}"]
    assert f"127.0.0.1:{env['GATEWAY_PORT']}/readyz" in gw["healthcheck"]["test"][-1]


def test_model_name_agrees_everywhere():
    (config,) = models_config().model_config_list.config
    assert config.name == MODEL_NAME
    assert PurePosixPath(config.base_path).name == MODEL_NAME
    assert compose_env(compose()["services"]["gateway"])["GATEWAY_MODEL_NAME"] == MODEL_NAME


def test_prometheus_targets_are_the_services_ports():
    prom = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())
    monitoring = load_monitoring_config(SERVING_CONFIG / "monitoring.config")
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["gateway"]["static_configs"][0]["targets"] == [f"gateway:{DEFAULTS.port}"]
    assert jobs["gateway"]["metrics_path"] == "/metrics"
    assert jobs["tfserving"]["static_configs"][0]["targets"] == [f"tfserving:{REST_PORT}"]
    assert jobs["tfserving"]["metrics_path"] == monitoring.path
    k8s = yaml.safe_load((MONITORING / "prometheus" / "prometheus-k8s.yml").read_text())
    k8s_jobs = {j["job_name"]: j for j in k8s["scrape_configs"]}
    assert k8s_jobs["tfserving"]["metrics_path"] == monitoring.path
    assert k8s_jobs["tfserving"]["dns_sd_configs"][0]["port"] == REST_PORT
    assert k8s_jobs["gateway"]["dns_sd_configs"][0]["port"] == DEFAULTS.port
    objects = rendered("base")
    for job, svc in (("gateway", "gateway-pods"), ("tfserving", "tfserving-pods")):
        headless = find(objects, "Service", svc)
        assert headless["spec"]["clusterIP"] == "None"
        name = k8s_jobs[job]["dns_sd_configs"][0]["names"][0]
        assert name == f"{svc}.{headless['metadata']['namespace']}.svc.cluster.local"


# --- Dockerfiles ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_pins_bases_runs_as_non_root_in_exec_form(dockerfile):
    text = dockerfile.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    froms = re.findall(r"^FROM (\S+)", text, flags=re.M)
    stages = set(re.findall(r"^FROM \S+ AS (\w+)", text, flags=re.M))
    for image in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], image)
        if image not in stages:
            assert_pinned(image)
    final = text.split("\nFROM ")[-1]
    users = re.findall(r"^USER (\S+)$", final, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    dockerfile_instruction(dockerfile, "ENTRYPOINT")  # exec form, else ManifestError
    for label in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in final


def test_tf_versions_agree():
    """TF Serving's image, the wheels the images unpack and the installed API package."""
    tag = compose()["services"]["tfserving"]["image"].split(":")[1]
    installed = importlib.metadata.version("tensorflow-serving-api")
    assert tag == installed
    for dockerfile in DOCKERFILES[1:]:
        assert f"ARG TF_VERSION={installed}" in dockerfile.read_text()


def test_gateway_image_requirements_are_what_the_tests_run_with():
    lines = (ROOT / "serving" / "gateway" / "requirements.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert not any(name.startswith("tensorflow") for name in pins)
    for name, version in pins.items():
        assert importlib.metadata.version(name) == version, name


def test_gateway_image_defaults_are_config_fields():
    env = dockerfile_env(ROOT / "serving" / "gateway" / "Dockerfile", "GATEWAY_")
    assert set(env) <= GATEWAY_ENV_NAMES
    assert int(env["GATEWAY_PORT"]) == DEFAULTS.port
    assert f"EXPOSE {DEFAULTS.port}" in (ROOT / "serving" / "gateway" / "Dockerfile").read_text()


def test_dockerignore_keeps_models_data_and_venv_out():
    ignored = set(Path(ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "models", "data", "tests"} <= ignored
