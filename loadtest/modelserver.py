"""Benchmark the model server: gRPC vs REST, batch 1 vs 64, server-side batching off vs on.

Starts two ``python -m serving.modelserver`` processes through `loadtest.servers` (free loopback
ports; one plain, one with ``--enable_batching`` and serving/config/batching.config), then drives every combination
with the same closed loop (N client threads, each sending its next request when the previous
one is answered) for a bounded time. The cells are interleaved over several rounds so load
from other processes on the machine affects them alike. Prints a Markdown table (requests/s,
images/s, p50, p99, errors).

Example::

    python -m loadtest.modelserver --model_base_path models/fashion_mnist \\
        --duration 4 --rounds 2 --concurrency 8
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import requests

from loadtest.backends import predict_request
from loadtest.servers import ROOT, Server, StartError, start_modelserver
from serving.backends import _protos
from serving.cli_numbers import POSITIVE_FLOAT, POSITIVE_INT
from serving.cli_parser import OneLineErrorParser
from serving.contract import MODEL_NAME

Caller = tuple[Callable[[], None], Callable[[], None]]  # (one request, close the connection)


def start_server(name: str, base_path: Path, *flags: str, timeout: float = 120) -> Server:
    """Start a model server (`loadtest.servers`) and wait until its model is AVAILABLE."""
    return start_modelserver(
        base_path, "--log_level=WARNING", *flags, timeout=timeout, name=f"modelserver-{name}"
    )


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


def _grpc_caller(server: Server, images: np.ndarray) -> Caller:
    channel = grpc.insecure_channel(server.target)
    stub = _protos.load().prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_request(images)

    def call() -> None:
        stub.Predict(request, timeout=30)

    return call, channel.close


def _rest_caller(server: Server, images: np.ndarray) -> Caller:
    session = requests.Session()
    url = f"{server.url}/v1/models/{MODEL_NAME}:predict"
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


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    p = OneLineErrorParser(
        prog="python -m loadtest.modelserver", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--model_base_path", default="models/fashion_mnist", help="exported model base dir"
    )
    p.add_argument(
        "--duration", type=POSITIVE_FLOAT, default=4.0, help="seconds per cell per round"
    )
    p.add_argument(
        "--rounds", type=POSITIVE_INT, default=2, help="interleaved rounds over all cells"
    )
    p.add_argument("--concurrency", type=POSITIVE_INT, default=8, help="closed-loop client threads")
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
    batching = ("--enable_batching", f"--batching_parameters_file={args.batching_parameters_file}")
    servers: dict[str, Server] = {}
    try:
        servers["off"] = start_server("off", base)
        servers["on"] = start_server("on", base, *batching)
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
    except StartError as exc:
        print(f"{p.prog}: error: a model server did not start: {exc}", file=sys.stderr)
        return 1
    finally:
        for s in servers.values():
            s.close()
    rows = [c.row() for c in cells]
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
