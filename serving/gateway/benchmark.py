"""Side-by-side throughput benchmark of the gateway under gunicorn (a tool, not a test).

Starts, on free loopback ports and with the *same* gunicorn settings (serving/gateway/
gunicorn_conf.py, GATEWAY_WORKERS/GATEWAY_THREADS):

- ``gateway``: ``python -m serving.gateway`` with the embedded backend on ``--model-dir``;
- ``gateway-fake``: the same app with an instant in-process backend (the gateway's own cost:
  HTTP, decoding, metrics, JSON; no model);
- ``hello``: a Flask hello-world (the roadmap's reference point);

then drives each with ``wrk`` (one PNG per request, ``--connections`` keep-alive connections)
for ``--rounds`` alternating rounds, and prints requests/s and latency percentiles (medians
over the rounds) plus the gateway/hello ratio. The machine is shared and noisy: compare
ratios from one run, not absolute numbers across runs.

Usage::

    apt-get install wrk                       # the load generator (C, cheap on the CPU)
    python -m serving.gateway.benchmark --model-dir models/fashion_mnist \\
        --image tests/support/images/ankle_boot.png --duration 10 --rounds 3

Exit codes: 0 done, 2 bad arguments or wrk missing, 1 a server failed to start.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("serving.gateway.benchmark")

_LUA = """
local f = io.open(os.getenv("BENCH_IMAGE"), "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "image/png"
"""


class BenchmarkError(RuntimeError):
    """A server did not start or wrk failed."""


# -- apps for gunicorn (factories, so nothing is built at import) ------------------------------
def hello_app() -> Any:
    """Flask hello-world answering ``POST /v1/predict`` (the reference point)."""
    from flask import Flask

    app = Flask("hello")

    @app.post("/v1/predict")
    def hello() -> str:
        return "Hello, World!"

    @app.get("/readyz")
    def ready() -> str:
        return "ok"

    return app


def fake_backend_app() -> Any:
    """The gateway app with an instant backend: everything but the model."""
    import numpy as np

    from serving.backends import PredictResult, VersionStatus
    from serving.contract import NUM_CLASSES
    from serving.gateway import create_app

    class InstantBackend:
        row = np.full((1, NUM_CLASSES), 1.0 / NUM_CLASSES, np.float32)

        def predict(self, batch: np.ndarray) -> PredictResult:
            return PredictResult(np.repeat(self.row, len(batch), axis=0), 1)

        def status(self) -> list[VersionStatus]:
            return [VersionStatus(1, "AVAILABLE", "")]

        def close(self) -> None:
            pass

    return create_app(backend=InstantBackend())


# -- processes ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _server(name: str, cmd: list[str], env: dict[str, str], port: int) -> Iterator[str]:
    """Run ``cmd``; yield its base URL once /readyz answers 200."""
    fd, log_name = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
    with os.fdopen(fd, "wb") as logf:
        proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                out = Path(log_name).read_text(errors="replace")[-3000:]
                raise BenchmarkError(f"{name} did not become ready:\n{out}")
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        os.unlink(log_name)


def _gunicorn_cmd(app_spec: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:serving.gateway.gunicorn_conf",
        app_spec,
    ]


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
        prog="python -m serving.gateway.benchmark",
        description="Throughput of the gateway (embedded backend) vs. the gateway with an "
        "instant backend vs. a Flask hello-world, same gunicorn settings, driven by wrk.",
    )
    p.add_argument("--model-dir", default="models/fashion_mnist", help="model base path")
    p.add_argument(
        "--image",
        default="tests/support/images/ankle_boot.png",
        help="PNG sent with every request",
    )
    p.add_argument("--connections", type=int, default=32, help="concurrent connections (32)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (10)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (2)")
    p.add_argument(
        "--only",
        nargs="+",
        choices=["gateway", "gateway-fake", "hello"],
        default=["gateway", "gateway-fake", "hello"],
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
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    keep = {k: v for k, v in os.environ.items() if k.startswith("GATEWAY_")}
    base_env |= keep | {"TF_CPP_MIN_LOG_LEVEL": "2", "GATEWAY_HOST": "127.0.0.1"}
    base_env.setdefault("GATEWAY_LOG_LEVEL", "WARNING")
    servers: dict[str, tuple[list[str], dict[str, str]]] = {}
    for name in args.only:
        port = _free_port()
        env = {**base_env, "GATEWAY_PORT": str(port)}
        if name == "gateway":
            env["GATEWAY_BACKEND"] = f"embedded:{model_dir}"
            cmd = [sys.executable, "-m", "serving.gateway"]
        elif name == "gateway-fake":
            env["GATEWAY_BACKEND"] = "grpc://unused.invalid:8500"
            cmd = _gunicorn_cmd("serving.gateway.benchmark:fake_backend_app()")
        else:
            cmd = _gunicorn_cmd("serving.gateway.benchmark:hello_app()")
        servers[name] = (cmd, env)

    results: dict[str, list[dict]] = {name: [] for name in servers}
    try:
        with contextlib.ExitStack() as stack:
            urls = {}
            for name, (cmd, env) in servers.items():
                log.info("starting %s ...", name)
                urls[name] = stack.enter_context(_server(name, cmd, env, int(env["GATEWAY_PORT"])))
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
    except BenchmarkError as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 1

    def med(name: str, key: str) -> float:
        return statistics.median(x[key] for x in results[name])

    print(
        f"\n{args.connections} connections, {args.duration:g} s x {args.rounds} rounds, "
        f"image {image.name}, GATEWAY_WORKERS={base_env.get('GATEWAY_WORKERS', '2')} "
        f"GATEWAY_THREADS={base_env.get('GATEWAY_THREADS', '16')}\n"
    )
    print("| server | req/s (median) | p50 ms | p90 ms | p99 ms | non-2xx |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in results:
        errors = sum(x["errors"] for x in results[name])
        print(
            f"| {name} | {med(name, 'rps'):.0f} | {med(name, 'p50'):.1f} | "
            f"{med(name, 'p90'):.1f} | {med(name, 'p99'):.1f} | {errors} |"
        )
    if "hello" in results:
        for name in ("gateway", "gateway-fake"):
            if name in results:
                ratios = [
                    g["rps"] / h["rps"]
                    for g, h in zip(results[name], results["hello"], strict=True)
                ]
                print(
                    f"\n{name}/hello req/s ratio per round: {', '.join(f'{x:.2f}' for x in ratios)}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
