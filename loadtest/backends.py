"""Benchmark the TF Serving clients: request encoding, and (optionally) round trips to a server.

Usage::

    python -m loadtest.backends                                # encoding only, no server
    python -m loadtest.backends --grpc localhost:8500 --rest http://localhost:8501

Encoding: microseconds to build the request body for a batch of N preprocessed images —
gRPC ``PredictRequest`` with ``tensor_content``, REST JSON from the lookup table, and the naive
``json.dumps(batch.tolist())`` for comparison. Round trips: median and p99 latency of
``client.predict`` (sequential calls, one client) per protocol and batch size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from serving.backends import _protos
from serving.backends.errors import BackendError
from serving.backends.grpc import GrpcBackend
from serving.backends.rest import RestBackend, encode_batch_json
from serving.cli_numbers import POSITIVE_INT
from serving.contract import INPUT_KEY, MODEL_NAME


def _batch(n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    return rng.integers(0, 256, size=(n, 28, 28, 1)).astype(np.float32) / np.float32(255)


def _time_us(fn: Callable[[], object], min_seconds: float = 0.5) -> float:
    """Median microseconds per call over repeated 50 ms rounds."""
    rounds = []
    deadline = time.perf_counter() + min_seconds
    while time.perf_counter() < deadline or len(rounds) < 3:
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.05:
            fn()
            calls += 1
        rounds.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(rounds)


def predict_request(arr: np.ndarray) -> Any:
    """A ``PredictRequest`` carrying ``arr`` (float32) as ``tensor_content``, as the client sends."""
    pb = _protos.load()
    req = pb.predict_pb2.PredictRequest()
    req.model_spec.name = MODEL_NAME
    tensor = req.inputs[INPUT_KEY]
    tensor.dtype = pb.types_pb2.DT_FLOAT
    for d in arr.shape:
        tensor.tensor_shape.dim.add(size=d)
    tensor.tensor_content = arr.tobytes()
    return req


def bench_encoding(sizes: list[int]) -> list[dict]:
    """Request-building cost per batch size."""
    rows = []
    for n in sizes:
        arr = _batch(n)

        def grpc_request(arr: np.ndarray = arr) -> bytes:
            return predict_request(arr).SerializeToString()

        rows.append(
            {
                "batch": n,
                "grpc_tensor_content_us": _time_us(grpc_request),
                "rest_lookup_json_us": _time_us(lambda arr=arr: encode_batch_json(arr)),
                "rest_naive_json_us": _time_us(
                    lambda arr=arr: json.dumps(arr.tolist(), separators=(",", ":")).encode(),
                    min_seconds=0.2,
                ),
                "grpc_bytes": len(grpc_request()),
                "rest_bytes": len(encode_batch_json(arr)),
            }
        )
    return rows


def bench_round_trips(
    client: GrpcBackend | RestBackend, sizes: list[int], calls: int
) -> list[dict]:
    """Latency of ``client.predict`` per batch size (sequential)."""
    rows = []
    for n in sizes:
        arr = _batch(n)
        client.predict(arr)  # warm up the connection and the server
        lat = []
        for _ in range(calls):
            t0 = time.perf_counter()
            client.predict(arr)
            lat.append((time.perf_counter() - t0) * 1e3)
        lat.sort()
        rows.append(
            {
                "batch": n,
                "p50_ms": lat[len(lat) // 2],
                "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                "images_per_s": n * calls / (sum(lat) / 1e3),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.backends", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--grpc", metavar="HOST:PORT", help="also time gRPC round trips here")
    parser.add_argument("--rest", metavar="URL", help="also time REST round trips here")
    parser.add_argument(
        "--sizes", default="1,8,64", help="comma-separated batch sizes (default 1,8,64)"
    )
    parser.add_argument(
        "--calls", type=POSITIVE_INT, default=200, help="round trips per size (default 200)"
    )
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        print(f"error: --sizes must be integers, got {args.sizes!r}", file=sys.stderr)
        return 2
    if not sizes or min(sizes) < 1 or args.calls < 1:
        print("error: batch sizes and --calls must be >= 1", file=sys.stderr)
        return 2

    print("| batch | gRPC tensor_content µs | REST lookup JSON µs | REST json.dumps(tolist) µs |")
    print("| ---: | ---: | ---: | ---: |")
    for r in bench_encoding(sizes):
        print(
            f"| {r['batch']} | {r['grpc_tensor_content_us']:.0f} | {r['rest_lookup_json_us']:.0f} "
            f"| {r['rest_naive_json_us']:.0f} |"
        )
    targets = [("gRPC", args.grpc, GrpcBackend), ("REST", args.rest, RestBackend)]
    if any(t for _, t, _ in targets):
        print("\n| protocol | batch | p50 ms | p99 ms | images/s |")
        print("| --- | ---: | ---: | ---: | ---: |")
    for name, target, cls in targets:
        if not target:
            continue
        try:
            with cls(target) as client:
                rows = bench_round_trips(client, sizes, args.calls)
        except BackendError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 4
        for r in rows:
            print(
                f"| {name} | {r['batch']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                f"| {r['images_per_s']:.0f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
