"""``python -m loadtest compare``: every configuration loaded the same way, one after another.

Each row of the registry (`loadtest.registry`) is started through ``loadtest.servers``, loaded
by the same headless Locust run (same users, spawn rate, duration and images; `loadtest.run`),
stopped, and the next one started, so only one configuration loads the machine at a time.
The project's own rows are here (`builtin`); peers, floors and the model limit come from the
plug-in modules in `PLUGINS`, each exporting ``configurations() -> list[Entry]``. A row that
cannot run (a peer whose venv is absent) is reported as skipped with the reason and the
command that fixes it; a row that fails to start or to load is reported as an error.

With ``rounds`` > 1 the whole sequence runs that many times, and the table shows each
configuration's median over the rounds: on a shared machine one configuration's requests/s
moves by 15-25% from one minute to the next. After the table comes the verdict on the
project's performance targets (`loadtest.verdict`): ratios of rows of the same round, and
their median over the rounds.

Artefacts in ``out``: one folder per row (``round-N/`` per round when there are several; the
`loadtest.run` artefacts), ``compare.json`` (settings, every round's rows, the medians and the
verdict), ``compare.md`` (what is printed to stdout) and ``compare.png`` (bars of the medians).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import importlib
import json
import logging
import math
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from loadtest import verdict
from loadtest.images import images_source, load_images
from loadtest.procstats import CpuMeter
from loadtest.registry import Configuration, Context, Entry, Measurement
from loadtest.run import MEASUREMENT_KEYS, LoadSpec, LoadTestError, first_line, run_load
from loadtest.servers import ROOT, StartError, start_gateway, start_modelserver

log = logging.getLogger("loadtest.compare")

PLUGINS = ("loadtest.peers", "loadtest.floors", "loadtest.model_limit")
BATCHING_CONFIG = ROOT / "serving" / "config" / "batching.config"
# GATEWAY_* settings of the caller's environment that compare must not pass on: it sets them
GATEWAY_OWN = ("GATEWAY_BACKEND", "GATEWAY_HOST", "GATEWAY_PORT")
#: CPU per request of a Locust row: the servers' processes (every descendant alive at the row's
#: end, with what it reaped; a model server shared with other rows included) and Locust's. Unlike requests/s, these move
#: much less when a shared machine lends the benchmark more or fewer cores.
CPU_KEYS = ("server_cpu_ms_per_request", "locust_cpu_ms_per_request")
ROW_KEYS = (*MEASUREMENT_KEYS, "images_checked", *CPU_KEYS)


# -- the project's own configurations -----------------------------------------------------------
def _modelserver(ctx: Context):
    """One model server (TF Serving's batching on, as deployed) shared by the rows behind it."""
    return ctx.shared(
        "modelserver",
        lambda: start_modelserver(
            ctx.model_dir,
            "--enable_batching",
            f"--batching_parameters_file={BATCHING_CONFIG}",
            "--log_level=WARNING",
            timeout=120.0,
        ),
    )


@contextlib.contextmanager
def _gateway_embedded(ctx: Context) -> Iterator[str]:
    with start_gateway(f"embedded:{ctx.model_dir}", env=ctx.gateway_env, timeout=180) as gw:
        yield gw.url


@contextlib.contextmanager
def _gateway_grpc(ctx: Context) -> Iterator[str]:
    backend = f"grpc://{_modelserver(ctx).target}"
    with start_gateway(backend, env=ctx.gateway_env, timeout=120) as gw:
        yield gw.url


@contextlib.contextmanager
def _gateway_rest(ctx: Context) -> Iterator[str]:
    with start_gateway(_modelserver(ctx).url, env=ctx.gateway_env, timeout=120) as gw:
        yield gw.url


@contextlib.contextmanager
def _modelserver_grpc(ctx: Context) -> Iterator[str]:
    yield f"grpc://{_modelserver(ctx).target}"


def builtin() -> list[Entry]:
    """The gateway with each backend and the model server direct, at batch 1 and 64."""
    rows: list[Entry] = []
    for batch in (1, 64):
        suffix = "" if batch == 1 else f" x{batch}"
        rows += [
            Configuration(f"gateway embedded{suffix}", "gateway", _gateway_embedded, batch),
            Configuration(f"gateway → model server gRPC{suffix}", "gateway", _gateway_grpc, batch),
            Configuration(f"model server gRPC direct{suffix}", "grpc", _modelserver_grpc, batch),
        ]
    # REST at batch 64 would measure JSON encoding of 50,000 floats, not serving: batch 1 only.
    rows.insert(2, Configuration("gateway → model server REST", "gateway", _gateway_rest))
    return rows


@dataclass(frozen=True)
class MissingPlugin:
    """A plug-in module that is not in this checkout (reported as a skipped row)."""

    module: str
    name: str
    group: str = "plug-in"

    def available(self) -> str:
        """Why the row cannot run."""
        return f"{self.module} is not in this checkout"


def registry() -> list[Entry | MissingPlugin]:
    """Built-in rows, then each plug-in module's ``configurations()``, in `PLUGINS` order."""
    entries: list[Entry | MissingPlugin] = list(builtin())
    for module in PLUGINS:
        try:
            # plug-ins are optional parts of the tree, found by name (not a top-level import)
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise  # the plug-in exists but something it imports is missing: a real error
            entries.append(MissingPlugin(module, module))
            continue
        entries.extend(mod.configurations())
    return entries


# -- running ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """The load every row gets, and where the artefacts go."""

    model_dir: Path
    out: Path
    users: int = 32
    spawn_rate: float = 32.0
    duration: str = "20s"
    images: int = 1000
    processes: int = 1
    gateway_env: tuple[tuple[str, str], ...] = ()
    rounds: int = 1


def slug(name: str) -> str:
    """A folder name for a row name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def select(entries: Sequence[Any], patterns: Sequence[str]) -> list[Any]:
    """The entries whose name or group matches one of the shell-style ``patterns`` (all if
    none), e.g. ``"gateway*"`` or ``peer``."""
    if not patterns:
        return list(entries)
    return [
        e
        for e in entries
        if any(fnmatch.fnmatchcase(e.name, p) or fnmatch.fnmatchcase(e.group, p) for p in patterns)
    ]


def gateway_env_from(
    environ: dict[str, str],
    workers: int | None,
    threads: int | None,
    worker_class: str | None = None,
) -> dict:
    """The caller's GATEWAY_* settings (minus what compare sets itself) and the flags."""
    env = {k: v for k, v in environ.items() if k.startswith("GATEWAY_") and k not in GATEWAY_OWN}
    env.setdefault("GATEWAY_LOG_LEVEL", "WARNING")
    if worker_class is not None:
        env["GATEWAY_WORKER_CLASS"] = worker_class
    if workers is not None:
        env["GATEWAY_WORKERS"] = str(workers)
    if threads is not None:
        env["GATEWAY_THREADS"] = str(threads)
    return env


def _row(entry: Any, status: str, **values: Any) -> dict[str, Any]:
    base = {
        "name": entry.name,
        "group": entry.group,
        "target": getattr(entry, "target", ""),
        "batch_size": getattr(entry, "batch_size", None),
        "status": status,
        "reason": "",
        "note": getattr(entry, "note", ""),
    }
    return base | {k: None for k in ROW_KEYS} | values


def _load_row(entry: Configuration, ctx: Context, settings: Settings, out: Path) -> dict[str, Any]:
    try:
        with entry.start(ctx) as host:
            spec = LoadSpec(
                target=entry.target,
                host=host,
                users=settings.users,
                spawn_rate=settings.spawn_rate,
                duration=settings.duration,
                out=out,
                batch_size=entry.batch_size,
                images=settings.images,
                processes=settings.processes,
                extra_args=entry.locust_args,
            )
            with CpuMeter() as cpu:
                summary = run_load(spec)
    except (StartError, LoadTestError, ValueError) as exc:
        out.mkdir(parents=True, exist_ok=True)
        (out / "error.log").write_text(str(exc))
        return _row(entry, "error", reason=f"{first_line(exc)} (details: {out / 'error.log'})")
    values = {k: summary.get(k) for k in ROW_KEYS}
    requests = summary.get("requests") or 0
    if requests:
        values["server_cpu_ms_per_request"] = round(1000 * cpu.servers_s / requests, 3)
        values["locust_cpu_ms_per_request"] = round(1000 * cpu.reaped_s / requests, 3)
    if not entry.count_labels:
        values["wrong_labels"] = values["images_checked"] = None
    return _row(entry, "ok", out=str(out), **values)


def run_compare(entries: Sequence[Any], settings: Settings) -> list[dict[str, Any]]:
    """Load every entry in turn, ``settings.rounds`` times over; one row per entry and round
    (measurements may give several), each with its ``round`` (0-based)."""
    settings.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    # The load test images, loaded when a measurement first needs them (once per run).
    images = functools.cache(lambda: load_images(settings.images))
    with contextlib.ExitStack() as stack:
        ctx = Context(settings.model_dir, dict(settings.gateway_env), stack)
        for n in range(settings.rounds):
            out = settings.out / f"round-{n}" if settings.rounds > 1 else settings.out
            if settings.rounds > 1:
                log.info("round %d of %d", n + 1, settings.rounds)
            rows += [row | {"round": n} for row in _run_round(entries, ctx, settings, out, images)]
    return rows


def _run_round(
    entries: Sequence[Any], ctx: Context, settings: Settings, out: Path, images: Callable[[], Any]
) -> list[dict[str, Any]]:
    """One pass over the entries, artefacts under ``out``."""
    rows: list[dict[str, Any]] = []
    for entry in entries:
        reason = entry.available()  # a MissingPlugin's says it is not in this checkout
        if reason:
            rows.append(_row(entry, "skipped", reason=reason))
            log.info("%s: skipped (%s)", entry.name, reason)
            continue
        log.info("%s: starting ...", entry.name)
        started = time.monotonic()
        if isinstance(entry, Measurement):
            try:
                rows += [_row(entry, "ok", **values) for values in entry.measure(ctx, images())]
            except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as exc:
                rows.append(_row(entry, "error", reason=first_line(exc)))
        else:
            rows.append(_load_row(entry, ctx, settings, out / slug(entry.name)))
        log.info("%s: %s (%.0f s)", entry.name, rows[-1]["status"], time.monotonic() - started)
    return rows


# -- reporting ----------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table (skipped and failed rows say why)."""
    head = (
        "| configuration | target | batch | req/s | images/s | p50 ms | p95 ms | p99 ms "
        "| requests | failures | wrong labels | server CPU ms/req | Locust CPU ms/req | status |"
    )
    lines = [
        head,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| --- |",
    ]
    for r in rows:
        wrong = r["wrong_labels"]
        wrong_text = (
            f"{wrong:,} / {r['images_checked']:,}"
            if wrong is not None and r["images_checked"]
            else "—"
        )
        status = r["status"] if not r["reason"] else f"{r['status']}: {r['reason']}"
        lines.append(
            f"| {r['name']} | {r['target'] or '—'} | {_fmt(r['batch_size'])} "
            f"| {_fmt(r['requests_per_second'])} | {_fmt(r['images_per_second'])} "
            f"| {_fmt(r['p50_ms'], 1)} | {_fmt(r['p95_ms'], 1)} | {_fmt(r['p99_ms'], 1)} "
            f"| {_fmt(r['requests'])} | {_fmt(r['failures'])} | {wrong_text} "
            f"| {_fmt(r['server_cpu_ms_per_request'], 2)} "
            f"| {_fmt(r['locust_cpu_ms_per_request'], 2)} | {status} |"
        )
    return "\n".join(lines)


def bar_chart(rows: Sequence[dict[str, Any]], png: Path, title: str) -> None:
    """Horizontal bars: requests/s, images/s and p99 of every row that ran."""
    ran = [r for r in rows if r["status"] == "ok"]
    if not ran:
        return
    panels = (
        ("requests_per_second", "requests/s"),
        ("images_per_second", "images/s"),
        ("p99_ms", "p99 ms"),
    )
    fig = Figure(figsize=(14, 1.5 + 0.4 * len(ran)))
    axes = fig.subplots(1, len(panels), sharey=True)
    names = [r["name"] for r in ran]
    colors = {"ours": "tab:blue", "peer": "tab:orange", "floor": "tab:gray", "limit": "tab:green"}
    for ax, (key, label) in zip(axes, panels, strict=True):
        values = [r[key] if isinstance(r[key], int | float) else 0.0 for r in ran]
        ax.barh(names, values, color=[colors.get(r["group"], "tab:purple") for r in ran])
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def write_report(rows: Sequence[dict[str, Any]], settings: Settings) -> str:
    """compare.json, compare.md and compare.png in ``settings.out``; returns the report: the
    table (medians over the rounds when there are several) and the verdict on the targets."""
    title = (
        f"{settings.users} users, spawn rate {settings.spawn_rate:g}/s, {settings.duration} "
        f"per row, {settings.images} images, {os.cpu_count()} CPUs"
    )
    source = images_source(settings.images)
    medians = verdict.median_rows(rows) if settings.rounds > 1 else list(rows)
    verdicts = verdict.judge(rows)
    if settings.rounds > 1:
        title += f"; each row the median of {settings.rounds} rounds"
    table = (
        f"{title}\n\nImages: {source}.\n\n{markdown_table(medians)}\n\n"
        f"Targets (ratios of rows of the same round, above 1 where ours is better; the median "
        f"over the rounds decides):\n\n{verdict.markdown(verdicts)}\n"
    )
    doc = {
        "settings": {
            "model_dir": str(settings.model_dir),
            "users": settings.users,
            "spawn_rate": settings.spawn_rate,
            "duration": settings.duration,
            "images": settings.images,
            "images_source": source,
            "processes": settings.processes,
            "gateway_env": dict(settings.gateway_env),
            "rounds": settings.rounds,
        },
        "rows": list(rows),
        "medians": medians,
        "targets": verdicts,
    }
    (settings.out / "compare.json").write_text(json.dumps(doc, indent=1) + "\n")
    (settings.out / "compare.md").write_text(table)
    bar_chart(medians, settings.out / "compare.png", title)
    return table
