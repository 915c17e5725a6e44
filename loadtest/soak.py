"""``python -m loadtest soak``: sustained load on a gateway, with resource growth checks.

`run_soak` copies the newest version of ``model_dir`` into a scratch base path, starts the
gateway (``embedded:`` on it, or ``grpc://`` / ``http://`` to a ``serving.modelserver`` on it)
through ``loadtest.servers``, and drives the locustfile's gateway users through
`loadtest.run.run_load` at a fixed rate: ``rate`` requests/s, or ``fraction`` of the peak that
a first unpaced run of ``peak_duration`` measured. Meanwhile `loadtest.procstats.Sampler`
records RSS, open fds and threads of every process (gateway master and workers, model
server) and the size and file count of the gateway's prometheus multiprocess dir, and, with
``swap_every_s``, `loadtest.versions.VersionSwapper` publishes a new version (a copy) and
removes the oldest every so many seconds.

Growth is judged after ``warmup``, on two windows of 10% of the measured time (at least 3
samples, and at least one version-swap interval): the first after warm-up (the baseline) and the
last (the end). RSS: the end's floor (its lowest sample) against the baseline's, so the brief
peak of loading a new version next to the old one is not growth, while a leak raises the floor
between swaps as well. Open fds and threads: the end's median against the highest count seen
in the first half of the measured time, so a pool that fills up to its bound early on (a
gthread or gRPC pool grows one thread at a time, on demand) is not growth, but a count that
keeps rising (one more per request or version swap) ends above everything in the first half.
Metrics dir: any file or byte more at the end than in the baseline. The soak fails
(`SoakResult.crossed`) on any failed request, RSS growth above ``max_rss_growth`` in any
process, fd or thread growth beyond ``max_fd_growth`` / ``max_thread_growth``, any growth of
the metrics dir, a process that died or appeared, a failed swap, or p99 above ``max_p99_ms``.

Artefacts in ``out``: ``peak/`` and ``load/`` (the `loadtest.run` artefacts of each Locust
run), ``samples.json`` (every sample), ``resources.png`` and ``soak.json`` (settings, rate,
load summary, per-process growth, swaps, thresholds crossed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from loadtest.compare import BATCHING_CONFIG
from loadtest.procstats import Sampler
from loadtest.run import LoadSpec, parse_duration, run_load
from loadtest.servers import Server, StartError, http_ok, start_gateway, start_modelserver
from loadtest.versions import VersionSwapper
from serving.contract import MODEL_NAME, list_versions

log = logging.getLogger("loadtest.soak")

BACKENDS = ("embedded", "grpc", "rest")
WINDOW_FRACTION = 0.1  # of the measured (post-warm-up) time, for the baseline and end windows
MIN_WINDOW_SAMPLES = 3


@dataclass(frozen=True)
class SoakSettings:
    """What to soak, how hard, for how long, and the thresholds (see the module docstring)."""

    model_dir: Path
    out: Path
    backend: str = "grpc"
    duration: str = "10m"
    warmup: str = "1m"
    users: int = 32
    rate: float | None = None  # requests/s; None: fraction x the measured peak
    fraction: float = 0.8
    peak_duration: str = "20s"
    swap_every_s: float = 0.0  # 0: no version swaps
    sample_every_s: float = 1.0
    poll_s: float = 1.0  # how often the model server / embedded backend polls the base path
    images: int = 1000
    max_rss_growth: float = 0.10
    max_fd_growth: int = 0
    # gRPC's C core sizes its own thread pool ("event_engine" threads, one "lifeguard" adding
    # more while all are busy) and may keep a thread or two it added in a late burst; a leak of
    # one per swap or per request grows far more than 2 over a soak.
    max_thread_growth: int = 2
    max_p99_ms: float | None = None
    gateway_env: tuple[tuple[str, str], ...] = field(default=())

    def validate(self) -> None:
        """ValueError with a one-line message for a setting that cannot work."""
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; expected {', '.join(BACKENDS)}")
        if not list_versions(self.model_dir):
            raise ValueError(f"no exported version under {self.model_dir}")
        if parse_duration(self.warmup) >= parse_duration(self.duration):
            raise ValueError(f"warm-up {self.warmup} must be shorter than the duration")
        parse_duration(self.peak_duration)
        if self.rate is not None and not 0 < self.rate < float("inf"):
            raise ValueError(f"rate must be a finite number > 0, got {self.rate}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.swap_every_s < 0 or self.sample_every_s <= 0 or self.poll_s <= 0:
            raise ValueError("swap interval must be >= 0, sample interval and poll > 0")


@dataclass
class SoakResult:
    """The soak's report (``soak.json``); ``crossed`` empty means it passed."""

    report: dict[str, Any]
    crossed: list[str]


