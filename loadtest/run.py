"""One headless Locust run with the project's locustfile, and its report.

`run_load` starts the real ``locust`` CLI as a subprocess (``python -m locust -f
loadtest/locustfile.py --config loadtest/locust.conf --headless ...``) and writes into ``out``:

- ``locust_stats.csv``, ``locust_stats_history.csv``, ``locust_failures.csv``,
  ``locust_exceptions.csv`` and ``report.html`` (Locust's own);
- ``locust_stats_final.json`` (Locust's final stats, which the summary is computed from: the
  CSVs are snapshots taken every second), ``checks.json`` (the locustfile's label check) and
  ``locust.log`` (Locust's output);
- ``summary.json``: one flat object (`SUMMARY_KEYS` and a few more);
- ``timeline.png``: throughput and latency percentiles over the run.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing global

from loadtest.modelclient import BackendError, connect
from loadtest.servers import ROOT, model_available
from loadtest.targets import TARGETS, payload_kinds

LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
LOCUST_CONF = ROOT / "loadtest" / "locust.conf"
CSV_PREFIX = "locust"
READY_GRACE_SECONDS = 60.0
STATS_JSON = "locust_stats_final"  # Locust's --json-file (it adds .json): written after the end
#: What a run measured (compare's table shows these per row).
MEASUREMENT_KEYS = (
    "requests_per_second",
    "images_per_second",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "requests",
    "failures",
    "fail_ratio",
    "wrong_labels",
)
SUMMARY_KEYS = (
    *MEASUREMENT_KEYS,
    "users",
    "duration_s",
    "target",
    "host",
    "batch_size",
)
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


class LoadTestError(RuntimeError):
    """The load test could not run (Locust failed, or left no report)."""


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (a server's log can follow it), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Unreachable(LoadTestError):
    """The target did not answer as ready before the run."""


def parse_duration(text: str) -> float:
    """Seconds in a Locust run time: ``30`` (s), ``10s``, ``2m``, ``1h30m``; ValueError else."""
    text = text.strip()
    if text.isdigit():
        seconds = int(text)
    else:
        m = _DURATION.fullmatch(text)
        if not text or not m or not any(m.groups()):
            raise ValueError(f"bad duration {text!r}: expected e.g. 10s, 2m or 1h30m")
        h, mi, s = (int(g or 0) for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    if seconds <= 0:
        raise ValueError(f"bad duration {text!r}: must be longer than 0s")
    return float(seconds)


@dataclass(frozen=True)
class LoadSpec:
    """What to load, how hard and for how long; where the artefacts go."""

    target: str
    host: str
    users: int
    spawn_rate: float
    duration: str
    out: Path
    batch_size: int = 1
    payload: str = "auto"
    images: int = 1000
    request_timeout: float = 10.0
    processes: int = 1
    throughput: float = 0.0  # requests/s of all users together; 0: as fast as they can
    extra_args: tuple[str, ...] = field(default=())

    def validate(self) -> None:
        """ValueError with a one-line message for any setting Locust would reject later."""
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; expected {', '.join(TARGETS)}")
        if self.users < 1 or self.spawn_rate <= 0:
            raise ValueError("users must be >= 1 and the spawn rate > 0")
        if self.images < 1 or self.request_timeout <= 0:
            raise ValueError("images must be >= 1 and the request timeout > 0")
        if self.processes < 1:
            raise ValueError("processes must be >= 1")
        if not 0 <= self.throughput < float("inf"):
            raise ValueError(f"throughput must be a finite number >= 0, got {self.throughput}")
        parse_duration(self.duration)
        if self.target == "gateway":
            payload_kinds(self.payload, self.batch_size)
        elif self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.target == "peer" and "--peer" not in self.extra_args:
            raise ValueError("the peer target needs --peer NAME")
        if self.target == "grpc":
            if self.host.startswith(("http://", "https://")):
                raise ValueError(f"the grpc target takes grpc://host:port, got {self.host!r}")
        elif not self.host.startswith(("http://", "https://")):
            raise ValueError(f"the {self.target} target takes http://host:port, got {self.host!r}")


def check_reachable(spec: LoadSpec) -> None:
    """`Unreachable` unless the target answers as ready (so a typo fails in a second)."""
    if spec.target == "gateway":
        _wait_gateway_ready(spec.host.rstrip("/"))
    elif spec.target == "rest":
        if not model_available(spec.host.rstrip("/")):
            raise Unreachable(f"no model AVAILABLE at {spec.host} (GET /v1/models/<name>)")
    elif spec.target == "peer":
        return  # peers have no common readiness API; `compare` starts them and waits for them
    else:
        address = spec.host if spec.host.startswith("grpc://") else f"grpc://{spec.host}"
        client = connect(address, timeout=5.0)
        try:
            states = client.status()
        except BackendError as exc:
            raise Unreachable(f"gRPC model server {spec.host} is not reachable: {exc}") from None
        finally:
            client.close()
        if not any(s.state == "AVAILABLE" for s in states):
            raise Unreachable(f"gRPC model server {spec.host} has no version AVAILABLE")


def _wait_gateway_ready(host: str) -> None:
    """Return once ``GET /readyz`` answers 200; `Unreachable` if nothing answers, or if it
    keeps answering "not ready" for `READY_GRACE_SECONDS` (each gunicorn worker loads its own
    model, so right after start-up one worker may answer 503 while the other serves)."""
    grace = READY_GRACE_SECONDS
    deadline = time.monotonic() + grace
    while True:
        try:
            with urllib.request.urlopen(f"{host}/readyz", timeout=5) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                raise Unreachable(f"gateway {host}: GET /readyz answered {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise Unreachable(f"gateway {host} is not reachable (GET /readyz: {exc})") from None
        if time.monotonic() >= deadline:
            raise Unreachable(f"gateway {host} is not ready after {grace:g}s (GET /readyz: 503)")
        time.sleep(0.2)


def locust_argv(spec: LoadSpec) -> list[str]:
    """The ``locust`` command line for ``spec``."""
    out = spec.out.resolve()
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--config",
        str(LOCUST_CONF),
        "--headless",
        "--only-summary",
        "--host",
        spec.host,
        "--users",
        str(spec.users),
        "--spawn-rate",
        f"{spec.spawn_rate:g}",
        "--run-time",
        spec.duration,
        "--csv",
        str(out / CSV_PREFIX),
        "--html",
        str(out / "report.html"),
        "--json-file",
        str(out / STATS_JSON),
        # failures are judged by `evaluate`, from the CSVs; Locust's exit code then means
        # "Locust itself went wrong"
        "--exit-code-on-error",
        "0",
        "--target",
        spec.target,
        "--batch-size",
        str(spec.batch_size),
        "--payload",
        spec.payload,
        "--images",
        str(spec.images),
        "--request-timeout",
        f"{spec.request_timeout:g}",
        "--check-stats-file",
        str(out / "checks.json"),
    ]
    if spec.throughput:
        argv += ["--throughput", f"{spec.throughput:g}"]
    if spec.processes > 1:
        argv += ["--processes", str(spec.processes)]
    return argv + list(spec.extra_args)


def _number(text: str) -> float | None:
    return None if text in ("", "N/A") else float(text)


def percentile(response_times: dict[float, int], count: int, fraction: float) -> float | None:
    """Locust's percentile of its ``response_times`` histogram (same rule as its reports)."""
    if count == 0:
        return None
    keep = int(count * fraction)
    seen = 0
    for ms in sorted(response_times, reverse=True):
        seen += response_times[ms]
        if count - seen <= keep:
            return float(ms)
    return 0.0


