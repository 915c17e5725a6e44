"""convserve load tests: ``python -m loadtest run`` (one Locust run), ``compare`` (all rows),
``soak`` (sustained load with resource growth checks) and ``paired`` (an A/B of two
configurations loaded at the same time).

Usage::

    # 30 s against the gateway of `make run`, 32 users, one dataset PNG per request
    python -m loadtest run --target gateway --host http://127.0.0.1:8080 \\
        --users 32 --spawn-rate 16 --duration 30s --out runs/loadtest
    # TF Serving / the model server directly, 64 images per gRPC call, with thresholds
    python -m loadtest run --target grpc --host grpc://127.0.0.1:8500 --batch-size 64 \\
        --users 8 --spawn-rate 8 --duration 1m --out runs/grpc64 --max-p99-ms 500
    # every configuration in turn (starts and stops them itself)
    python -m loadtest compare --model-dir models/fashion_mnist --users 32 --duration 20s \\
        --out runs/compare
    python -m loadtest compare --list           # the rows and whether each can run
    # 10 minutes at 80% of the measured peak, a new model version every 30 s; growth checks
    python -m loadtest soak --model-dir models/fashion_mnist --backend grpc --fraction 0.8 \
        --duration 10m --swap-every 30 --out runs/soak
    # A/B: both loaded at the same time, 3 rounds; B's server CPU per request over A's
    python -m loadtest paired --a GATEWAY_BATCH_TIMEOUT_MS=2 --b GATEWAY_BATCH_TIMEOUT_MS=5

``run`` writes Locust's CSVs and HTML report, ``summary.json``, ``checks.json`` and
``timeline.png`` into ``--out``. ``compare`` writes one such folder per row plus
``compare.json``, ``compare.md`` and ``compare.png``, and prints the markdown table.
``soak`` writes ``peak/`` and ``load/`` (run's artefacts), ``samples.json``, ``resources.png``
and ``soak.json`` (see `loadtest.soak`). ``paired`` writes each round's run artefacts,
``paired.json`` and ``paired.md`` (see `loadtest.paired`).

Images are the Fashion-MNIST test set when ``FASHION_MNIST_DIR`` is set (answers are then also
compared with the dataset labels: ``wrong_labels``), else a small generated set (no labels).

Exit codes: 0 done (thresholds met); 1 a threshold was crossed (``run``, ``soak``: a failed
request, resource growth) or a row failed or had failed requests (``compare``, ``paired``); 2 bad arguments
or an unreachable host; 3 Locust itself failed (or, ``soak``, a server did not start).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from loadtest import compare
from loadtest import paired as paired_mod
from loadtest import soak as soak_mod
from loadtest.run import (
    LoadSpec,
    LoadTestError,
    Unreachable,
    first_line,
    parse_duration,
    run_load,
)
from loadtest.servers import ROOT, StartError
from loadtest.targets import PAYLOADS, TARGETS
from serving.cli_numbers import (
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    RATIO,
    Number,
)
from serving.cli_parser import OneLineErrorParser
from serving.gateway.config import WORKER_CLASSES

EXIT_OK, EXIT_THRESHOLD, EXIT_USAGE, EXIT_LOCUST = 0, 1, 2, 3


def _duration(text: str) -> str:
    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_load_args(p: argparse.ArgumentParser, *, users: int, duration: str) -> None:
    p.add_argument("--users", type=POSITIVE_INT, default=users, help=f"concurrent users ({users})")
    p.add_argument(
        "--spawn-rate",
        type=POSITIVE_FLOAT,
        default=None,
        help="users started per second (default: all at once, = --users)",
    )
    p.add_argument(
        "--duration",
        type=_duration,
        default=duration,
        help=f"run time as Locust writes it: 30s, 2m, 1h30m ({duration})",
    )
    p.add_argument(
        "--images",
        type=POSITIVE_INT,
        default=1000,
        help="test images to cycle through (1000)",
    )
    p.add_argument(
        "--processes",
        type=POSITIVE_INT,
        default=1,
        help="Locust processes (>1 runs a master and workers; 1)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m loadtest`` parser."""
    parser = OneLineErrorParser(
        prog="python -m loadtest",
        description="Load tests of convserve with Locust.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit codes: 0 ok, 1 threshold crossed / row failed, 2 usage or unreachable host, "
        "3 Locust failed.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)

    run = sub.add_parser(
        "run",
        help="one headless Locust run, with summary.json and a timeline PNG",
        description="Run the locustfile headless against one target and write the report.",
    )
    run.add_argument("--target", choices=sorted(TARGETS), required=True, help="what to load")
    run.add_argument(
        "--host",
        required=True,
        help="http://host:port (gateway, rest, peer) or grpc://host:port (grpc)",
    )
    _add_load_args(run, users=32, duration="30s")
    run.add_argument("--out", type=Path, required=True, help="folder for the artefacts")
    run.add_argument("--batch-size", type=POSITIVE_INT, default=1, help="images per request (1)")
    run.add_argument(
        "--payload",
        choices=PAYLOADS,
        default="auto",
        help="gateway body: png, multipart, b64, mix; auto = png at batch 1, else multipart",
    )
    run.add_argument("--peer", default="", help="with --target peer: which peer")
    run.add_argument(
        "--max-fail-ratio",
        type=RATIO,
        default=0.0,
        help="exit 1 if failed/requests exceeds this (0: any failure)",
    )
    run.add_argument(
        "--max-p99-ms",
        type=POSITIVE_FLOAT,
        default=None,
        help="exit 1 if the 99th percentile latency exceeds this many ms",
    )
    run.add_argument(
        "--request-timeout",
        type=POSITIVE_FLOAT,
        default=10.0,
        help="seconds before a request counts as failed (10)",
    )

    cmp_ = sub.add_parser(
        "compare",
        help="start and load every configuration in turn; markdown table, JSON, bar chart",
        description="Start each configuration (gateway with each backend, model server, peers, "
        "floors, model limit), load it with the same Locust settings, one after another.",
    )
    cmp_.add_argument(
        "--model-dir",
        type=Path,
        default=Path("models/fashion_mnist"),
        help="exported model base dir (models/fashion_mnist; `make quick-model` makes one)",
    )
    _add_load_args(cmp_, users=32, duration="20s")
    cmp_.add_argument(
        "--out", type=Path, default=Path("runs/compare"), help="folder for the artefacts"
    )
    cmp_.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="rows whose name or group (ours, peer, floor, limit) matches one of these shell "
        "patterns, e.g. 'gateway*' peer",
    )
    cmp_.add_argument(
        "--workers", type=POSITIVE_INT, default=None, help="GATEWAY_WORKERS of gateway and floors"
    )
    cmp_.add_argument(
        "--threads", type=POSITIVE_INT, default=None, help="GATEWAY_THREADS of gateway and floors"
    )
    cmp_.add_argument(
        "--worker-class",
        choices=sorted(WORKER_CLASSES),
        default=None,
        help="GATEWAY_WORKER_CLASS of gateway and floors (gevent)",
    )
    cmp_.add_argument(
        "--rounds",
        type=POSITIVE_INT,
        default=1,
        help="run the whole sequence this many times; the table and the targets' verdict are "
        "medians over the rounds (1)",
    )
    cmp_.add_argument(
        "--list", action="store_true", help="list the rows and whether each can run, then exit"
    )
    _add_soak_parser(sub)
    _add_paired_parser(sub)
    return parser