@contextlib.contextmanager
def _stack(s: SoakSettings, base: Path) -> Iterator[tuple[Server, dict[str, int]]]:
    """The gateway (and model server) on ``base``; yields the gateway and every root pid."""
    env = dict(s.gateway_env)
    with contextlib.ExitStack() as stack:
        roots: dict[str, int] = {}
        if s.backend == "embedded":
            backend = f"embedded:{base}"
            env["GATEWAY_MODEL_POLL_SECONDS"] = f"{s.poll_s:g}"
        else:
            ms = stack.enter_context(
                start_modelserver(
                    base,
                    "--enable_batching",
                    f"--batching_parameters_file={BATCHING_CONFIG}",
                    f"--file_system_poll_wait_seconds={s.poll_s:g}",
                    "--log_level=WARNING",
                    timeout=120.0,
                )
            )
            roots["modelserver"] = ms.proc.pid
            backend = f"grpc://{ms.target}" if s.backend == "grpc" else ms.url
        gw = stack.enter_context(start_gateway(backend, env=env, timeout=180.0))
        roots["gateway"] = gw.proc.pid
        yield gw, roots


def wait_steady(url: str, *, in_a_row: int = 10, timeout: float = 180.0) -> None:
    """Until ``in_a_row`` consecutive ``/readyz`` answer 200: the launcher waits for one, but
    each embedded gateway worker loads its own model, and a soak starts when all are ready."""
    deadline = time.monotonic() + timeout
    streak = 0
    while streak < in_a_row:
        if time.monotonic() > deadline:
            raise StartError(f"gateway {url} not steadily ready after {timeout:g}s")
        streak = streak + 1 if http_ok(f"{url}/readyz") else 0
        time.sleep(0.05 if streak else 0.5)


def _spec(s: SoakSettings, host: str, out: Path, duration: str, rate: float) -> LoadSpec:
    return LoadSpec(
        target="gateway",
        host=host,
        users=s.users,
        spawn_rate=float(s.users),
        duration=duration,
        out=out,
        images=s.images,
        throughput=rate,
    )


