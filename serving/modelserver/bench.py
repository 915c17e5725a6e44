"""Benchmark the model server: gRPC vs REST, batch 1 vs 64, server-side batching off vs on.

Starts two ``python -m serving.modelserver`` processes on free loopback ports (one plain, one
with ``--enable_batching`` and serving/config/batching.config), then drives every combination
with the same closed loop (N client threads, each sending its next request when the previous
one is answered) for a bounded time. The cells are interleaved over several rounds so load
from other processes on the machine affects them alike. Prints a Markdown table (requests/s,
images/s, p50, p99, errors).

Example::

    python -m serving.modelserver.bench --model_base_path models/fashion_mnist \\
        --duration 4 --rounds 2 --concurrency 8
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np

from serving.contract import INPUT_KEY, MODEL_NAME

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A model server subprocess started for the benchmark."""

    name: str
    proc: subprocess.Popen
    grpc_port: int
    rest_port: int
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_server(name: str, base_path: Path, *flags: str, timeout: float = 120) -> Server:
    """Start a model server and wait until its model is AVAILABLE."""
    grpc_port, rest_port = _free_port(), _free_port()
    log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
    cmd = [
        sys.executable,
        "-m",
        "serving.modelserver",
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        f"--model_name={MODEL_NAME}",
        f"--model_base_path={base_path.resolve()}",
        "--log_level=WARNING",
        *flags,
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(name, proc, grpc_port, rest_port, log)
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{rest_port}/v1/models/{MODEL_NAME}"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if b"AVAILABLE" in r.read():
                    return server
        except OSError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"{name} server not AVAILABLE after {timeout}s")


@dataclass
class Cell:
    """One benchmark combination and its measurements."""

    server: str
    protocol: str
    batch: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    def row(self) -> dict[str, object]:
        lat = np.array(self.latencies) * 1000 if self.latencies else np.array([np.nan])
        rps = len(self.latencies) / self.seconds if self.seconds else 0.0
        return {
            "batching": self.server,
            "protocol": self.protocol,
            "batch": self.batch,
            "requests": len(self.latencies),
            "req_per_s": round(rps, 1),
            "images_per_s": round(rps * self.batch, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "errors": self.errors,
        }


def _grpc_caller(server: Server, images: np.ndarray):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving.modelserver.tensors import ndarray_to_tensor_proto

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.inputs[INPUT_KEY].CopyFrom(ndarray_to_tensor_proto(images))

    def call() -> None:
        stub.Predict(request, timeout=30)

    return call, channel.close


def _rest_caller(server: Server, images: np.ndarray):
    import requests

    session = requests.Session()
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL_NAME}:predict"
    body = json.dumps({"instances": images.tolist()}).encode()
    headers = {"Content-Type": "application/json"}

    def call() -> None:
        r = session.post(url, data=body, headers=headers, timeout=30)
        if r.status_code != 200:
            raise RuntimeError(r.text)

    return call, session.close


def run_cell(cell: Cell, server: Server, images: np.ndarray, concurrency: int, duration: float):
    """Drive one cell with ``concurrency`` closed-loop threads for ``duration`` seconds."""
    make = _grpc_caller if cell.protocol == "gRPC" else _rest_caller
    callers = [make(server, images) for _ in range(concurrency)]
    for call, _ in callers:  # connect and warm up outside the measured window
        call()
    stop_at = time.perf_counter() + duration
    lock = threading.Lock()

    def loop(call) -> None:
        local, errors = [], 0
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            try:
                call()
                local.append(time.perf_counter() - t0)
            except Exception:  # counted, not fatal: the table reports errors
                errors += 1
        with lock:
            cell.latencies.extend(local)
            cell.errors += errors

    threads = [threading.Thread(target=loop, args=(c,)) for c, _ in callers]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cell.seconds += time.perf_counter() - started
    for _, close in callers:
        close()


def markdown(rows: list[dict[str, object]]) -> str:
    """Rows as a Markdown table."""
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(out)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    p = _Parser(prog="python -m serving.modelserver.bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--model_base_path", default="models/fashion_mnist", help="exported model base dir"
    )
    p.add_argument("--duration", type=float, default=4.0, help="seconds per cell per round")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds over all cells")
    p.add_argument("--concurrency", type=int, default=8, help="closed-loop client threads")
    p.add_argument("--batch_sizes", default="1,64", help="comma-separated images per request")
    p.add_argument(
        "--batching_parameters_file",
        default=str(ROOT / "serving" / "config" / "batching.config"),
        help="batching parameters of the batching server",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    base = Path(args.model_base_path)
    if not any(base.glob("*/saved_model.pb")):
        p.error(f"no exported version under {base}; run `make quick-model` first")
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        p.error(f"--batch_sizes must be integers, got {args.batch_sizes!r}")
    if args.duration <= 0 or args.rounds < 1 or args.concurrency < 1:
        p.error("--duration, --rounds and --concurrency must be positive")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    servers = {}
    try:
        servers["off"] = start_server("off", base)
        servers["on"] = start_server(
            "on",
            base,
            "--enable_batching",
            f"--batching_parameters_file={args.batching_parameters_file}",
        )
        rng = np.random.default_rng(0)
        inputs = {b: rng.random((b, 28, 28, 1), dtype=np.float32) for b in batch_sizes}
        cells = [
            Cell(s, proto, b)
            for s, proto, b in itertools.product(("off", "on"), ("gRPC", "REST"), batch_sizes)
        ]
        total = len(cells) * args.rounds * args.duration
        print(
            f"{len(cells)} cells x {args.rounds} rounds x {args.duration}s = {total:.0f}s",
            file=sys.stderr,
        )
        for r in range(args.rounds):
            for cell in cells if r % 2 == 0 else reversed(cells):
                run_cell(
                    cell, servers[cell.server], inputs[cell.batch], args.concurrency, args.duration
                )
                print(f"round {r + 1}: {cell.row()}", file=sys.stderr)
    finally:
        for s in servers.values():
            s.stop()
    rows = [c.row() for c in cells]
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