def _add_paired_parser(sub: Any) -> None:
    paired = sub.add_parser(
        "paired",
        help="A/B: two configurations loaded at the same time, B's CPU per request over A's",
        description="Start two configurations of the gateway (or the Flask floor), each with "
        "its own GATEWAY_* settings and checkout, and load both at the same time in each round, "
        "so that both see the same machine; report B's server CPU per request over A's.",
    )
    paired.add_argument("--server", choices=paired_mod.SERVERS, default="gateway", help="(gateway)")
    paired.add_argument(
        "--model-dir",
        type=Path,
        default=Path("models/fashion_mnist"),
        help="exported model base dir for the gateway (models/fashion_mnist)",
    )
    for side in ("a", "b"):
        paired.add_argument(
            f"--{side}",
            nargs="+",
            default=[],
            metavar="GATEWAY_NAME=value",
            help=f"settings of side {side.upper()} (on top of the caller's GATEWAY_* variables)",
        )
        paired.add_argument(
            f"--{side}-checkout",
            type=Path,
            default=None,
            help=f"the checkout side {side.upper()} runs from (default: this one)",
        )
    _add_load_args(paired, users=32, duration="15s")
    paired.add_argument("--rounds", type=POSITIVE_INT, default=3, help="rounds (3)")
    paired.add_argument("--out", type=Path, default=Path("runs/paired"), help="artefacts folder")


