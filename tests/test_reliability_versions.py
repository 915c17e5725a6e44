"""Model versions appearing, disappearing and arriving broken, end to end, for every backend.

One base path is served by ``serving.modelserver`` and polled by three real gunicorn gateways:
``embedded:`` (its own ModelManager), ``grpc://`` and ``http://`` (the model server's). While
each gateway answers a steady stream of predictions, versions are added and removed:

- a corrupt version (truncated ``saved_model.pb``, ``variables/`` missing, a truncated
  variables shard) is reported (``/v1/models`` state END with an error, the log, the gateway's
  ``gateway_model_version_errors`` and the model server's ``model_loads_total{failure}``), not
  retried while unchanged, never served; version 1 answers every request;
- a version copied in file by file while the servers poll is not loaded until it stopped
  changing (no failed load on the way), then takes over;
- the serving version's folder removed: the previous version is loaded again and answers.

No request fails in any of it.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from loadtest.images import load_images
from loadtest.servers import ROOT, Server, start_gateway, start_modelserver
from loadtest.versions import publish_copy, remove_version
from serving.contract import MODEL_NAME
from tests.support.metrics import scrape

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Poll interval of the model server and the embedded gateway; a folder must be unchanged for
# this long (the settle time, min(poll, 1 s)) before it is loaded.
POLL_S = 1.0
KINDS = ("embedded", "grpc", "rest")
MONITORING = ROOT / "serving" / "config" / "monitoring.config"
LOADS = ":convserve:modelserver:model_loads_total"
V1_ONLY = [{"version": 1, "state": "AVAILABLE", "error": ""}]


@dataclass
class Traffic:
    """Threads posting one PNG after another to each gateway; every answer is recorded."""

    urls: dict[str, str]
    png: bytes
    answers: dict[str, list[tuple[int, int | None, str]]] = field(default_factory=dict)
    crashed: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for kind, url in self.urls.items():
            self.answers[kind] = []
            t = threading.Thread(target=self._post_loop, args=(kind, url), daemon=True)
            t.start()
            self._threads.append(t)

    def _post_loop(self, kind: str, url: str) -> None:
        try:
            with requests.Session() as s:
                while not self._stop.wait(0.02):  # ~30 req/s per gateway: the machine is shared
                    r = s.post(
                        f"{url}/v1/predict",
                        data=self.png,
                        headers={"Content-Type": "image/png"},
                        timeout=30,
                    )
                    version = r.json().get("model_version") if r.status_code == 200 else None
                    self.answers[kind].append((r.status_code, version, r.text[:200]))
        except Exception as exc:  # a dead thread must fail the test, not shrink the sample
            self.crashed.append(f"{kind}: {type(exc).__name__}: {exc}")

    def mark(self) -> dict[str, int]:
        """Where each gateway's record stands now (for `since`)."""
        return {k: len(v) for k, v in self.answers.items()}

    def since(self, mark: dict[str, int]) -> dict[str, list[tuple[int, int | None, str]]]:
        """The answers recorded after ``mark``."""
        return {k: v[mark[k] :] for k, v in self.answers.items()}

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


@dataclass
class Stack:
    base: Path
    modelserver: Server
    gateways: dict[str, Server]
    traffic: Traffic


