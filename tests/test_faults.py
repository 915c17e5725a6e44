"""Faults on real processes on loopback: what the gateway and the model server do when things die.

Shared, module-scoped processes: one ``serving.modelserver`` on fixed ports (so it can be
killed and started again where the gateways expect it) and two gunicorn gateways (gRPC and
REST backends; two workers of four threads each). Covered, each under request load:

- a gateway worker killed with SIGKILL: replaced, and the replacement serves;
- the model server killed with SIGKILL: 503 + ``Retry-After`` within the deadline, ``/readyz``
  503, served again within 2 s of the model server listening again (bounded gRPC reconnect
  backoff), no gateway restart;
- the model server hung (SIGSTOP): 504 within the deadline, threads freed (``/healthz``
  answered meanwhile, a second wave as fast as the first), nothing left in flight;
- SIGTERM to the gateway and to the model server with requests in flight: they complete,
  new connections are refused, exit code 0.

The embedded backend's own deadline (timeout path, and the retry after a version swap) is
tested in-process at the end.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from loadtest.servers import Server, free_ports, start_gateway, start_modelserver
from serving.backends import BackendTimeout, BackendUnavailable
from serving.backends.grpc import GrpcBackend
from serving.backends.rest import RestBackend
from serving.gateway.errors import BACKEND_MESSAGES
from tests.support.modelserver import writable_copy
from tests.support.traffic import Outcome, Traffic, get, post_image
from tests.support.workers import predictions_by_worker, wait_for_workers, worker_pids

TIMEOUT_S = 2.0  # GATEWAY_TIMEOUT_SECONDS of the shared gateways
SLACK_S = 0.5  # HTTP, scheduling and gunicorn overhead on a busy 2-core machine
RECOVERY_S = 2.0  # the promise: served again this soon after the model server listens again
PNG = (Path(__file__).parent / "support" / "images" / "bag.png").read_bytes()

UNAVAILABLE_BODY = {
    "error": {
        "code": "backend_unavailable",
        "message": BACKEND_MESSAGES["backend_unavailable"],
    }
}
TIMEOUT_BODY = {
    "error": {"code": "backend_timeout", "message": BACKEND_MESSAGES["backend_timeout"]}
}


# -- processes -----------------------------------------------------------------------------------
class ModelServerSlot:
    """The shared model server: fixed ports, so a test can kill it and start it again."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.grpc_port, self.rest_port = free_ports(2)
        self.server: Server | None = None

    def start(self) -> Server:
        self.server = start_modelserver(
            self.base,
            "--file_system_poll_wait_seconds=1",
            grpc_port=self.grpc_port,
            rest_port=self.rest_port,
            timeout=90.0,
        )
        return self.server

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.proc.pid

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture(scope="module")
def model_base(exported_model, tmp_path_factory) -> Path:
    return writable_copy(exported_model, tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def ms(model_base):
    slot = ModelServerSlot(model_base)
    slot.start()
    try:
        yield slot
    finally:
        slot.close()


def _gateway_env(timeout: float = TIMEOUT_S) -> dict[str, str]:
    return {
        "GATEWAY_TIMEOUT_SECONDS": str(timeout),
        "GATEWAY_READY_CACHE_SECONDS": "0.2",
        "GATEWAY_GRACEFUL_TIMEOUT_SECONDS": "20",
    }


@pytest.fixture(scope="module")
def gateways(ms):
    grpc_gw = start_gateway(
        f"grpc://127.0.0.1:{ms.grpc_port}", env=_gateway_env(), workers=2, threads=4, wait=False
    )
    try:
        rest_gw = start_gateway(
            f"http://127.0.0.1:{ms.rest_port}", env=_gateway_env(), workers=2, threads=4
        )
        with grpc_gw, rest_gw:
            grpc_gw.wait_ready(60)
            gws = {"grpc": grpc_gw, "rest": rest_gw}
            for gw in gws.values():
                wait_for_workers(gw, 2)
            yield gws
    finally:
        grpc_gw.close()


# -- helpers -------------------------------------------------------------------------------------
def _metric(url: str, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics (summed over workers by the multiprocess collector)."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def _log_time(server: Server, message: str) -> float:
    """Wall-clock time (``time.time()``) of the last model server log line containing ``message``."""
    lines = [line for line in server.output().splitlines() if message in line]
    assert lines, f"no log line with {message!r}:\n{server.output()}"
    stamp = " ".join(lines[-1].split()[:2])  # "2026-12-02 14:03:05,123"
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _served_since(gw: Server, before: dict[int, float]) -> dict[int, float]:
    """Per worker: predictions answered 200 since the ``before`` snapshot."""
    now = predictions_by_worker(gw.metrics_dir)
    return {pid: n - before.get(pid, 0.0) for pid, n in now.items()}


def _refuses_connections(port: int, within: float) -> bool:
    """True once a TCP connect to 127.0.0.1:``port`` is refused (polled for ``within`` s)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
        except ConnectionRefusedError:
            return True
        except OSError:  # timed out in the backlog of a listener that no longer accepts
            pass
        time.sleep(0.05)
    return False


def _is_prediction(outcome: Outcome) -> bool:
    body = outcome.body
    return (
        outcome.status == 200
        and isinstance(body, dict)
        and len(body.get("predictions", [])) == 1
        and len(body["predictions"][0]["probabilities"]) == 10
    )


# -- a gateway worker killed ---------------------------------------------------------------------
@pytest.mark.slow
def test_killed_worker_is_replaced_and_the_replacement_serves(gateways):
    gw = gateways["grpc"]
    old = wait_for_workers(gw, 2)
    before = predictions_by_worker(gw.metrics_dir)
    with Traffic(lambda: post_image(gw.url, PNG), threads=3, pause=0.01) as traffic:
        traffic.wait_for(
            lambda _: all(_served_since(gw, before).get(p, 0) >= 3 for p in old),
            20,
            "both workers to serve before the kill",
        )
        victim = min(old)
        t_kill = time.time()
        os.kill(victim, signal.SIGKILL)
        new = wait_for_workers(gw, 2) - old
        deadline = time.monotonic() + 30
        while not new:  # the dead worker is reaped before its replacement starts
            assert time.monotonic() < deadline, f"no replacement for worker {victim}"
            new = wait_for_workers(gw, 2) - old
        assert victim not in worker_pids(gw)
        (replacement,) = new
        traffic.wait_for(
            lambda _: _served_since(gw, before).get(replacement, 0) >= 5,
            30,
            "the replacement worker to serve",
        )
        t_replaced = time.time()
        traffic.wait_for(
            lambda out: sum(o.start > t_replaced for o in out) >= 20, 20, "traffic afterwards"
        )
    outcomes = traffic.outcomes
    # No HTTP error at all; only the requests the victim held when it died lose their connection
    assert {o.status for o in outcomes} <= {200, None}
    lost = [o for o in outcomes if o.status is None]
    assert len(lost) <= 3, lost  # at most one in flight per client thread
    assert all(o.start <= t_kill + 0.05 for o in lost), (t_kill, lost)
    assert all(_is_prediction(o) for o in outcomes if o.start > t_kill + 0.05)
    assert f"Worker (pid:{victim}) was sent SIGKILL" in gw.output()
    survivor = (old - {victim}).pop()
    assert _served_since(gw, before)[survivor] > 0


# -- the model server killed (SIGKILL) and started again ---------------------------------------
@pytest.mark.slow
def test_backend_killed_gives_503_then_serves_again_within_2s(ms, gateways):
    workers = {kind: wait_for_workers(gw, 2) for kind, gw in gateways.items()}
    errors_before = {
        kind: _metric(gw.url, "gateway_backend_errors_total", reason="unavailable")
        for kind, gw in gateways.items()
    }
    traffic = {
        kind: Traffic(lambda url=gw.url: post_image(url, PNG), threads=2, pause=0.03)
        for kind, gw in gateways.items()
    }
    for t in traffic.values():
        t.start()
    try:
        for t in traffic.values():
            t.wait_for(lambda out: sum(o.status == 200 for o in out) >= 10, 20, "200s before")
        t_kill = time.time()
        ms.server.proc.send_signal(signal.SIGKILL)
        ms.server.proc.wait(10)
        time.sleep(1.0)
        for gw in gateways.values():
            r = get(f"{gw.url}/readyz")
            assert r.status == 503, r
            assert r.body["error"]["code"] == "not_ready"
            assert r.headers["Retry-After"] == "1"
            assert r.elapsed < TIMEOUT_S + SLACK_S
        server = ms.start()  # same ports; returns once a version is AVAILABLE
        t_up = _log_time(server, "Exporting HTTP/REST API")  # both ports listen from here
        restarted = {kind: predictions_by_worker(gw.metrics_dir) for kind, gw in gateways.items()}
        for kind, gw in gateways.items():
            # every worker serves again, proven by each worker's own counter
            traffic[kind].wait_for(
                lambda _, gw=gw, kind=kind: all(
                    _served_since(gw, restarted[kind]).get(p, 0) >= 3 for p in workers[kind]
                ),
                20,
                f"both {kind} gateway workers to serve again",
            )
            traffic[kind].wait_for(
                lambda out: sum(o.start > t_up + RECOVERY_S for o in out) >= 20,
                20,
                "traffic after the recovery window",
            )
    finally:
        outcomes = {kind: t.stop() for kind, t in traffic.items()}

    for kind, gw in gateways.items():
        out = outcomes[kind]
        assert {o.status for o in out} <= {200, 503}, (kind, {o.status for o in out})
        assert max(o.elapsed for o in out) < TIMEOUT_S + SLACK_S, kind  # nothing hung
        refused = [o for o in out if o.status == 503]
        assert refused, kind
        for o in refused:
            assert o.body == UNAVAILABLE_BODY, o
            assert o.headers["Retry-After"] == "1"
        # while it was down, nothing succeeded; after it listened again, failures stop fast
        down = [o for o in out if t_kill + 0.1 < o.start and o.end < t_up]
        assert down and all(o.status == 503 for o in down), kind
        late = [o for o in out if o.status != 200 and o.end > t_up]
        recovered_after = max((o.end for o in late), default=t_up) - t_up
        assert recovered_after < RECOVERY_S, (kind, recovered_after)
        assert all(_is_prediction(o) for o in out if o.start > t_up + RECOVERY_S)
        # the metric counted each 503, and no worker was restarted
        errors = _metric(gw.url, "gateway_backend_errors_total", reason="unavailable")
        assert errors - errors_before[kind] == len(refused), kind
        assert worker_pids(gw) == workers[kind], kind
        assert get(f"{gw.url}/readyz").status == 200


# -- the model server hung (SIGSTOP) -------------------------------------------------------------
@pytest.mark.slow
def test_hung_backend_gives_504_within_the_deadline_and_frees_the_threads(ms, gateways):
    workers = {kind: wait_for_workers(gw, 2) for kind, gw in gateways.items()}
    os.kill(ms.pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(16) as pool:
            for wave in range(2):  # the second wave proves the first one's threads were freed
                started = time.monotonic()
                futures = {
                    kind: [pool.submit(post_image, gw.url, PNG) for _ in range(3)]
                    for kind, gw in gateways.items()
                }
                time.sleep(0.3)
                for gw in gateways.values():  # 3 of 8 threads per gateway hang: others answer
                    for _ in range(4):
                        r = get(f"{gw.url}/healthz")
                        assert r.status == 200 and r.elapsed < 0.5, (wave, r)
                for kind, fs in futures.items():
                    for f in fs:
                        o = f.result()
                        assert o.status == 504, (wave, kind, o)
                        assert o.body == TIMEOUT_BODY
                        assert TIMEOUT_S - 0.1 < o.elapsed < TIMEOUT_S + SLACK_S, (wave, kind, o)
                assert time.monotonic() - started < TIMEOUT_S + 2 * SLACK_S, wave
            for gw in gateways.values():
                r = get(f"{gw.url}/readyz")
                assert r.status == 503 and r.body["error"]["code"] == "not_ready", r
                assert r.elapsed < TIMEOUT_S + SLACK_S
                # nothing piled up: the only request in flight is this scrape
                assert _metric(gw.url, "gateway_in_flight_requests") == 1
    finally:
        os.kill(ms.pid, signal.SIGCONT)
    for kind, gw in gateways.items():
        deadline = time.monotonic() + 5
        while not _is_prediction(o := post_image(gw.url, PNG)):
            assert time.monotonic() < deadline, (kind, o)
            time.sleep(0.05)
        assert o.elapsed < 1.0, (kind, o)
        assert worker_pids(gw) == workers[kind], kind  # no worker timed out and was replaced


# -- SIGTERM with requests in flight --------------------------------------------------------------
@pytest.mark.slow
def test_gateway_sigterm_completes_requests_in_flight_refuses_new_and_exits_0(ms):
    # A long deadline: the requests are held in flight by stopping the model server meanwhile.
    env = _gateway_env(timeout=15.0)
    with start_gateway(f"grpc://127.0.0.1:{ms.grpc_port}", env=env, workers=2, threads=4) as gw:
        wait_for_workers(gw, 2)
        port = gw.ports["http"]
        os.kill(ms.pid, signal.SIGSTOP)
        try:
            # 3 requests: fewer than a worker's 4 threads, so a scrape always finds a thread
            # (a gthread worker accepts connections beyond its threads and queues them).
            with ThreadPoolExecutor(3) as pool:
                futures = [pool.submit(post_image, gw.url, PNG) for _ in range(3)]
                deadline = time.monotonic() + 10
                while _metric(gw.url, "gateway_in_flight_requests") < 4:  # 3 + this scrape
                    assert time.monotonic() < deadline, "requests never reached the gateway"
                    time.sleep(0.1)
                gw.proc.send_signal(signal.SIGTERM)
                assert _refuses_connections(port, within=3.0), "new connections still accepted"
                assert not any(f.done() for f in futures)  # still in flight
                os.kill(ms.pid, signal.SIGCONT)
                outcomes = [f.result() for f in futures]
        finally:
            os.kill(ms.pid, signal.SIGCONT)
        assert all(_is_prediction(o) for o in outcomes), outcomes
        assert gw.proc.wait(30) == 0, gw.output()
        assert "Shutting down: Master" in gw.output()


@pytest.mark.slow
def test_modelserver_sigterm_completes_grpc_and_rest_in_flight_and_exits_0(model_base, tmp_path):
    params = tmp_path / "batching.config"
    # Requests wait up to 1.5 s for their batch to fill: that is how they are in flight.
    params.write_text(
        "max_batch_size { value: 64 }\n"
        "batch_timeout_micros { value: 1500000 }\n"
        "max_enqueued_batches { value: 8 }\n"
        "num_batch_threads { value: 1 }\n"
    )
    image = np.full((1, 28, 28, 1), 0.5, np.float32)
    with start_modelserver(
        model_base, "--enable_batching", f"--batching_parameters_file={params}"
    ) as server:
        with (
            GrpcBackend(server.target, timeout=30) as grpc_backend,
            RestBackend(server.url, version=1, timeout=30) as rest_backend,
            ThreadPoolExecutor(8) as pool,
        ):
            started = time.monotonic()
            futures = [pool.submit(grpc_backend.predict, image) for _ in range(4)]
            futures += [pool.submit(rest_backend.predict, image) for _ in range(4)]
            time.sleep(0.5)
            assert not any(f.done() for f in futures)
            server.proc.send_signal(signal.SIGTERM)
            assert _refuses_connections(server.ports["rest"], within=3.0)
            assert _refuses_connections(server.ports["grpc"], within=3.0)
            with (
                GrpcBackend(server.target, timeout=2, retries=0) as late,
                pytest.raises(BackendUnavailable),
            ):
                late.predict(image)
            results = [f.result() for f in futures]
            assert time.monotonic() - started > 1.4  # they waited out the batch window
        first = results[0].probabilities
        for result in results:
            assert result.model_version == 1
            np.testing.assert_allclose(result.probabilities, first, atol=1e-6)
        assert server.proc.wait(30) == 0, server.output()
        assert "shutting down" in server.output()


# -- the embedded backend's deadline (in-process) ----------------------------------------------
@pytest.fixture(scope="module")
def embedded(model_base, tmp_path_factory):
    from serving.backends.embedded import EmbeddedBackend

    base = writable_copy(model_base, tmp_path_factory.mktemp("faults-embedded"))
    # Batches of at most 2 rows: a 3-row request is split into two model calls, each so small
    # that the injected delays, not the model, decide the timings.
    with EmbeddedBackend(base, timeout=30.0, batch_max_size=2) as backend:
        assert backend.predict(np.zeros((1, 28, 28, 1), np.float32)).model_version == 1
        yield backend


class SlowModel:
    """Wraps the embedded backend's model call: ``delay`` s per call, and optionally one call
    answered by "another version" (what a version swap between two chunks looks like)."""

    def __init__(self, backend, delay: float, swap_on_call: int | None = None) -> None:
        manager = backend.manager
        self.real = functools.partial(type(manager).predict, manager)  # never another wrapper
        self.delay = delay
        self.swap_on_call = swap_on_call
        self.calls = 0

    def __call__(self, inputs, version=None):
        time.sleep(self.delay)
        served, outputs = self.real(inputs, version=version)
        self.calls += 1
        return (served + 1 if self.calls == self.swap_on_call else served), outputs

    def wait_idle(self, calls: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.calls < calls:
            assert time.monotonic() < deadline, self.calls
            time.sleep(0.02)


@pytest.mark.slow
def test_embedded_retry_after_a_version_swap_keeps_one_deadline(embedded, monkeypatch):
    batch = np.zeros((3, 28, 28, 1), np.float32)  # two chunks of the 2-row batcher
    # The second model call reports another version: the request is run again, once.
    slow = SlowModel(embedded, delay=0.3, swap_on_call=2)
    monkeypatch.setattr(embedded.manager, "predict", slow)
    monkeypatch.setattr(embedded, "timeout", 3.0)
    started = time.monotonic()
    result = embedded.predict(batch)
    assert slow.calls == 4 and result.model_version == 1  # one version answered every row
    assert result.probabilities.shape == (3, 10)
    assert 1.1 < time.monotonic() - started < 3.0

    # Each attempt takes 0.6 s: with a 1 s deadline the retry must not get a fresh 1 s.
    slow = SlowModel(embedded, delay=0.3, swap_on_call=2)
    monkeypatch.setattr(embedded.manager, "predict", slow)
    monkeypatch.setattr(embedded, "timeout", 1.0)
    started = time.monotonic()
    with pytest.raises(BackendTimeout, match="within 1s"):
        embedded.predict(batch)
    assert 0.95 < time.monotonic() - started < 1.15
    slow.wait_idle(4)  # the retry's rows still run (the batcher cannot recall them)


@pytest.mark.slow
def test_embedded_timeout_is_a_504_and_frees_the_request(embedded, monkeypatch):
    from serving.gateway import create_app

    app = create_app({"backend": "embedded:unused", "timeout_seconds": 1.0}, backend=embedded)
    monkeypatch.setattr(embedded, "timeout", 1.0)
    slow = SlowModel(embedded, delay=1.5)
    monkeypatch.setattr(embedded.manager, "predict", slow)

    def post() -> tuple[int, dict, float]:
        started = time.monotonic()
        r = app.test_client().post("/v1/predict", data=PNG, content_type="image/png")
        return r.status_code, r.get_json(), time.monotonic() - started

    with ThreadPoolExecutor(3) as pool:  # three callers waiting on a hung model at once
        answers = list(pool.map(lambda _: post(), range(3)))
    for status, body, elapsed in answers:
        assert status == 504 and body == TIMEOUT_BODY
        assert 0.95 < elapsed < 1.0 + SLACK_S
    # The model call under way finishes on its own; rows queued behind it get the real model.
    monkeypatch.setattr(embedded.manager, "predict", slow.real)
    slow.wait_idle(1, timeout=15)
    status, body, _ = post()
    assert status == 200, body
    assert len(body["predictions"]) == 1
