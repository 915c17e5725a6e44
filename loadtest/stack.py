"""docker-compose.yml's topology as local processes, from the manifests' own command lines.

``make stack`` (``python -m loadtest.stack``) runs, without Docker: ``serving.modelserver`` with
exactly the flags docker-compose.yml gives ``tensorflow_model_server``, the gateway with exactly
the compose service's ``GATEWAY_*`` environment and the image's ENTRYPOINT, and Prometheus
(when the ``prometheus`` binary is installed) with serving/monitoring/prometheus/prometheus.yml.
Ctrl-C stops them all::

    python -m loadtest.stack                        # model from ./models/fashion_mnist
    python -m loadtest.stack --models /abs/models --no-prometheus

Only three things are translated, by `Translation`, and nothing else is touched (a typo in a
flag, port or variable name fails here as it would in a container):

- container paths → local paths (a volume's target → its source; files of a mounted config
  folder are copied with the container paths inside them rewritten, e.g. models.config's
  ``base_path``);
- ``service:port`` → ``127.0.0.1:<local port>`` (compose service names / k8s Services);
- a value equal to a port the container declares → its local port; ``0.0.0.0`` → ``127.0.0.1``.

The tests use the same translation on docker-compose.yml and on the rendered k8s manifests.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loadtest.servers import ROOT, Server, StartError, http_ok, launch, model_available
from serving.cli_numbers import PORT

COMPOSE_FILE = ROOT / "docker-compose.yml"
GATEWAY_DOCKERFILE = ROOT / "serving" / "gateway" / "Dockerfile"
PROMETHEUS_CONFIG = ROOT / "serving" / "monitoring" / "prometheus" / "prometheus.yml"
TFSERVING_BINARY = "/usr/bin/tensorflow_model_server"
LOOPBACK = "127.0.0.1"
BIND_ALL = "0.0.0.0"

_HOST_PORT = re.compile(r"(?P<host>[A-Za-z][A-Za-z0-9_.-]*):(?P<port>\d{1,5})")
_FLAG_VALUE = re.compile(r"^(?P<flag>--[A-Za-z0-9_-]+=)(?P<value>.*)$")


class ManifestError(ValueError):
    """A manifest lacks something the local run needs (a service, a command, a mount)."""


@dataclass(frozen=True)
class Translation:
    """How names inside containers become local ones (see the module docstring)."""

    paths: Mapping[str, Path] = field(default_factory=dict)  # container prefix -> local path
    endpoints: Mapping[tuple[str, int], int] = field(default_factory=dict)  # (host, port) -> port
    ports: Mapping[int, int] = field(default_factory=dict)  # declared container port -> local

    def path(self, value: str) -> str:
        """``value`` with a leading container path prefix replaced by its local path."""
        for prefix in sorted(self.paths, key=len, reverse=True):
            if value == prefix or value.startswith(prefix.rstrip("/") + "/"):
                return str(self.paths[prefix]) + value[len(prefix.rstrip("/")) :]
        return value

    def value(self, value: str) -> str:
        """Translate one argument or environment value."""
        m = _FLAG_VALUE.match(value)
        if m:
            return m["flag"] + self.value(m["value"])
        if value == BIND_ALL:
            return LOOPBACK
        if value.isdigit() and int(value) in self.ports:
            return str(self.ports[int(value)])

        def endpoint(match: re.Match[str]) -> str:
            key = (match["host"], int(match["port"]))
            if key not in self.endpoints:
                return match[0]
            return f"{LOOPBACK}:{self.endpoints[key]}"

        return self.path(_HOST_PORT.sub(endpoint, value))

    def argv(self, args: Sequence[str]) -> list[str]:
        """Translate every argument."""
        return [self.value(a) for a in args]

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """Translate every value (names are never changed)."""
        return {k: self.value(v) for k, v in env.items()}

    def text(self, text: str) -> str:
        """Rewrite quoted container paths inside a config file's text."""

        def quoted(match: re.Match[str]) -> str:
            return match[1] + self.path(match[2]) + match[1]

        return re.sub(r"([\"'])(/[^\"']*)\1", quoted, text)


