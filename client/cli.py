"""``python -m client``: classify images through the gateway or directly through TF Serving.

Usage::

    python -m client predict tests/support/images/ankle_boot.png               # gateway, localhost:8080
    python -m client predict a.png b.jpg --gateway http://gw:8080 --json
    python -m client predict shoe.jpg --grpc localhost:8500                      # TF Serving, gRPC
    python -m client predict shoe.jpg --rest http://localhost:8501 --timeout 2   # TF Serving, REST
    CONVSERVE_API_KEY=... python -m client predict a.png --gateway https://gw   # a gateway with API keys

Output: a table (file, label, confidence), or with ``--json`` one JSON object::

    {"target": "...", "predictions": [{"file": "a.png", "label": "Ankle boot", "class_id": 9,
     "confidence": 0.93, "probabilities": [...10 floats], "model_version": 1}]}

Exit codes:
    0  every image was classified
    2  usage error (bad arguments)
    3  input error: a file is missing/unreadable/not an image, or the server rejected the
       input (HTTP 400, 413, 415)
    4  server unreachable or timed out
    5  the server answered with an error (e.g. 503 model not ready, 502/500)
    6  the gateway refused the API key (HTTP 401: none given, or not a valid one)
Errors are printed as one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from client.api import API_KEY_ENV, GatewayClient, Prediction, TFServingClient
from client.errors import (
    ClientConnectionError,
    ClientError,
    ClientInputError,
    ClientTimeout,
    ServerError,
)
from serving.cli_numbers import POSITIVE_FLOAT, POSITIVE_INT
from serving.contract import GATEWAY_PORT

EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_UNREACHABLE, EXIT_SERVER, EXIT_AUTH = 0, 2, 3, 4, 5, 6
DEFAULT_GATEWAY = f"http://localhost:{GATEWAY_PORT}"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``predict`` subcommand)."""
    parser = argparse.ArgumentParser(
        prog="python -m client",
        description="Classify Fashion-MNIST-style images with the convserve gateway or TF Serving.",
        epilog="Exit codes: 0 ok, 2 usage, 3 input error, 4 server unreachable/timeout, "
        "5 server error, 6 API key refused.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "predict",
        help="classify image files",
        description="Classify image files (PNG, JPEG, WebP, GIF, BMP).",
    )
    p.add_argument("images", nargs="+", metavar="IMG", help="image files to classify")
    target = p.add_mutually_exclusive_group()
    target.add_argument(
        "--gateway",
        metavar="URL",
        help=f"gateway base URL (the default target: {DEFAULT_GATEWAY})",
    )
    target.add_argument(
        "--grpc", metavar="HOST:PORT", help="TF Serving gRPC address, e.g. localhost:8500"
    )
    target.add_argument(
        "--rest", metavar="URL", help="TF Serving REST base URL, e.g. http://localhost:8501"
    )
    p.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get(API_KEY_ENV) or None,
        help=f"gateway API key, sent as Authorization: Bearer (default: ${API_KEY_ENV}; the "
        "variable keeps the key out of the process list)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="per-request timeout (default 10)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=32,
        metavar="N",
        help="images per request (default 32)",
    )
    pin = p.add_mutually_exclusive_group()
    pin.add_argument(
        "--model-version", type=int, metavar="N", help="TF Serving only: pin a model version"
    )
    pin.add_argument("--model-label", metavar="LABEL", help="TF Serving only: pin a version label")
    p.add_argument("-v", "--verbose", action="store_true", help="log retries and requests")
    return parser


def _table(files: Sequence[str], preds: Sequence[Prediction]) -> str:
    width = max(len("file"), *(len(f) for f in files))
    label_width = max(len("label"), *(len(p.label) for p in preds))
    lines = [f"{'file':<{width}}  {'label':<{label_width}}  confidence"]
    lines += [
        f"{f:<{width}}  {p.label:<{label_width}}  {p.confidence:10.4f}"
        for f, p in zip(files, preds, strict=True)
    ]
    return "\n".join(lines)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``predict`` command; return the exit code."""
    # Checked here rather than as argparse types: argparse's own errors print the usage too,
    # and these keep the one-line "error: ..." form of every other error of this CLI.
    for flag, rule, value in (
        ("--timeout", POSITIVE_FLOAT, args.timeout),
        ("--batch-size", POSITIVE_INT, args.batch_size),
        ("--model-version", POSITIVE_INT, args.model_version),
    ):
        if value is None:
            continue
        try:
            rule.check(value)
        except ValueError as exc:
            print(f"error: argument {flag}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    pinned = args.model_version is not None or args.model_label is not None
    if args.api_key and (args.grpc or args.rest):
        print("error: --api-key is for the gateway (TF Serving has no API keys)", file=sys.stderr)
        return EXIT_USAGE
    if pinned and not (args.grpc or args.rest):
        print(
            "error: --model-version/--model-label need --grpc or --rest "
            "(the gateway's version is configured on the gateway)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    client: GatewayClient | TFServingClient
    try:
        if args.grpc:
            client, target = (
                TFServingClient(
                    args.grpc,
                    "grpc",
                    args.timeout,
                    version=args.model_version,
                    label=args.model_label,
                ),
                f"grpc://{args.grpc}",
            )
        elif args.rest:
            client, target = (
                TFServingClient(
                    args.rest,
                    "rest",
                    args.timeout,
                    version=args.model_version,
                    label=args.model_label,
                ),
                args.rest,
            )
        else:
            target = args.gateway or DEFAULT_GATEWAY
            client = GatewayClient(target, args.timeout, api_key=args.api_key)
    except ValueError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE

    files = list(args.images)
    predictions: list[Prediction] = []
    try:
        with client:
            for start in range(0, len(files), args.batch_size):
                predictions += client.predict(files[start : start + args.batch_size])
    except ClientInputError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_INPUT
    except (ClientConnectionError, ClientTimeout) as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ServerError as exc:
        print(f"error: {target}: {_one_line(str(exc))}", file=sys.stderr)
        if exc.status == 401:
            return EXIT_AUTH
        return EXIT_INPUT if exc.is_input_error else EXIT_SERVER
    except ClientError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_SERVER

    if args.json:
        doc = {
            "target": target,
            "predictions": [
                {"file": f, **p.to_dict()} for f, p in zip(files, predictions, strict=True)
            ],
        }
        print(json.dumps(doc))
    else:
        print(_table(files, predictions))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return run(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
