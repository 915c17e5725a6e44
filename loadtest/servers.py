"""The one way convserve starts its processes: model server, gateway, peers and floors.

Tests, benchmarks and ``python -m loadtest compare`` all start servers here. Every server
listens on 127.0.0.1 on free ports, writes stdout+stderr to a log file in its own temporary
work directory, and is a context manager that stops it (SIGTERM, then SIGKILL) and removes the
work directory on exit::

    from loadtest.servers import start_gateway, start_modelserver

    with start_modelserver("models/fashion_mnist", "--enable_batching") as ms:
        with start_gateway(f"grpc://{ms.target}", workers=2) as gw:
            requests.post(f"{gw.url}/v1/predict", data=png, headers={...})

Anything else (a peer, a floor) starts through `launch` with its own readiness check::

    server = launch("floor", [sys.executable, "-m", ...], ports={"http": port},
                    ready=lambda s: http_ok(f"{s.url}/readyz"))

A process that exits before it is ready, or is not ready within ``timeout``, raises
`StartError` carrying its log; nothing falls back to anything else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from serving.contract import MODEL_NAME

ROOT = Path(__file__).resolve().parents[1]
POLL_SECONDS = 0.2
# The gateway's gunicorn settings (workers, threads, timeouts from GATEWAY_*), reused for floors.
GUNICORN_CONF = "python:serving.gateway.gunicorn_conf"


class StartError(RuntimeError):
    """A process exited, or was not ready in time; the message carries its log."""


@dataclass
class Server:
    """A running process started by `launch`: its ports, log and work directory.

    ``ports`` names the ports it listens on: ``http`` (gateway, peers, floors), or ``grpc`` and
    ``rest`` (model server). ``metrics_dir`` is the gateway's ``PROMETHEUS_MULTIPROC_DIR``.
    """

    name: str
    proc: subprocess.Popen
    ports: dict[str, int]
    log_path: Path
    workdir: Path
    ready: Callable[[Server], bool] | None = field(default=None, repr=False)
    metrics_dir: Path | None = None

    @property
    def url(self) -> str:
        """HTTP base URL: the ``http`` port, else the model server's ``rest`` port."""
        port = self.ports.get("http", self.ports.get("rest"))
        if port is None:
            raise AttributeError(f"{self.name} has no HTTP port (ports: {self.ports})")
        return f"http://127.0.0.1:{port}"

    @property
    def target(self) -> str:
        """gRPC target ``127.0.0.1:<grpc port>`` (model server)."""
        if "grpc" not in self.ports:
            raise AttributeError(f"{self.name} has no gRPC port (ports: {self.ports})")
        return f"127.0.0.1:{self.ports['grpc']}"

    def output(self) -> str:
        """Everything the process wrote to stdout/stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float) -> None:
        """Poll the readiness check until it passes; `StartError` on exit or timeout."""
        if self.ready is None:
            raise ValueError(f"{self.name} was launched without a readiness check")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise StartError(
                    f"{self.name} exited with {self.proc.returncode} before it was ready:\n"
                    f"{self.output()}"
                )
            if self.ready(self):
                return
            if time.monotonic() > deadline:
                raise StartError(f"{self.name} not ready after {timeout:g}s:\n{self.output()}")
            time.sleep(POLL_SECONDS)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful), wait up to ``timeout`` s, then SIGKILL; return the exit code.

        The process runs in its own session; after it exits, anything it left behind in that
        process group (a peer's worker processes) is killed too.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc.pid)
                self.proc.wait(10)
        _kill_group(self.proc.pid)
        return self.proc.returncode

    def close(self) -> None:
        """Stop the process and delete its work directory (log included)."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(pgid, signal.SIGKILL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that are free right now."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))  # all bound at once, so the OS hands out distinct ports
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def http_ok(url: str) -> bool:
    """``GET url`` answers 200 (False on any other status or a connection error)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def model_available(rest_url: str, model_name: str = MODEL_NAME) -> bool:
    """TF Serving's ``GET /v1/models/<name>`` lists a version in state AVAILABLE."""
    try:
        with urllib.request.urlopen(f"{rest_url}/v1/models/{model_name}", timeout=2) as resp:
            doc = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return any(s.get("state") == "AVAILABLE" for s in doc.get("model_version_status", []))


def launch(
    name: str,
    argv: Sequence[str],
    *,
    ready: Callable[[Server], bool],
    ports: Mapping[str, int],
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] = ROOT,
    timeout: float = 60.0,
    wait: bool = True,
    strip_env_prefixes: Sequence[str] = (),
    metrics_dir: Path | None = None,
    workdir: Path | None = None,
) -> Server:
    """Start ``argv`` and return its `Server` once ``ready(server)`` is True.

    The environment is this process's, minus variables starting with ``strip_env_prefixes``,
    plus ``TF_CPP_MIN_LOG_LEVEL=2``, plus ``env``. With ``wait=False`` the server is returned
    as soon as the process started (call ``server.wait_ready(timeout)`` later). On `StartError`
    the process is stopped and its work directory removed before the error propagates.
    """
    workdir = workdir or Path(tempfile.mkdtemp(prefix=f"convserve-{name}-"))
    log_path = workdir / f"{name}.log"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(tuple(strip_env_prefixes))}
    full_env = {**inherited, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() can reap its children
        )
    server = Server(name, proc, dict(ports), log_path, workdir, ready, metrics_dir)
    if wait:
        try:
            server.wait_ready(timeout)
        except BaseException:
            server.close()
            raise
    return server