def aggregate(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests, failures, requests/s and p50/p95/p99 over all of Locust's stats entries."""
    requests = sum(int(e["num_requests"]) for e in entries)
    failures = sum(int(e["num_failures"]) for e in entries)
    times: Counter[float] = Counter()
    for e in entries:
        for ms, n in e["response_times"].items():
            times[float(ms)] += int(n)
    start = min((float(e["start_time"]) for e in entries), default=0.0)
    last = max((float(e["last_request_timestamp"] or 0) for e in entries), default=0.0)
    return {
        "requests": requests,
        "failures": failures,
        "requests_per_second": requests / (last - start) if last > start else 0.0,
        **{f"p{p}_ms": percentile(times, requests, p / 100) for p in (50, 95, 99)},
    }


def summarize(spec: LoadSpec) -> dict[str, Any]:
    """The flat summary of a finished run, from Locust's final stats and the label check."""
    stats_path = spec.out / f"{STATS_JSON}.json"
    checks_path = spec.out / "checks.json"
    for path in (stats_path, checks_path):
        if not path.is_file():
            raise LoadTestError(f"the run left no {path.name} (log: {spec.out / 'locust.log'})")
    agg = aggregate(json.loads(stats_path.read_text()))
    checks = json.loads(checks_path.read_text())
    requests, failures = agg["requests"], agg["failures"]
    rps = agg["requests_per_second"]
    images_checked = int(checks["images_checked"])
    wrong = int(checks["wrong_labels"])
    return {
        "requests_per_second": round(rps, 2),
        "images_per_second": round(rps * spec.batch_size, 2),
        "p50_ms": agg["p50_ms"],
        "p95_ms": agg["p95_ms"],
        "p99_ms": agg["p99_ms"],
        "requests": requests,
        "failures": failures,
        "fail_ratio": round(failures / requests, 6) if requests else 1.0,
        "wrong_labels": wrong,
        "images_checked": images_checked,
        "wrong_label_ratio": round(wrong / images_checked, 6) if images_checked else None,
        "labelled": bool(checks["labelled"]),
        "images_source": checks["images_source"],
        "users": spec.users,
        "spawn_rate": spec.spawn_rate,
        "duration_s": parse_duration(spec.duration),
        "target": spec.target,
        "host": spec.host,
        "batch_size": spec.batch_size,
        "payload": ",".join(payload_kinds(spec.payload, spec.batch_size))
        if spec.target == "gateway"
        else "",
        "processes": spec.processes,
        "throughput_target": spec.throughput,
    }


def evaluate(
    summary: dict[str, Any], *, max_fail_ratio: float | None, max_p99_ms: float | None
) -> list[str]:
    """The thresholds ``summary`` crosses, one message each (empty: all passed)."""
    crossed = []
    if summary["requests"] == 0:
        crossed.append("no request completed")
    if max_fail_ratio is not None and summary["fail_ratio"] > max_fail_ratio:
        crossed.append(f"fail ratio {summary['fail_ratio']:.4f} > {max_fail_ratio:g}")
    p99 = summary["p99_ms"]
    if max_p99_ms is not None and (p99 is None or p99 > max_p99_ms):
        crossed.append(f"p99 {p99} ms > {max_p99_ms:g} ms")
    return crossed


def _plot_value(text: str) -> float:
    value = _number(text)
    return float("nan") if value is None else value  # a gap in the line


def plot_timeline(history_csv: Path, png: Path, *, batch_size: int, title: str) -> None:
    """Throughput (requests/s, images/s, failures/s) and p50/p95/p99 over time.

    Throughput comes from the growth of the total counts between the history's one-second
    snapshots (Locust's own "Requests/s" column is a trailing average that stays 0 for the
    first seconds of a run).
    """
    with history_csv.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["Name"] == "Aggregated"]
    if not rows:
        raise LoadTestError(f"{history_csv} has no snapshot: the run was too short")
    t0 = int(rows[0]["Timestamp"])
    t = [int(r["Timestamp"]) - t0 for r in rows]

    def rate(column: str) -> list[float]:
        counts = [int(r[column]) for r in rows]
        return [0.0] + [
            (counts[i] - counts[i - 1]) / max(t[i] - t[i - 1], 1) for i in range(1, len(rows))
        ]

    fig = Figure(figsize=(9, 6))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    rps = rate("Total Request Count")
    ax1.plot(t, rps, ".-", label="requests/s")
    if batch_size > 1:
        ax1.plot(t, [x * batch_size for x in rps], ".-", label="images/s")
    ax1.plot(t, rate("Total Failure Count"), ".-", label="failures/s", color="tab:red")
    ax1.set_ylabel("per second")
    ax1.legend(loc="lower right")
    ax1.set_title(title)
    for pct in ("50%", "95%", "99%"):
        ax2.plot(t, [_plot_value(r[pct]) for r in rows], ".-", label=f"p{pct[:-1]}")
    ax2.set_ylabel("latency (ms)")
    ax2.set_xlabel("seconds since start")
    ax2.legend(loc="upper right")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def run_load(
    spec: LoadSpec,
    *,
    max_fail_ratio: float | None = None,
    max_p99_ms: float | None = None,
    check_host: bool = True,
) -> dict[str, Any]:
    """Run Locust for ``spec``, write every artefact into ``spec.out``, return the summary.

    The summary carries the thresholds and ``thresholds_crossed`` (see `evaluate`). Raises
    ValueError for bad settings and LoadTestError when the target is unreachable or Locust
    fails; failed requests are not errors here, they are counted.
    """
    spec.validate()
    if check_host:
        check_reachable(spec)
    spec.out.mkdir(parents=True, exist_ok=True)
    log_path = spec.out / "locust.log"
    timeout = parse_duration(spec.duration) + 120  # start-up, body encoding, stop timeout
    with log_path.open("wb") as log_file:
        try:
            proc = subprocess.run(
                locust_argv(spec),
                cwd=ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise LoadTestError(
                f"locust did not finish within {timeout:g}s; see {log_path}"
            ) from None
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise LoadTestError(f"locust exited with {proc.returncode}: {tail[0]} (log: {log_path})")
    summary = summarize(spec)
    summary["max_fail_ratio"], summary["max_p99_ms"] = max_fail_ratio, max_p99_ms
    summary["thresholds_crossed"] = evaluate(
        summary, max_fail_ratio=max_fail_ratio, max_p99_ms=max_p99_ms
    )
    (spec.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_timeline(
        spec.out / f"{CSV_PREFIX}_stats_history.csv",
        spec.out / "timeline.png",
        batch_size=spec.batch_size,
        title=f"{spec.target} {spec.host}: {spec.users} users, batch {spec.batch_size}",
    )
    return summary
