"""Side-by-side throughput of the gateway under gunicorn, driven by ``wrk`` (a tool, not a test).

Starts, through `loadtest.servers` on free loopback ports and with the *same* gunicorn settings
(serving/gateway/gunicorn_conf.py, GATEWAY_WORKERS/GATEWAY_WORKER_CLASS/GATEWAY_THREADS):

- ``gateway``: ``python -m serving.gateway`` with the embedded backend on ``--model-dir``;
- ``gateway-fake``: the same app with an instant in-process backend (the gateway's own cost:
  HTTP, decoding, metrics, JSON; no model);
- ``floor``: the Flask floor of `loadtest.floors` (reads the body, answers a fixed JSON
  prediction);

then drives each with ``wrk`` (one PNG per request, ``--connections`` keep-alive connections)
for ``--rounds`` alternating rounds, and prints requests/s and latency percentiles (medians
over the rounds) plus the gateway/floor ratio. ``python -m loadtest compare`` measures the
gateway and the floors with Locust; this tool adds the instant-backend gateway and a load
generator written in C, which leaves more of the 2 cores to the servers. The machine is shared
and noisy: compare ratios from one run, not absolute numbers across runs.

Usage::

    apt-get install wrk                       # the load generator (C, cheap on the CPU)
    python -m loadtest.gateway --model-dir models/fashion_mnist \\
        --image tests/support/images/ankle_boot.png --duration 10 --rounds 3

Exit codes: 0 done, 2 bad arguments or wrk missing, 1 a server failed to start or wrk failed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.compare import gateway_env_from
from loadtest.floors import start_floor
from loadtest.servers import Server, StartError, start_gateway, start_gunicorn_app
from serving.backends import PredictResult, VersionStatus
from serving.cli_numbers import POSITIVE_FLOAT, POSITIVE_INT
from serving.contract import NUM_CLASSES
from serving.gateway import create_app

log = logging.getLogger("loadtest.gateway")
SERVERS = ("gateway", "gateway-fake", "floor")
# The instant-backend app still validates its config; this backend is never connected to.
UNUSED_BACKEND = "grpc://unused.invalid:8500"

_LUA = """
local f = io.open(os.getenv("BENCH_IMAGE"), "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "image/png"
"""


class BenchmarkError(RuntimeError):
    """wrk failed, or its output could not be read."""


class InstantBackend:
    """A `serving.backends.Backend` answering uniform probabilities at once (no model)."""

    row = np.full((1, NUM_CLASSES), 1.0 / NUM_CLASSES, np.float32)

    def predict(self, batch: np.ndarray) -> PredictResult:
        return PredictResult(np.repeat(self.row, len(batch), axis=0), 1)

    def status(self) -> list[VersionStatus]:
        return [VersionStatus(1, "AVAILABLE", "")]

    def close(self) -> None:
        pass


def fake_backend_app() -> Any:
    """The gateway app with an instant backend: everything but the model (a gunicorn factory)."""
    return create_app(backend=InstantBackend())


def starters(model_dir: Path, env: dict[str, str]) -> dict[str, Callable[[], Server]]:
    """Server name → how to start it through `loadtest.servers`, all under ``env`` (GATEWAY_*)."""
    return {
        "gateway": lambda: start_gateway(f"embedded:{model_dir}", env=env, timeout=180),
        "gateway-fake": lambda: start_gunicorn_app(
            "gateway-fake",
            "loadtest.gateway:fake_backend_app()",
            env={**env, "GATEWAY_BACKEND": UNUSED_BACKEND},
            timeout=180,
        ),
        "floor": lambda: start_floor("flask", env=env, timeout=180),
    }


# -- load -----------------------------------------------------------------------------------------
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise BenchmarkError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, image: Path, *, connections: int, duration: float, threads: int) -> dict:
    """One wrk run against ``url/v1/predict``; returns req/s, p50/p90/p99 ms, errors."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_LUA)
    try:
        proc = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{duration:g}s",
                "--latency",
                "-s",
                f.name,
                f"{url}/v1/predict",
            ],
            env={**os.environ, "BENCH_IMAGE": str(image)},
            capture_output=True,
            text=True,
            timeout=duration + 60,
        )
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        raise BenchmarkError(f"wrk failed: {proc.stderr.strip()}")
    out = proc.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = {p: _ms(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockerr = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "p50": pct.get("50", float("nan")),
        "p90": pct.get("90", float("nan")),
        "p99": pct.get("99", float("nan")),
        "errors": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sockerr.group(0) if sockerr else "",
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.gateway",
        description="Throughput of the gateway (embedded backend) vs. the gateway with an "
        "instant backend vs. the Flask floor, same gunicorn settings, driven by wrk.",
    )
    p.add_argument("--model-dir", default="models/fashion_mnist", help="model base path")
    p.add_argument(
        "--image",
        default="tests/support/images/ankle_boot.png",
        help="PNG sent with every request",
    )
    p.add_argument(
        "--connections", type=POSITIVE_INT, default=32, help="concurrent connections (32)"
    )
    p.add_argument("--duration", type=POSITIVE_FLOAT, default=10.0, help="seconds per wrk run (10)")
    p.add_argument("--rounds", type=POSITIVE_INT, default=3, help="alternating rounds (3)")
    p.add_argument("--wrk-threads", type=POSITIVE_INT, default=2, help="wrk threads (2)")
    p.add_argument(
        "--only",
        nargs="+",
        choices=SERVERS,
        default=list(SERVERS),
        help="which servers to measure",
    )
    args = p.parse_args(argv)
    if args.connections < 1 or args.duration <= 0 or args.rounds < 1 or args.wrk_threads < 1:
        p.error("--connections, --duration, --rounds and --wrk-threads must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a markdown table."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if shutil.which("wrk") is None:
        print("benchmark: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    image = Path(args.image).resolve()
    if not image.is_file():
        print(f"benchmark: no such image: {image}", file=sys.stderr)
        return 2
    model_dir = Path(args.model_dir).resolve()
    if "gateway" in args.only and not any(model_dir.glob("*/saved_model.pb")):
        print(f"benchmark: no SavedModel version under {model_dir}", file=sys.stderr)
        return 2
    # The caller's GATEWAY_* settings (workers, threads, ...) apply to all three servers alike.
    env = gateway_env_from(dict(os.environ), workers=None, threads=None)
    start = starters(model_dir, env)
    results: dict[str, list[dict]] = {name: [] for name in dict.fromkeys(args.only)}
    try:
        with contextlib.ExitStack() as stack:
            urls = {}
            for name in results:
                log.info("starting %s ...", name)
                urls[name] = stack.enter_context(start[name]()).url
            for url in urls.values():  # warm up (model loads, first batches)
                run_wrk(url, image, connections=args.connections, duration=2, threads=1)
            for r in range(args.rounds):
                for name, url in urls.items():
                    res = run_wrk(
                        url,
                        image,
                        connections=args.connections,
                        duration=args.duration,
                        threads=args.wrk_threads,
                    )
                    log.info(
                        "round %d %-12s %8.1f req/s  p99 %.1f ms",
                        r + 1,
                        name,
                        res["rps"],
                        res["p99"],
                    )
                    results[name].append(res)
    except (BenchmarkError, StartError) as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 1

    def med(name: str, key: str) -> float:
        return statistics.median(x[key] for x in results[name])

    print(
        f"\n{args.connections} connections, {args.duration:g} s x {args.rounds} rounds, "
        f"image {image.name}, GATEWAY_WORKERS={env.get('GATEWAY_WORKERS', '2')} "
        f"GATEWAY_WORKER_CLASS={env.get('GATEWAY_WORKER_CLASS', 'gevent')} "
        f"GATEWAY_THREADS={env.get('GATEWAY_THREADS', '16')}\n"
    )
    print("| server | req/s (median) | p50 ms | p90 ms | p99 ms | non-2xx |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in results:
        errors = sum(x["errors"] for x in results[name])
        print(
            f"| {name} | {med(name, 'rps'):.0f} | {med(name, 'p50'):.1f} | "
            f"{med(name, 'p90'):.1f} | {med(name, 'p99'):.1f} | {errors} |"
        )
    if "floor" in results:
        for name in ("gateway", "gateway-fake"):
            if name in results:
                ratios = [
                    g["rps"] / h["rps"]
                    for g, h in zip(results[name], results["floor"], strict=True)
                ]
                print(
                    f"\n{name}/floor req/s ratio per round: {', '.join(f'{x:.2f}' for x in ratios)}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