def _add_soak_parser(sub: Any) -> None:
    soak = sub.add_parser(
        "soak",
        help="sustained load on a gateway it starts, with RSS/fd/thread/metrics-dir growth checks",
        description="Start the gateway (and model server), load it at a fixed rate for a long "
        "time, optionally swapping model versions, and check that no request fails and that no "
        "process grows (RSS, open fds, threads, prometheus multiprocess files).",
    )
    soak.add_argument(
        "--model-dir",
        type=Path,
        default=Path("models/fashion_mnist"),
        help="exported model base dir; its newest version is copied, never modified",
    )
    soak.add_argument(
        "--backend", choices=soak_mod.BACKENDS, default="grpc", help="gateway backend (grpc)"
    )
    soak.add_argument("--users", type=POSITIVE_INT, default=32, help="concurrent users (32)")
    soak.add_argument("--duration", type=_duration, default="10m", help="soak time (10m)")
    soak.add_argument(
        "--warmup", type=_duration, default="1m", help="growth is measured after this (1m)"
    )
    pace = soak.add_mutually_exclusive_group()
    pace.add_argument(
        "--rate", type=POSITIVE_FLOAT, default=None, help="requests per second, all users"
    )
    pace.add_argument(
        "--fraction",
        type=Number(float, low=0, high=1, low_open=True),
        default=0.8,
        help="of the peak measured by an unpaced run first (0.8)",
    )
    soak.add_argument(
        "--peak-duration", type=_duration, default="20s", help="the peak run's length (20s)"
    )
    soak.add_argument(
        "--swap-every",
        type=POSITIVE_FLOAT,
        default=None,
        metavar="SECONDS",
        help="publish a new model version (a copy) and remove the oldest every SECONDS",
    )
    soak.add_argument(
        "--sample-every", type=POSITIVE_FLOAT, default=1.0, help="seconds between samples (1)"
    )
    soak.add_argument(
        "--poll", type=POSITIVE_FLOAT, default=1.0, help="model folder poll interval, s (1)"
    )
    soak.add_argument(
        "--images", type=POSITIVE_INT, default=1000, help="test images to cycle through (1000)"
    )
    soak.add_argument(
        "--max-rss-growth",
        type=NON_NEGATIVE_FLOAT,
        default=0.10,
        help="exit 1 if any process's RSS grows more than this fraction after warm-up (0.10)",
    )
    for what, default in (
        ("fd", soak_mod.SoakSettings.max_fd_growth),
        ("thread", soak_mod.SoakSettings.max_thread_growth),
    ):
        soak.add_argument(
            f"--max-{what}-growth",
            type=NON_NEGATIVE_INT,
            default=default,
            help=f"exit 1 if any process's {what} count grows by more than this ({default})",
        )
    soak.add_argument(
        "--max-p99-ms", type=POSITIVE_FLOAT, default=None, help="exit 1 above this p99 (ms)"
    )
    soak.add_argument(
        "--workers", type=POSITIVE_INT, default=None, help="GATEWAY_WORKERS of the gateway"
    )
    soak.add_argument(
        "--threads", type=POSITIVE_INT, default=None, help="GATEWAY_THREADS of the gateway"
    )
    soak.add_argument(
        "--worker-class",
        choices=sorted(WORKER_CLASSES),
        default=None,
        help="GATEWAY_WORKER_CLASS of the gateway (gevent)",
    )
    soak.add_argument("--out", type=Path, default=Path("runs/soak"), help="artefacts folder")


