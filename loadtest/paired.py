"""``python -m loadtest paired``: two configurations of one server, loaded at the same time.

On a shared machine the cores a benchmark gets drift by 15-25% within minutes
(docs/BENCHMARKS.md), so a change measured one run after the other is lost in that drift.
``paired`` starts both configurations once and, in each round, loads both *at the same time*,
each with its own headless Locust process (the same users, images and duration; `loadtest.run`):
both see the same machine. Per round it reports each side's requests/s, p99, failures and server
CPU per request, and B's CPU per request over A's; the verdict is that ratio's median over the
rounds. Each side gets about half of the cores, so the absolute numbers are higher than in
``compare``: only the ratio is the result.

A side is a set of ``GATEWAY_*`` settings and the checkout it runs from (default: this one), so
one command compares two settings, or two versions of the code::

    python -m loadtest paired --a GATEWAY_WORKER_CLASS=gthread --b GATEWAY_WORKER_CLASS=gevent
    git worktree add /tmp/before HEAD~1
    python -m loadtest paired --a-checkout /tmp/before        # A: the code before the last commit

Artefacts in ``out``: ``round<i>-a/`` and ``round<i>-b/`` (`loadtest.run`'s), ``paired.json``
and ``paired.md`` (the table printed to stdout).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.floors import start_floor
from loadtest.procstats import tree_cpu_seconds
from loadtest.run import LoadSpec, run_load
from loadtest.servers import ROOT, Server, start_gateway

SERVERS = ("gateway", "floor")


@dataclass(frozen=True)
class Side:
    """One configuration: its name (``a``/``b``), ``GATEWAY_*`` settings and checkout."""

    name: str
    env: tuple[tuple[str, str], ...] = ()
    checkout: Path = ROOT

    def describe(self) -> str:
        """The settings and checkout, for the report."""
        settings = " ".join(f"{k}={v}" for k, v in self.env) or "defaults"
        where = "" if self.checkout.resolve() == ROOT else f" from {self.checkout}"
        return f"{settings}{where}"


def parse_assignments(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``["GATEWAY_THREADS=8", ...]`` → sorted (name, value) pairs; ValueError for anything
    that is not ``GATEWAY_NAME=value``."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("GATEWAY_") or name != name.strip():
            raise ValueError(f"expected GATEWAY_NAME=value, got {item!r}")
        out[name] = value
    return tuple(sorted(out.items()))


def check_checkout(path: Path) -> Path:
    """``path`` resolved, if it holds this project (ValueError otherwise)."""
    path = path.resolve()
    if not (path / "serving" / "gateway" / "__main__.py").is_file():
        raise ValueError(f"{path} is not a checkout of this project (no serving/gateway there)")
    return path


@dataclass(frozen=True)
class PairedSettings:
    """What to compare and how hard to load it."""

    server: str  # "gateway" (embedded backend) or "floor" (the Flask floor)
    model_dir: Path
    out: Path
    sides: tuple[Side, Side]
    users: int = 32
    spawn_rate: float = 32.0
    duration: str = "15s"
    images: int = 1000
    rounds: int = 3
    base_env: tuple[tuple[str, str], ...] = field(default=())

    def validate(self) -> None:
        """ValueError with a one-line message for a setting that cannot run."""
        if self.server not in SERVERS:
            raise ValueError(f"unknown server {self.server!r}; expected {', '.join(SERVERS)}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.server == "gateway" and not any(self.model_dir.glob("*/saved_model.pb")):
            raise ValueError(
                f"no exported version under {self.model_dir} (run `make quick-model`, or pass "
                "--model-dir)"
            )
        for side in self.sides:
            check_checkout(side.checkout)


def start_side(side: Side, settings: PairedSettings) -> Server:
    """Start ``side``'s server from its checkout, ready to load."""
    env = {**dict(settings.base_env), **dict(side.env)}
    if settings.server == "floor":
        return start_floor("flask", env=env, cwd=side.checkout, timeout=120)
    return start_gateway(
        f"embedded:{settings.model_dir}",
        env=env,
        cwd=side.checkout,
        timeout=180,
        name=f"paired-{side.name}",
    )