def start_modelserver(
    base_path: str | os.PathLike[str] | None,
    *flags: str,
    model_name: str = MODEL_NAME,
    grpc_port: int | None = None,
    rest_port: int | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    name: str = "modelserver",
) -> Server:
    """``python -m serving.modelserver`` serving ``base_path``, ready when a version is AVAILABLE.

    Ports are free ones unless given (fixed ports let a test stop the server and start it
    again where a gateway expects it). ``base_path=None`` omits ``--model_name`` and
    ``--model_base_path`` (pass ``--model_config_file=...`` in ``flags`` instead).
    """
    free = iter(free_ports(2))
    ports = {
        "grpc": grpc_port if grpc_port is not None else next(free),
        "rest": rest_port if rest_port is not None else next(free),
    }
    argv = [
        sys.executable,
        "-m",
        "serving.modelserver",
        f"--port={ports['grpc']}",
        f"--rest_api_port={ports['rest']}",
    ]
    if base_path is not None:
        argv += [f"--model_name={model_name}", f"--model_base_path={Path(base_path).resolve()}"]
    argv += flags
    return launch(
        name,
        argv,
        ready=lambda s: model_available(s.url, model_name),
        ports=ports,
        env=env,
        timeout=timeout,
    )


def _gunicorn_env(
    workdir: Path,
    *,
    port: int,
    env: Mapping[str, str] | None,
    workers: int | None,
    threads: int | None,
) -> dict[str, str]:
    out = {
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
    }
    if workers is not None:
        out["GATEWAY_WORKERS"] = str(workers)
    if threads is not None:
        out["GATEWAY_THREADS"] = str(threads)
    return {**out, **(env or {})}


def start_gateway(
    backend: str,
    *,
    env: Mapping[str, str] | None = None,
    workers: int | None = None,
    threads: int | None = None,
    port: int | None = None,
    wait: bool = True,
    timeout: float = 90.0,
    name: str = "gateway",
    cwd: str | os.PathLike[str] = ROOT,
) -> Server:
    """``python -m serving.gateway`` (gunicorn) with ``GATEWAY_BACKEND=backend``, ready on /readyz.

    Inherited ``GATEWAY_*`` variables are dropped; settings come from ``env`` (GATEWAY_*),
    ``workers`` and ``threads``. ``PROMETHEUS_MULTIPROC_DIR`` is a fresh directory
    (``server.metrics_dir``). With ``wait=False`` it returns as soon as the process started.
    ``cwd`` is where it runs, so another checkout of the project runs its own code.
    """
    port = port if port is not None else free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"convserve-{name}-"))
    full_env = _gunicorn_env(workdir, port=port, env=env, workers=workers, threads=threads)
    full_env = {"GATEWAY_BACKEND": backend, **full_env}
    return launch(
        name,
        [sys.executable, "-m", "serving.gateway", "--port", str(port)],
        ready=lambda s: http_ok(f"{s.url}/readyz"),
        ports={"http": port},
        env=full_env,
        timeout=timeout,
        wait=wait,
        strip_env_prefixes=("GATEWAY_",),
        metrics_dir=workdir / "metrics",
        workdir=workdir,
        cwd=cwd,
    )


def start_gunicorn_app(
    name: str,
    app_spec: str,
    *,
    env: Mapping[str, str] | None = None,
    workers: int | None = None,
    threads: int | None = None,
    port: int | None = None,
    ready_path: str = "/readyz",
    timeout: float = 60.0,
    cwd: str | os.PathLike[str] = ROOT,
) -> Server:
    """Any WSGI app (``"module:factory()"``) under the gateway's exact gunicorn settings.

    For the floors: the same worker class, workers, threads and timeouts as the gateway
    (``serving/gateway/gunicorn_conf.py``, ``GATEWAY_*`` from ``env``), a different app.
    Ready when ``GET ready_path`` answers 200. ``cwd``: as for `start_gateway`.
    """
    port = port if port is not None else free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"convserve-{name}-"))
    full_env = _gunicorn_env(workdir, port=port, env=env, workers=workers, threads=threads)
    return launch(
        name,
        [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONF, app_spec],
        ready=lambda s: http_ok(f"{s.url}{ready_path}"),
        ports={"http": port},
        env=full_env,
        timeout=timeout,
        strip_env_prefixes=("GATEWAY_",),
        metrics_dir=workdir / "metrics",
        workdir=workdir,
        cwd=cwd,
    )