def _run(args: argparse.Namespace) -> int:
    extra = ("--peer", args.peer) if args.peer else ()
    spec = LoadSpec(
        target=args.target,
        host=args.host,
        users=args.users,
        spawn_rate=args.spawn_rate or float(args.users),
        duration=args.duration,
        out=args.out,
        batch_size=args.batch_size,
        payload=args.payload,
        images=args.images,
        request_timeout=args.request_timeout,
        processes=args.processes,
        extra_args=extra,
    )
    try:
        spec.validate()
    except ValueError as exc:
        print(f"loadtest run: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        summary = run_load(spec, max_fail_ratio=args.max_fail_ratio, max_p99_ms=args.max_p99_ms)
    except LoadTestError as exc:
        print(f"loadtest run: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, Unreachable) else EXIT_LOCUST
    print(json.dumps(summary, indent=1))
    for message in summary["thresholds_crossed"]:
        print(f"loadtest run: threshold crossed: {message}", file=sys.stderr)
    return EXIT_THRESHOLD if summary["thresholds_crossed"] else EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    entries = compare.select(compare.registry(), args.only)
    if args.list:
        for e in entries:
            reason = e.available()
            print(f"{e.name:40} {e.group:8} {'skipped: ' + reason if reason else 'ready'}")
        return EXIT_OK
    if not entries:
        print(f"loadtest compare: error: no row matches {args.only}", file=sys.stderr)
        return EXIT_USAGE
    model_dir = args.model_dir.resolve()
    if not any(model_dir.glob("*/saved_model.pb")):
        print(
            f"loadtest compare: error: no exported version under {model_dir} "
            "(run `make quick-model`, or pass --model-dir)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    env = compare.gateway_env_from(dict(os.environ), args.workers, args.threads, args.worker_class)
    settings = compare.Settings(
        model_dir=model_dir,
        out=args.out,
        users=args.users,
        spawn_rate=args.spawn_rate or float(args.users),
        duration=args.duration,
        images=args.images,
        processes=args.processes,
        gateway_env=tuple(sorted(env.items())),
        rounds=args.rounds,
    )
    rows = compare.run_compare(entries, settings)
    print(compare.write_report(rows, settings))
    bad = [r for r in rows if r["status"] == "error" or (r["failures"] or 0) > 0]
    for r in bad:
        print(f"loadtest compare: {r['name']}: {r['reason'] or 'failed requests'}", file=sys.stderr)
    return EXIT_THRESHOLD if bad else EXIT_OK


def _soak(args: argparse.Namespace) -> int:
    env = compare.gateway_env_from(dict(os.environ), args.workers, args.threads, args.worker_class)
    settings = soak_mod.SoakSettings(
        model_dir=args.model_dir.resolve(),
        out=args.out,
        backend=args.backend,
        duration=args.duration,
        warmup=args.warmup,
        users=args.users,
        rate=args.rate,
        fraction=args.fraction,
        peak_duration=args.peak_duration,
        swap_every_s=args.swap_every or 0.0,
        sample_every_s=args.sample_every,
        poll_s=args.poll,
        images=args.images,
        max_rss_growth=args.max_rss_growth,
        max_fd_growth=args.max_fd_growth,
        max_thread_growth=args.max_thread_growth,
        max_p99_ms=args.max_p99_ms,
        gateway_env=tuple(sorted(env.items())),
    )
    try:
        settings.validate()
    except ValueError as exc:
        print(f"loadtest soak: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = soak_mod.run_soak(settings)
    except (LoadTestError, StartError) as exc:
        print(f"loadtest soak: error: {first_line(exc)}", file=sys.stderr)
        return EXIT_LOCUST
    except ValueError as exc:  # e.g. too few samples after the warm-up
        print(f"loadtest soak: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    load = result.report["load"]
    print(
        f"loadtest soak: {load['requests']} requests at {result.report['rate']:g} req/s, "
        f"{load['failures']} failed, p99 {load['p99_ms']} ms; report in {args.out / 'soak.json'}"
    )
    for message in result.crossed:
        print(f"loadtest soak: threshold crossed: {message}", file=sys.stderr)
    return EXIT_THRESHOLD if result.crossed else EXIT_OK


def _paired(args: argparse.Namespace) -> int:
    if args.processes != 1:
        print(
            "loadtest paired: error: --processes must be 1 (one Locust per side)", file=sys.stderr
        )
        return EXIT_USAGE
    try:
        sides = tuple(
            paired_mod.Side(
                name,
                paired_mod.parse_assignments(getattr(args, name)),
                paired_mod.check_checkout(getattr(args, f"{name}_checkout") or ROOT),
            )
            for name in ("a", "b")
        )
        settings = paired_mod.PairedSettings(
            server=args.server,
            model_dir=args.model_dir.resolve(),
            out=args.out,
            sides=sides,  # type: ignore[arg-type]
            users=args.users,
            spawn_rate=args.spawn_rate or float(args.users),
            duration=args.duration,
            images=args.images,
            rounds=args.rounds,
            base_env=tuple(sorted(compare.gateway_env_from(dict(os.environ), None, None).items())),
        )
        settings.validate()
    except ValueError as exc:
        print(f"loadtest paired: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = paired_mod.run_paired(settings)
    except (LoadTestError, StartError) as exc:
        print(f"loadtest paired: error: {first_line(exc)}", file=sys.stderr)
        return EXIT_LOCUST
    print(paired_mod.markdown(report))
    if report["failures"]:
        print(f"loadtest paired: {report['failures']} failed requests", file=sys.stderr)
        return EXIT_THRESHOLD
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the subcommand; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    commands = {"run": _run, "compare": _compare, "soak": _soak, "paired": _paired}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