@pytest.fixture(scope="module")
def stack(exported_model, tmp_path_factory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("versions") / MODEL_NAME
    base.mkdir()
    shutil.copytree(exported_model / "1", base / "1")
    flags = (
        f"--file_system_poll_wait_seconds={POLL_S:g}",
        f"--monitoring_config_file={MONITORING}",
    )
    env = {"GATEWAY_TIMEOUT_SECONDS": "5", "GATEWAY_READY_CACHE_SECONDS": "0"}
    with start_modelserver(base, *flags) as ms:
        backends = {
            "embedded": f"embedded:{base}",
            "grpc": f"grpc://{ms.target}",
            "rest": ms.url,
        }
        gateways = {}
        try:
            for kind, backend in backends.items():
                gw_env = {**env, "GATEWAY_MODEL_POLL_SECONDS": f"{POLL_S:g}"}
                gateways[kind] = start_gateway(backend, env=gw_env, workers=1, name=f"gw-{kind}")
            traffic = Traffic({k: g.url for k, g in gateways.items()}, load_images(1).pngs[0])
            traffic.start()
            try:
                yield Stack(base, ms, gateways, traffic)
            finally:
                traffic.stop()
        finally:
            for gw in gateways.values():
                gw.close()


def _versions(gw: Server) -> list[dict]:
    resp = requests.get(f"{gw.url}/v1/models", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["versions"]


def _wait_all(stack: Stack, ok: Callable[[list[dict]], bool], timeout: float = 60.0) -> None:
    """Until ``ok(/v1/models versions)`` holds on every gateway."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {kind: _versions(gw) for kind, gw in stack.gateways.items()}
        if all(ok(v) for v in seen.values()):
            return
        assert time.monotonic() < deadline, f"versions never settled: {seen}"
        time.sleep(0.2)


def _failed_loads(stack: Stack) -> float:
    return scrape(f"{stack.modelserver.url}{'/monitoring/prometheus/metrics'}")[
        (LOADS, (("model_name", MODEL_NAME), ("status", "failure")))
    ]


def _version_error_gauge(gw: Server, version: int) -> float | None:
    return scrape(f"{gw.url}/metrics").get(
        ("gateway_model_version_errors", (("version", str(version)),))
    )


def _assert_all_answered(stack: Stack, mark: dict[str, int], versions: set[int]) -> None:
    assert stack.traffic.crashed == []
    for kind, answers in stack.traffic.since(mark).items():
        assert answers, f"{kind}: no request was answered"
        failed = [a for a in answers if a[0] != 200]
        assert failed == [], f"{kind}: {len(failed)} of {len(answers)} failed, e.g. {failed[:3]}"
        assert {a[1] for a in answers} <= versions, (
            f"{kind} answered by {set(a[1] for a in answers)}"
        )


def _v1_only(stack: Stack) -> None:
    _wait_all(stack, lambda v: v == V1_ONLY)


# -- corrupt versions ---------------------------------------------------------------------------
def _truncate_graph(folder: Path) -> None:
    pb = folder / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[: pb.stat().st_size // 2])


def _drop_variables(folder: Path) -> None:
    shutil.rmtree(folder / "variables")


def _truncate_shard(folder: Path) -> None:
    shard = folder / "variables" / "variables.data-00000-of-00001"
    shard.write_bytes(shard.read_bytes()[:1000])


@pytest.mark.parametrize("damage", [_truncate_graph, _drop_variables, _truncate_shard])
def test_a_corrupt_version_is_reported_and_never_served(stack: Stack, damage):
    _v1_only(stack)
    failures_before = _failed_loads(stack)
    mark = stack.traffic.mark()
    broken = stack.base.parent / "broken-2"
    shutil.copytree(stack.base / "1", broken)
    damage(broken)
    broken.rename(stack.base / "2")  # appears whole: the damage is in the version itself
    try:

        def reported(v: list[dict]) -> bool:
            states = {x["version"]: x for x in v}
            return set(states) == {1, 2} and states[2]["state"] == "END" and states[2]["error"]

        _wait_all(stack, reported)
        for kind, gw in stack.gateways.items():
            assert {"version": 1, "state": "AVAILABLE", "error": ""} in _versions(gw), kind
            assert _version_error_gauge(gw, 2) == 1.0, kind
        assert _failed_loads(stack) == failures_before + 1
        time.sleep(3 * POLL_S)  # unchanged: not retried on every poll, still reported
        assert _failed_loads(stack) == failures_before + 1
        _wait_all(stack, reported, timeout=1)
        for server in (stack.modelserver, stack.gateways["embedded"]):
            assert "version 2 failed to load" in server.output(), server.name
        _assert_all_answered(stack, mark, {1})
    finally:
        remove_version(stack.base, 2)
    _v1_only(stack)  # the failed version is forgotten with its folder
    for kind, gw in stack.gateways.items():
        assert _version_error_gauge(gw, 2) == 0.0, kind
    _assert_all_answered(stack, mark, {1})


# -- a version copied in while polled; the serving version removed -----------------------------
def _copy_slowly(src: Path, dst: Path, pause_s: float) -> None:
    """Copy ``src`` into ``dst`` the way a slow writer does: ``saved_model.pb`` first, in
    chunks, then every other file, pausing ``pause_s`` between writes."""
    dst.mkdir()
    graph = (src / "saved_model.pb").read_bytes()
    chunk = len(graph) // 8 + 1
    with open(dst / "saved_model.pb", "wb") as out:
        for i in range(0, len(graph), chunk):
            out.write(graph[i : i + chunk])
            out.flush()
            time.sleep(pause_s)
    for f in sorted(p for p in src.rglob("*") if p.is_file() and p.name != "saved_model.pb"):
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        time.sleep(pause_s)


def test_a_version_copied_in_is_loaded_only_once_complete_then_removal_falls_back(stack: Stack):
    _v1_only(stack)
    failures_before = _failed_loads(stack)
    mark = stack.traffic.mark()
    seen: list[list[dict]] = []
    writer = threading.Thread(target=_copy_slowly, args=(stack.base / "1", stack.base / "2", 0.1))
    writer.start()
    while writer.is_alive():  # watch every gateway while the folder is incomplete
        seen += [_versions(gw) for gw in stack.gateways.values()]
        time.sleep(0.1)
    writer.join()
    assert all(v == V1_ONLY for v in seen), [v for v in seen if v != V1_ONLY][:3]
    assert len(seen) >= 3 * 10  # the copy took a while: it was really watched
    both = [
        {"version": 2, "state": "AVAILABLE", "error": ""},
        {"version": 1, "state": "END", "error": ""},
    ]
    _wait_all(stack, lambda v: v == both)
    assert _failed_loads(stack) == failures_before  # never tried half-written
    time.sleep(1.0)  # every worker answers from version 2 now
    switched = stack.traffic.mark()
    time.sleep(1.0)
    _assert_all_answered(stack, switched, {2})
    _assert_all_answered(stack, mark, {1, 2})

    # The serving version's folder goes away: version 1 comes back, no request fails.
    mark = stack.traffic.mark()
    remove_version(stack.base, 2)
    back = [
        {"version": 2, "state": "END", "error": ""},
        {"version": 1, "state": "AVAILABLE", "error": ""},
    ]
    _wait_all(stack, lambda v: v == back)
    time.sleep(1.0)
    tail = stack.traffic.mark()
    time.sleep(1.0)
    _assert_all_answered(stack, tail, {1})
    _assert_all_answered(stack, mark, {1, 2})
    assert _failed_loads(stack) == failures_before


def test_a_new_version_published_atomically_takes_over(stack: Stack):
    # Leftover END entries of earlier tests are fine here: only the newest matters.
    mark = stack.traffic.mark()
    new = max(x["version"] for x in _versions(stack.gateways["grpc"])) + 1
    publish_copy(stack.base, 1, new)
    try:
        _wait_all(stack, lambda v: v[0] == {"version": new, "state": "AVAILABLE", "error": ""})
        time.sleep(1.0)
        tail = stack.traffic.mark()
        time.sleep(1.0)
        _assert_all_answered(stack, tail, {new})
        _assert_all_answered(stack, mark, {1, new})
    finally:
        remove_version(stack.base, new)