def copy_config_dir(src: Path, dest: Path, translation: Translation) -> Path:
    """Copy the files of a mounted config folder with their container paths rewritten."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file():
            (dest / f.name).write_text(translation.text(f.read_text()))
    return dest


# --- docker-compose.yml -------------------------------------------------------------------------
def load_yaml(path: Path) -> Any:
    """Parse one YAML document."""
    with open(path) as f:
        return yaml.safe_load(f)


def compose_service(compose: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """One service of a parsed compose file."""
    try:
        return compose["services"][name]
    except KeyError:
        raise ManifestError(f"docker-compose.yml has no service {name!r}") from None


def compose_env(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` (mapping or list form) as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def compose_container_ports(service: Mapping[str, Any]) -> list[int]:
    """The container ports a service declares (``expose`` and the target side of ``ports``)."""
    ports = [int(p) for p in service.get("expose", [])]
    for p in service.get("ports", []):
        ports.append(int(str(p).rsplit(":", 1)[-1].split("/")[0]))
    return ports


def compose_volumes(service: Mapping[str, Any], base: Path) -> dict[str, Path]:
    """Bind mounts of a service: container path -> host path (named volumes are skipped)."""
    out = {}
    for v in service.get("volumes", []):
        parts = str(v).split(":")
        source, target = parts[0], parts[1]
        if source.startswith((".", "/")):
            out[target] = (base / source).resolve()
    return out


def dockerfile_instruction(path: Path, keyword: str) -> list[str]:
    """The exec-form value of the last ``keyword`` instruction (ENTRYPOINT/CMD) of ``path``."""
    found = None
    for line in path.read_text().splitlines():
        if line.startswith(keyword + " "):
            found = line[len(keyword) + 1 :].strip()
    if found is None:
        raise ManifestError(f"{path} has no {keyword}")
    if not found.startswith("["):
        raise ManifestError(f"{path}: {keyword} is not in exec form: {found}")
    return list(json.loads(found))


def dockerfile_env(path: Path, prefix: str) -> dict[str, str]:
    """``ENV`` settings of the final stage whose names start with ``prefix``."""
    text = path.read_text().replace("\\\n", " ")
    stages = re.split(r"^FROM ", text, flags=re.M)
    env: dict[str, str] = {}
    for line in stages[-1].splitlines():
        if line.startswith("ENV "):
            for item in shlex.split(line[4:]):
                key, _, value = item.partition("=")
                if key.startswith(prefix):
                    env[key] = value
    return env


def python_command(argv: Sequence[str]) -> list[str]:
    """An image's ``python ...`` command with this interpreter."""
    if not argv or argv[0] != "python":
        raise ManifestError(f"expected a 'python ...' command, got {list(argv)}")
    return [sys.executable, *argv[1:]]


def modelserver_command(entrypoint: Sequence[str], args: Sequence[str]) -> list[str]:
    """TF Serving's command line with ``serving.modelserver`` in place of the binary."""
    if list(entrypoint) != [TFSERVING_BINARY]:
        raise ManifestError(f"TF Serving must run {TFSERVING_BINARY} directly, got {entrypoint}")
    return [sys.executable, "-m", "serving.modelserver", *args]


@dataclass
class LocalCommand:
    """A process to start: its name, argv and (extra) environment."""

    name: str
    argv: list[str]
    env: dict[str, str]


def compose_commands(
    compose: Mapping[str, Any],
    *,
    model_root: Path,
    workdir: Path,
    local_ports: Mapping[str, Mapping[int, int]],
    base: Path = ROOT,
) -> tuple[LocalCommand, LocalCommand, Translation]:
    """The tfserving and gateway services of a compose file as local commands.

    ``local_ports`` maps service name → {container port: local port}; ``model_root`` replaces
    the folder mounted at ``/models``; config folders are copied below ``workdir``.
    """
    tfs, gw = compose_service(compose, "tfserving"), compose_service(compose, "gateway")
    endpoints = {
        (svc, cport): lport for svc, ports in local_ports.items() for cport, lport in ports.items()
    }
    mounts = compose_volumes(tfs, base)
    if "/models" not in mounts:
        raise ManifestError("the tfserving service mounts no /models volume")
    paths: dict[str, Path] = {"/models": model_root}
    probe = Translation(paths={"/models": model_root})
    for target, source in mounts.items():
        if target != "/models" and source.is_dir():
            paths[target] = copy_config_dir(source, workdir / target.strip("/"), probe)
        elif target != "/models":
            paths[target] = source
    tfs_t = Translation(paths, endpoints, dict(local_ports["tfserving"]))
    for cport in compose_container_ports(tfs):
        if cport not in local_ports["tfserving"]:
            raise ManifestError(f"no local port for tfserving's container port {cport}")
    entrypoint = tfs.get("entrypoint")
    entrypoint = [entrypoint] if isinstance(entrypoint, str) else list(entrypoint or [])
    ms = LocalCommand(
        "modelserver",
        tfs_t.argv(modelserver_command(entrypoint, [str(a) for a in tfs.get("command", [])])),
        tfs_t.env(compose_env(tfs)),
    )
    gw_t = Translation({}, endpoints, dict(local_ports["gateway"]))
    env = {**dockerfile_env(GATEWAY_DOCKERFILE, "GATEWAY_"), **compose_env(gw)}
    command = dockerfile_instruction(GATEWAY_DOCKERFILE, "ENTRYPOINT")
    gateway = LocalCommand("gateway", python_command(command), gw_t.env(env))
    return ms, gateway, tfs_t


def flag(argv: Sequence[str], name: str) -> str:
    """The value of ``--name=value`` in ``argv`` (ManifestError when absent)."""
    for a in argv:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    raise ManifestError(f"the command line has no --{name}=...: {list(argv)}")


