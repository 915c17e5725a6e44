"""Run ``python -m serving.modelserver`` as a real subprocess for tests.

Usage::

    from tests.support.modelserver import start_modelserver

    with start_modelserver(base_path, "--enable_batching") as server:
        requests.get(f"{server.url}/v1/models/fashion_mnist")   # REST
        grpc.insecure_channel(server.target)                      # gRPC

The server listens on free loopback ports; the context manager waits until the REST status
endpoint reports a version AVAILABLE (``ModelServerStartError`` with the server's output
otherwise) and stops it afterwards with SIGTERM (then SIGKILL after ``stop_timeout``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from serving.contract import MODEL_NAME
from tests.support.net import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]


class ModelServerStartError(RuntimeError):
    """The model server exited or did not report AVAILABLE in time."""


@dataclass
class ModelServerHandle:
    """A running model server: its process, ports and addresses."""

    proc: subprocess.Popen
    grpc_port: int
    rest_port: int
    model_name: str = MODEL_NAME
    log_path: Path | None = None

    @property
    def url(self) -> str:
        """REST base URL, e.g. ``http://127.0.0.1:45123``."""
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def target(self) -> str:
        """gRPC target, e.g. ``127.0.0.1:45124``."""
        return f"127.0.0.1:{self.grpc_port}"

    def output(self) -> str:
        """Everything the server wrote to stdout/stderr so far."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; return the exit code."""
        return stop_process(self.proc, timeout)


def _status(url: str, model_name: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{url}/v1/models/{model_name}", timeout=2) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


@contextlib.contextmanager
def start_modelserver(
    base_path: str | os.PathLike[str] | None,
    *extra_flags: str,
    model_name: str = MODEL_NAME,
    timeout: float = 60.0,
    stop_timeout: float = 20.0,
    env: dict[str, str] | None = None,
) -> Iterator[ModelServerHandle]:
    """Start the model server on free ports serving ``base_path``; yield a handle when ready.

    ``base_path=None`` omits ``--model_name``/``--model_base_path`` (pass
    ``--model_config_file=...`` in ``extra_flags`` instead).
    """
    grpc_port, rest_port = free_port(), free_port()
    while rest_port == grpc_port:
        rest_port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "serving.modelserver",
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
    ]
    if base_path is not None:
        cmd += [f"--model_name={model_name}", f"--model_base_path={Path(base_path).resolve()}"]
    cmd += list(extra_flags)
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    log_dir = Path(tempfile.mkdtemp(prefix="modelserver-"))
    log_path = log_dir / "server.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
        )
    handle = ModelServerHandle(proc, grpc_port, rest_port, model_name, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ModelServerStartError(
                    f"model server exited with {proc.returncode}:\n{handle.output()}"
                )
            status = _status(handle.url, model_name)
            if status and any(
                s.get("state") == "AVAILABLE" for s in status.get("model_version_status", [])
            ):
                break
            if time.monotonic() > deadline:
                raise ModelServerStartError(
                    f"model server not AVAILABLE after {timeout}s:\n{handle.output()}"
                )
            time.sleep(0.2)
        yield handle
    finally:
        handle.stop(stop_timeout)
        shutil.rmtree(log_dir, ignore_errors=True)


def model_base_for_tests(request) -> Path:
    """The session's ``exported_model`` base dir (a trained export, version 1)."""
    return request.getfixturevalue("exported_model")