def _load_together(
    servers: Mapping[str, Server], settings: PairedSettings, round_no: int
) -> dict[str, dict[str, Any]]:
    """One round: every server loaded at the same time; each side's summary plus its CPU."""
    summaries: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def load(name: str, server: Server) -> None:
        spec = LoadSpec(
            target="gateway",
            host=server.url,
            users=settings.users,
            spawn_rate=settings.spawn_rate,
            duration=settings.duration,
            out=settings.out / f"round{round_no}-{name}",
            images=settings.images,
        )
        try:
            summaries[name] = run_load(spec)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    before = {name: tree_cpu_seconds(s.proc.pid) for name, s in servers.items()}
    threads = [threading.Thread(target=load, args=item) for item in servers.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    for name, server in servers.items():
        used = tree_cpu_seconds(server.proc.pid) - before[name]
        requests = summaries[name].get("requests") or 0
        summaries[name]["server_cpu_ms_per_request"] = (
            round(1000 * used / requests, 3) if requests else None
        )
    return summaries


def _side_row(summary: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("requests_per_second", "p99_ms", "requests", "failures", "wrong_labels")
    return {k: summary.get(k) for k in (*keys, "server_cpu_ms_per_request")}


def cpu_ratio(a: Mapping[str, Any], b: Mapping[str, Any]) -> float | None:
    """B's server CPU per request over A's (None when either is unknown)."""
    ca, cb = a.get("server_cpu_ms_per_request"), b.get("server_cpu_ms_per_request")
    return round(cb / ca, 3) if ca and cb is not None else None


def run_paired(settings: PairedSettings) -> dict[str, Any]:
    """Start both sides, load them together ``rounds`` times; the report as a dict."""
    settings.validate()
    settings.out.mkdir(parents=True, exist_ok=True)
    rounds = []
    with contextlib.ExitStack() as stack:
        servers = {}
        for side in settings.sides:
            servers[side.name] = stack.enter_context(start_side(side, settings))
        for i in range(settings.rounds):
            summaries = _load_together(servers, settings, i)
            a, b = (_side_row(summaries[s.name]) for s in settings.sides)
            rounds.append({"a": a, "b": b, "cpu_ratio_b_over_a": cpu_ratio(a, b)})
    ratios = [r["cpu_ratio_b_over_a"] for r in rounds if r["cpu_ratio_b_over_a"] is not None]
    report = {
        "server": settings.server,
        "users": settings.users,
        "duration": settings.duration,
        "sides": {s.name: s.describe() for s in settings.sides},
        "rounds": rounds,
        "median_cpu_ratio_b_over_a": statistics.median(ratios) if ratios else None,
        "failures": sum((r[s]["failures"] or 0) for r in rounds for s in ("a", "b")),
    }
    (settings.out / "paired.json").write_text(json.dumps(report, indent=1) + "\n")
    (settings.out / "paired.md").write_text(markdown(report) + "\n")
    return report


def _num(value: Any, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def markdown(report: Mapping[str, Any]) -> str:
    """The per-round table and the verdict."""
    sides = report["sides"]
    lines = [
        f"{report['server']}, {report['users']} users per side, {report['duration']} per "
        f"round, both sides at once. A: {sides['a']}. B: {sides['b']}.",
        "",
        "| round | A req/s | A p99 ms | A CPU ms/req | B req/s | B p99 ms | B CPU ms/req | "
        "B/A CPU | failures |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, r in enumerate(report["rounds"]):
        a, b = r["a"], r["b"]
        lines.append(
            f"| {i} | {_num(a['requests_per_second'])} | {_num(a['p99_ms'])} | "
            f"{_num(a['server_cpu_ms_per_request'], 3)} | {_num(b['requests_per_second'])} | "
            f"{_num(b['p99_ms'])} | {_num(b['server_cpu_ms_per_request'], 3)} | "
            f"{_num(r['cpu_ratio_b_over_a'], 3)} | {(a['failures'] or 0) + (b['failures'] or 0)} |"
        )
    lines += ["", f"Median B/A CPU per request: {_num(report['median_cpu_ratio_b_over_a'], 3)}"]
    return "\n".join(lines)