def start_pair(
    ms: LocalCommand, gateway: LocalCommand, *, model_name: str, timeout: float = 90.0
) -> tuple[Server, Server]:
    """Start the model server, then the gateway, through the project launcher."""
    ms_ports = {"grpc": int(flag(ms.argv, "port")), "rest": int(flag(ms.argv, "rest_api_port"))}
    server = launch(
        "modelserver",
        ms.argv,
        ready=lambda s: model_available(s.url, model_name),
        ports=ms_ports,
        env=ms.env,
        timeout=timeout,
    )
    try:
        gw = launch(
            "gateway",
            gateway.argv,
            ready=lambda s: http_ok(f"{s.url}/readyz"),
            ports={"http": int(gateway.env["GATEWAY_PORT"])},
            env=gateway.env,
            timeout=timeout,
            strip_env_prefixes=("GATEWAY_", "PROMETHEUS_MULTIPROC_DIR"),
        )
    except BaseException:
        server.close()
        raise
    return server, gw


# --- Prometheus ---------------------------------------------------------------------------------
def local_prometheus_config(
    src: Path,
    endpoints: Mapping[tuple[str, int], int],
    *,
    scrape_interval: str | None = None,
) -> dict[str, Any]:
    """``src`` with static targets translated to loopback and rule files made absolute."""
    config = load_yaml(src)
    t = Translation({}, endpoints, {})
    for job in config.get("scrape_configs", []):
        for static in job.get("static_configs", []):
            targets = [t.value(target) for target in static["targets"]]
            unmapped = [x for x in targets if not x.startswith(LOOPBACK)]
            if unmapped:
                raise ManifestError(f"job {job['job_name']}: no local process for {unmapped}")
            static["targets"] = targets
    config["rule_files"] = [str((src.parent / r).resolve()) for r in config.get("rule_files", [])]
    if scrape_interval:
        config.setdefault("global", {})["scrape_interval"] = scrape_interval
        config["global"]["evaluation_interval"] = scrape_interval
    return config


def start_prometheus(
    config: Mapping[str, Any], port: int, workdir: Path, *, timeout: float = 60.0
) -> Server:
    """The ``prometheus`` server on 127.0.0.1:``port`` with ``config``."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise StartError(
            "the prometheus binary is not installed (Debian: apt-get install prometheus)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return launch(
        "prometheus",
        [
            binary,
            f"--config.file={path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
        ],
        ready=lambda s: http_ok(f"{s.url}/-/ready"),
        ports={"http": port},
        timeout=timeout,
    )


# --- make stack ---------------------------------------------------------------------------------
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.stack",
        description="Run docker-compose.yml's model server, gateway and Prometheus as local "
        "processes (no Docker), with the manifests' own flags and settings. Ctrl-C stops them.",
    )
    p.add_argument(
        "--models",
        type=Path,
        default=ROOT / "models",
        help="local folder for the /models volume (holds fashion_mnist/<version>/; default ./models)",
    )
    p.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    p.add_argument("--prometheus-port", type=PORT, default=9090, help="Prometheus port (9090)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start the stack on the manifests' ports, wait for Ctrl-C or a process exit, stop all."""
    from serving.contract import list_versions
    from serving.gateway.config import GatewayConfig

    args = _parse_args(argv)
    compose = load_yaml(COMPOSE_FILE)
    model_name = compose_env(compose_service(compose, "gateway")).get(
        "GATEWAY_MODEL_NAME", GatewayConfig().model_name
    )
    if not list_versions(args.models / model_name):
        print(
            f"loadtest.stack: no model version in {args.models / model_name} (make quick-model)",
            file=sys.stderr,
        )
        return 2
    same = {
        svc: {p: p for p in compose_container_ports(compose_service(compose, svc))}
        for svc in ("tfserving", "gateway")
    }
    workdir = Path(tempfile.mkdtemp(prefix="convserve-stack-"))
    servers: list[Server] = []
    stop = {"now": False}
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C or `kill`: stop everything cleanly
        signal.signal(sig, lambda *_: stop.update(now=True))
    try:
        ms, gw, _ = compose_commands(
            compose, model_root=args.models.resolve(), workdir=workdir, local_ports=same
        )
        servers += start_pair(ms, gw, model_name=model_name)
        print(f"model server: gRPC {servers[0].target}, REST {servers[0].url}")
        print(f"gateway:      {servers[1].url}  (POST /v1/predict, GET /metrics)")
        if not args.no_prometheus:
            if shutil.which("prometheus") is None:
                print("prometheus:   not installed, skipped (apt-get install prometheus)")
            else:
                endpoints = {(svc, p): p for svc, ports in same.items() for p in ports}
                config = local_prometheus_config(PROMETHEUS_CONFIG, endpoints)
                servers.append(start_prometheus(config, args.prometheus_port, workdir / "prom"))
                print(f"prometheus:   {servers[-1].url}")
        print("Ctrl-C stops everything.")
        while not stop["now"]:
            for s in servers:
                if s.proc.poll() is not None:
                    print(f"{s.name} exited with {s.proc.returncode}:\n{s.output()[-2000:]}")
                    return 1
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    except (StartError, ManifestError) as exc:
        print(f"loadtest.stack: {exc}", file=sys.stderr)
        return 1
    finally:
        for s in reversed(servers):
            s.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
