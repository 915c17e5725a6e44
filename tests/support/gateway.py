"""Gateway test helpers: a scriptable in-process backend and a real gunicorn gateway process.

Usage::

    from tests.support.gateway import FakeBackend, start_gateway

    backend = FakeBackend()                       # implements serving.backends.Backend
    app = create_app({"max_batch": 4}, backend=backend)

    with start_gateway({"GATEWAY_BACKEND": "grpc://127.0.0.1:8500"}) as gw:
        requests.get(f"{gw.url}/readyz")

`start_gateway` runs ``python -m serving.gateway`` on a free port, waits until ``/readyz``
answers 200 (``GatewayStartError`` with the process output otherwise) and stops it with
SIGTERM afterwards (SIGKILL after ``stop_timeout``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.backends import PredictResult, VersionStatus
from serving.contract import NUM_CLASSES
from tests.support.net import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]


class FakeBackend:
    """A backend whose answers are a deterministic function of the input (or a scripted error).

    Probabilities: a softmax whose winner and spread depend on the mean pixel value, so
    different inputs give different, reproducible answers; ``expected(batch)`` gives what ``predict``
    returns. Set ``error`` to an exception to raise it from ``predict`` and ``status``;
    ``states`` is what ``status`` reports. Calls are recorded in ``calls`` (batch shapes).
    """

    def __init__(self, version: int = 3, states: list[VersionStatus] | None = None):
        self.version = version
        self.states = states if states is not None else [VersionStatus(version, "AVAILABLE", "")]
        self.error: BaseException | None = None
        self.calls: list[tuple[int, ...]] = []
        self.status_calls = 0
        self.closed = False
        self.hook: Callable[[np.ndarray], None] | None = None
        self._lock = threading.Lock()

    @staticmethod
    def expected(batch: np.ndarray) -> np.ndarray:
        """The probabilities `predict` returns for ``batch`` (float32 ``[N, 10]``)."""
        means = batch.reshape(len(batch), -1).mean(axis=1, dtype=np.float64)
        # class (int(mean * 100) % 10) gets the largest logit
        winner = (means * 100).astype(np.int64) % NUM_CLASSES
        # the other logits scale with the mean too, so different inputs never tie exactly
        logits = np.linspace(0.0, 1.0, NUM_CLASSES)[None, :] * (1.0 + means[:, None])
        logits[np.arange(len(batch)), winner] = 3.0
        e = np.exp(logits)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict(self, batch: np.ndarray) -> PredictResult:
        """Record the call and answer (or raise ``error``)."""
        with self._lock:
            self.calls.append(tuple(batch.shape))
        if self.hook is not None:
            self.hook(batch)
        if self.error is not None:
            raise self.error
        assert batch.dtype == np.float32 and batch.shape[1:] == (28, 28, 1)
        return PredictResult(self.expected(batch), self.version)

    def status(self) -> list[VersionStatus]:
        """``states`` (or raise ``error``)."""
        with self._lock:
            self.status_calls += 1
        if self.error is not None:
            raise self.error
        return list(self.states)

    def close(self) -> None:
        """Mark closed."""
        self.closed = True


class GatewayStartError(RuntimeError):
    """The gateway exited or did not become ready in time."""


@dataclass
class GatewayHandle:
    """A running gateway process."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    metrics_dir: Path

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """Everything the gateway wrote to stdout/stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful), wait up to ``timeout`` s, then SIGKILL; return the exit code."""
        return stop_process(self.proc, timeout)


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def wait_ready(handle: GatewayHandle, timeout: float) -> None:
    """Poll ``/readyz`` until 200; raise `GatewayStartError` on exit or timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if handle.proc.poll() is not None:
            raise GatewayStartError(
                f"gateway exited with {handle.proc.returncode}:\n{handle.output()}"
            )
        if _get(f"{handle.url}/readyz") == 200:
            return
        if time.monotonic() > deadline:
            raise GatewayStartError(f"gateway not ready after {timeout}s:\n{handle.output()}")
        time.sleep(0.2)


@contextlib.contextmanager
def start_gateway(
    env: Mapping[str, str],
    *,
    timeout: float = 90.0,
    stop_timeout: float = 20.0,
    wait: bool = True,
) -> Iterator[GatewayHandle]:
    """Run ``python -m serving.gateway`` with ``env`` (GATEWAY_* settings) on a free port.

    ``PROMETHEUS_MULTIPROC_DIR`` is set to a fresh directory the test can inspect. With
    ``wait=False`` the handle is yielded as soon as the process started.
    """
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="gateway-test-"))
    metrics_dir = work / "metrics"
    log_path = work / "gateway.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")} | {
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "GATEWAY_HOST": "127.0.0.1",
        **env,
    }
    cmd = [sys.executable, "-m", "serving.gateway", "--port", str(port)]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
        )
    handle = GatewayHandle(proc, port, log_path, metrics_dir)
    try:
        if wait:
            wait_ready(handle, timeout)
        yield handle
    finally:
        handle.stop(stop_timeout)
        shutil.rmtree(work, ignore_errors=True)


def _model_available(rest_url: str, model_name: str) -> bool:
    try:
        with urllib.request.urlopen(f"{rest_url}/v1/models/{model_name}", timeout=2) as resp:
            doc = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return any(s.get("state") == "AVAILABLE" for s in doc.get("model_version_status", []))


@contextlib.contextmanager
def modelserver_on_ports(
    base_path: str | os.PathLike[str],
    grpc_port: int,
    rest_port: int,
    *flags: str,
    model_name: str = "fashion_mnist",
    timeout: float = 90.0,
) -> Iterator[subprocess.Popen]:
    """Run ``python -m serving.modelserver`` on *given* ports (so a test can stop it and start
    it again where a gateway expects it); yield the process once a version is AVAILABLE."""
    cmd = [
        sys.executable,
        "-m",
        "serving.modelserver",
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        f"--model_name={model_name}",
        f"--model_base_path={Path(base_path).resolve()}",
        *flags,
    ]
    fd, log_name = tempfile.mkstemp(prefix="modelserver-", suffix=".log")
    with os.fdopen(fd, "wb") as log_file:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while not _model_available(f"http://127.0.0.1:{rest_port}", model_name):
            if proc.poll() is not None or time.monotonic() > deadline:
                output = Path(log_name).read_text(errors="replace")
                raise GatewayStartError(f"model server not ready (exit {proc.poll()}):\n{output}")
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        os.unlink(log_name)