def run_soak(s: SoakSettings) -> SoakResult:
    """Run the soak of ``s`` and write its artefacts (raises ValueError / LoadTestError /
    StartError when it cannot run at all)."""
    s.validate()
    s.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="convserve-soak-"))
    try:
        base = scratch / MODEL_NAME
        newest = list_versions(s.model_dir)[-1]
        shutil.copytree(s.model_dir / str(newest), base / str(newest))
        with _stack(s, base) as (gw, roots):
            wait_steady(gw.url)
            peak = None
            rate = s.rate
            if rate is None:
                peak = run_load(_spec(s, gw.url, s.out / "peak", s.peak_duration, 0.0))
                rate = round(peak["requests_per_second"] * s.fraction, 1)
                log.info("peak %.1f req/s: soaking at %.1f", peak["requests_per_second"], rate)
            sampler = Sampler(roots, dirs={"metrics": gw.metrics_dir}, interval_s=s.sample_every_s)
            swapper = VersionSwapper(base, s.swap_every_s) if s.swap_every_s else None
            with sampler, swapper or contextlib.nullcontext():
                load = run_load(
                    _spec(s, gw.url, s.out / "load", s.duration, rate),
                    max_fail_ratio=None,  # any failure, reported below with its count
                    max_p99_ms=s.max_p99_ms,
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _report(s, rate, peak, load, sampler.samples, swapper)


def _report(
    s: SoakSettings,
    rate: float,
    peak: dict[str, Any] | None,
    load: dict[str, Any],
    samples: list[dict[str, Any]],
    swapper: VersionSwapper | None,
) -> SoakResult:
    warmup_s = parse_duration(s.warmup)
    growth = resource_growth(samples, warmup_s, s.swap_every_s)
    crossed = list(load["thresholds_crossed"])
    if load["failures"]:
        crossed.append(f"{load['failures']} of {load['requests']} requests failed")
    if peak is not None and peak["failures"]:
        crossed.append(f"{peak['failures']} requests failed while the peak was measured")
    crossed += growth_crossed(growth, s)
    swaps = None
    if swapper is not None:
        swaps = {"published": swapper.published, "removed": swapper.removed, "error": swapper.error}
        if swapper.error:
            crossed.append(swapper.error)
        elif not swapper.published:
            crossed.append("no version swap happened (the soak is shorter than --swap-every)")
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()},
        "rate": rate,
        "peak_requests_per_second": peak["requests_per_second"] if peak else None,
        "load": load,
        "growth": growth,
        "swaps": swaps,
        "thresholds_crossed": crossed,
    }
    (s.out / "samples.json").write_text(json.dumps(samples) + "\n")
    (s.out / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_resources(samples, s.out / "resources.png", warmup_s)
    return SoakResult(report, crossed)


def _windows(
    samples: list[dict[str, Any]], warmup_s: float, min_span_s: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The baseline (first after warm-up) and end (last) sample windows, each spanning at
    least ``min_span_s`` when half the measured samples allow it, and the first half of the
    samples after warm-up."""
    measured = [x for x in samples if x["t"] >= warmup_s]
    if len(measured) < 2 * MIN_WINDOW_SAMPLES:
        raise ValueError(
            f"only {len(measured)} samples after the warm-up: make the soak longer than "
            "the warm-up by a few sample intervals"
        )
    n = max(MIN_WINDOW_SAMPLES, int(len(measured) * WINDOW_FRACTION))
    while n < len(measured) // 2 and measured[n - 1]["t"] - measured[0]["t"] < min_span_s:
        n += 1
    return measured[:n], measured[-n:], measured[: len(measured) // 2]


def resource_growth(
    samples: list[dict[str, Any]], warmup_s: float, min_window_s: float = 0.0
) -> dict[str, Any]:
    """Per process and directory: the baseline and end values and their growth; each window
    spans at least ``min_window_s`` (the version-swap interval) where the samples allow."""
    first, last, first_half = _windows(samples, warmup_s, min_window_s)
    keys_first = {k for x in first for k in x["processes"]}
    keys_last = {k for x in last for k in x["processes"]}
    processes: dict[str, Any] = {}
    for key in sorted(keys_first & keys_last):
        row: dict[str, Any] = {}
        for metric in ("rss_bytes", "fds", "threads"):
            before = [x["processes"][key][metric] for x in first if key in x["processes"]]
            after = [x["processes"][key][metric] for x in last if key in x["processes"]]
            if metric == "rss_bytes":  # the floor of each window
                row[metric] = {"baseline": min(before), "end": min(after)}
                continue
            row[metric] = {  # counts: the end's median against the first half's highest
                "baseline": statistics.median(before),
                "end": statistics.median(after),
                "max_first_half": max(
                    x["processes"][key][metric] for x in first_half if key in x["processes"]
                ),
            }
        rss = row["rss_bytes"]
        rss["growth"] = round(rss["end"] / rss["baseline"] - 1, 4) if rss["baseline"] else None
        processes[key] = row
    dirs: dict[str, Any] = {}
    for name in first[0]["dirs"]:
        dirs[name] = {
            metric: {
                "baseline": max(x["dirs"][name][metric] for x in first),
                "end": max(x["dirs"][name][metric] for x in last),
            }
            for metric in ("files", "bytes")
        }
    return {
        "window_samples": len(first),
        "processes": processes,
        "gone": sorted(keys_first - keys_last),
        "appeared": sorted(keys_last - keys_first),
        "dirs": dirs,
    }


def growth_crossed(growth: Mapping[str, Any], s: SoakSettings) -> list[str]:
    """The resource thresholds ``growth`` crosses, one message each."""
    out = []
    for key in growth["gone"]:
        out.append(f"process {key} went away during the soak")
    for key in growth["appeared"]:
        out.append(f"process {key} appeared during the soak (a restarted worker?)")
    for key, row in growth["processes"].items():
        rss = row["rss_bytes"]
        if rss["growth"] is not None and rss["growth"] > s.max_rss_growth:
            out.append(
                f"{key}: RSS grew {rss['growth']:.1%} ({rss['baseline'] / 2**20:.0f} -> "
                f"{rss['end'] / 2**20:.0f} MiB) > {s.max_rss_growth:.0%}"
            )
        for metric, allowed in (("fds", s.max_fd_growth), ("threads", s.max_thread_growth)):
            grew = row[metric]["end"] - row[metric]["max_first_half"]
            if grew > allowed:
                out.append(f"{key}: {metric} grew by {grew:g} (allowed {allowed})")
    for name, row in growth["dirs"].items():
        for metric in ("files", "bytes"):
            if row[metric]["end"] > row[metric]["baseline"]:
                out.append(
                    f"{name} dir: {metric} grew {row[metric]['baseline']} -> {row[metric]['end']}"
                )
    return out


def plot_resources(samples: list[dict[str, Any]], png: Path, warmup_s: float) -> None:
    """RSS, fds and threads of every process over time, the warm-up shaded."""
    fig = Figure(figsize=(9, 8))
    axes = fig.subplots(3, 1, sharex=True)
    keys = sorted({k for x in samples for k in x["processes"]})
    for ax, metric, scale, label in (
        (axes[0], "rss_bytes", 2**20, "RSS (MiB)"),
        (axes[1], "fds", 1, "open fds"),
        (axes[2], "threads", 1, "threads"),
    ):
        for key in keys:
            points = [
                (x["t"], x["processes"][key][metric] / scale)
                for x in samples
                if key in x["processes"]
            ]
            ax.plot([p[0] for p in points], [p[1] for p in points], label=key)
        ax.axvspan(0, warmup_s, color="0.9")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize="small")
    axes[0].set_title("soak: resources per process (warm-up shaded)")
    axes[2].set_xlabel("seconds since the load started")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
