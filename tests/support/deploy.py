"""Helpers for the deployment tests: validators, rendered k8s manifests, their commands.

- `tool(name)`: path of a validator (the venv's bin folder first, then ``PATH``); a missing one
  fails the test under ``CI`` and skips it elsewhere.
- `render(path)`: ``kubectl kustomize`` output as a list of objects.
- `k8s_commands(objects, ...)`: the TF Serving and gateway containers of rendered manifests as
  local commands, translated like ``loadtest.stack`` translates docker-compose.yml.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from loadtest.stack import (
    GATEWAY_DOCKERFILE,
    LocalCommand,
    ManifestError,
    Translation,
    dockerfile_env,
    dockerfile_instruction,
    modelserver_command,
    python_command,
)
from tests.support.ci import missing

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUSTOMIZATIONS = {
    "base": K8S / "base",
    "gpu": K8S / "overlays" / "gpu",
    "local": K8S / "overlays" / "local",
}
COMPOSE_FILES = (ROOT / "docker-compose.yml", ROOT / "docker-compose.gpu.yml")
DOCKERFILES = (
    ROOT / "training" / "Dockerfile",
    ROOT / "serving" / "gateway" / "Dockerfile",
    ROOT / "loadtest" / "Dockerfile",
)
MONITORING = ROOT / "serving" / "monitoring"
SERVING_CONFIG = ROOT / "serving" / "config"


def tool(name: str) -> str:
    """The executable ``name``: next to this interpreter, else on PATH (fail in CI, else skip)."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        missing(f"{name} is not installed (.ci/run installs it)")
    return found


def run_tool(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a validator; the caller asserts on ``returncode`` (output kept for the message)."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def render(path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize path`` as a list of objects (fails the test if it does not render)."""
    result = run_tool(tool("kubectl"), "kustomize", str(path))
    assert result.returncode == 0, f"kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The object of ``kind`` named ``name`` (kustomize may add a hash suffix to ConfigMaps)."""
    for obj in objects:
        if obj["kind"] == kind and (
            obj["metadata"]["name"] == name or obj["metadata"]["name"].startswith(name + "-")
        ):
            return obj
    raise AssertionError(f"no {kind} {name} in the rendered manifests")


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Deployment/Job/StatefulSet/DaemonSet."""
    return obj["spec"]["template"]["spec"]


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Objects that run pods."""
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    """The container ``name`` of a workload."""
    for c in pod_spec(obj)["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"{obj['metadata']['name']} has no container {name}")


def container_port(c: dict[str, Any], target: int | str) -> int:
    """A Service targetPort (number or name) resolved against a container's ports."""
    for p in c.get("ports", []):
        if target in (p["containerPort"], p.get("name")):
            return int(p["containerPort"])
    raise AssertionError(f"container {c['name']} declares no port {target!r}")


def service_endpoints(
    objects: list[dict[str, Any]], local: Mapping[str, Mapping[int, int]]
) -> dict[tuple[str, int], int]:
    """(Service name, port) → local port, through targetPort and the selected container.

    ``local`` maps a Deployment name to {container port: local port}.
    """
    out = {}
    for svc in (o for o in objects if o["kind"] == "Service"):
        selector = svc["spec"].get("selector", {})
        for dep in (o for o in objects if o["kind"] == "Deployment"):
            labels = dep["spec"]["template"]["metadata"].get("labels", {})
            if not selector or any(labels.get(k) != v for k, v in selector.items()):
                continue
            if dep["metadata"]["name"] not in local:
                continue
            c = pod_spec(dep)["containers"][0]
            for port in svc["spec"]["ports"]:
                cport = container_port(c, port.get("targetPort", port["port"]))
                out[(svc["metadata"]["name"], int(port["port"]))] = local[dep["metadata"]["name"]][
                    cport
                ]
    return out


def env_of(c: dict[str, Any]) -> dict[str, str]:
    """A container's literal ``env`` (``valueFrom`` is not used by these manifests)."""
    env = {}
    for item in c.get("env", []):
        if "value" not in item:
            raise ManifestError(f"env {item['name']} of {c['name']} is not a literal value")
        env[item["name"]] = str(item["value"])
    return env


def mounts_of(
    objects: list[dict[str, Any]], workload: dict[str, Any], c: dict[str, Any]
) -> dict[str, tuple[str, Any]]:
    """mountPath → ("pvc", claim) | ("configmap", data) | ("emptyDir", None)."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    out = {}
    for m in c.get("volumeMounts", []):
        vol = volumes[m["name"]]
        if "persistentVolumeClaim" in vol:
            out[m["mountPath"]] = ("pvc", vol["persistentVolumeClaim"]["claimName"])
        elif "configMap" in vol:
            data = find(objects, "ConfigMap", vol["configMap"]["name"])["data"]
            out[m["mountPath"]] = ("configmap", data)
        else:
            out[m["mountPath"]] = ("emptyDir", None)
    return out


def k8s_commands(
    objects: list[dict[str, Any]],
    *,
    model_root: Path,
    workdir: Path,
    local_ports: Mapping[str, Mapping[int, int]],
) -> tuple[LocalCommand, LocalCommand]:
    """The tfserving and gateway Deployments as local commands (see `loadtest.stack`).

    The models PVC becomes ``model_root``; a ConfigMap volume becomes a folder holding its
    rendered data (container paths inside rewritten); Service names resolve through their
    ports to the local ports in ``local_ports`` (Deployment → {container port: local port}).
    """
    endpoints = service_endpoints(objects, local_ports)
    tfs_dep = find(objects, "Deployment", "tfserving")
    tfs = container(tfs_dep, "tfserving")
    paths: dict[str, Path] = {}
    configmaps: dict[str, Mapping[str, str]] = {}
    for mount, (kind, ref) in mounts_of(objects, tfs_dep, tfs).items():
        if kind == "pvc":
            paths[mount] = model_root
        elif kind == "configmap":
            configmaps[mount] = ref
    probe = Translation(paths=dict(paths))
    for mount, data in configmaps.items():
        folder = workdir / mount.strip("/")
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in data.items():
            (folder / name).write_text(probe.text(text))
        paths[mount] = folder
    tfs_ports = {int(p["containerPort"]) for p in tfs.get("ports", [])}
    missing = tfs_ports - set(local_ports["tfserving"])
    if missing:
        raise ManifestError(f"no local port for tfserving's container ports {sorted(missing)}")
    tfs_t = Translation(paths, endpoints, dict(local_ports["tfserving"]))
    ms = LocalCommand(
        "modelserver",
        tfs_t.argv(modelserver_command(tfs.get("command", []), tfs.get("args", []))),
        tfs_t.env(env_of(tfs)),
    )
    gw = container(find(objects, "Deployment", "gateway"), "gateway")
    command = list(gw.get("command") or dockerfile_instruction(GATEWAY_DOCKERFILE, "ENTRYPOINT"))
    command += list(gw.get("args", []))
    gw_t = Translation({}, endpoints, dict(local_ports["gateway"]))
    env = {**dockerfile_env(GATEWAY_DOCKERFILE, "GATEWAY_"), **env_of(gw)}
    return ms, LocalCommand("gateway", python_command(command), gw_t.env(env))
