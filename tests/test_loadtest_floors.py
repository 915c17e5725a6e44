"""The floors answer their fixed JSON under the gateway's own gunicorn settings (real gunicorn)."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request

import pytest

from loadtest.compare import gateway_env_from
from loadtest.floors import FIXED_ANSWER, FLOORS, start_floor
from serving.gateway.config import WORKER_CLASSES

pytestmark = pytest.mark.integration

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 300  # any body: a floor only reads it


def _post(url: str, body: bytes) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.headers["Content-Type"], resp.read()


def _workers(pid: int, expected: int, timeout: float = 10.0) -> int:
    """How many worker processes gunicorn's master has once ``expected`` are up (or timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid="], capture_output=True)
        count = len(out.stdout.split())
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_floor_answers_fixed_json_under_the_gateway_gunicorn_settings(name):
    with start_floor(name, env={"GATEWAY_WORKERS": "3", "GATEWAY_THREADS": "4"}) as floor:
        status, ctype, body = _post(f"{floor.url}/v1/predict", PNG)
        assert (status, ctype, body) == (200, "application/json", FIXED_ANSWER)
        assert _post(f"{floor.url}/v1/predict", b"")[2] == FIXED_ANSWER
        with urllib.request.urlopen(f"{floor.url}/readyz", timeout=5) as resp:
            assert (resp.status, resp.read()) == (200, b"ok")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{floor.url}/nowhere", timeout=5)
        assert info.value.code == 404
        argv = floor.proc.args
        assert argv[-3:] == ["-c", "python:serving.gateway.gunicorn_conf", FLOORS[name]]
        # GATEWAY_WORKERS reached gunicorn through the gateway's settings module
        assert _workers(floor.proc.pid, 3) == 3


@pytest.mark.parametrize("kind", sorted(WORKER_CLASSES))
def test_floor_runs_under_the_worker_class_compare_gives_the_gateway(kind):
    env = gateway_env_from({"GATEWAY_PORT": "1", "OTHER": "x"}, 1, None, kind)
    assert env == {
        "GATEWAY_LOG_LEVEL": "WARNING",
        "GATEWAY_WORKERS": "1",
        "GATEWAY_WORKER_CLASS": kind,
    }
    with start_floor("flask", env={**env, "GATEWAY_LOG_LEVEL": "INFO"}) as floor:
        assert _post(f"{floor.url}/v1/predict", PNG)[2] == FIXED_ANSWER
        assert f"Using worker: {WORKER_CLASSES[kind]}" in floor.output()


def test_compare_loads_the_floors_with_the_gateway_settings_and_ignores_labels():
    from loadtest import floors

    rows = floors.configurations()
    assert [r.name for r in rows] == ["Flask floor", "WSGI floor"]
    assert all(r.target == "gateway" and r.group == "floor" and not r.count_labels for r in rows)
