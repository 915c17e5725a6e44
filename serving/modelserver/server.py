"""Command line and process lifecycle of ``python -m serving.modelserver``.

Flags are tensorflow_model_server's (``--flag=value`` and ``--flag value`` both work; booleans
also as bare ``--enable_batching``). Exit codes: 0 after a graceful SIGTERM/SIGINT, 2 for bad
or contradictory flags, 1 when a config file is invalid or a port cannot be bound.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from serving.cli_numbers import (
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    PORT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
)
from serving.cli_parser import OneLineErrorParser
from serving.contract import GRPC_PORT, REST_PORT

# The serving modules (config, core, front ends) are imported inside ModelServer and main, not
# here: they load TensorFlow's runtime (~7 s), which --help and flag errors should not wait for.

log = logging.getLogger("serving.modelserver")

_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with tensorflow_model_server's flag names."""
    p = OneLineErrorParser(
        prog="python -m serving.modelserver",
        description=(
            "A TensorFlow-Serving-compatible model server (gRPC PredictionService/ModelService "
            "and the REST API) for this project's SavedModels, for machines without Docker."
        ),
        allow_abbrev=False,
    )
    p.add_argument("--port", type=PORT, default=GRPC_PORT, help=f"gRPC port (default {GRPC_PORT})")
    p.add_argument(
        "--rest_api_port",
        type=PORT,
        default=REST_PORT,
        help=f"REST port (default {REST_PORT}, as in the tensorflow/serving image; 0 disables REST)",
    )
    p.add_argument(
        "--rest_api_num_threads",
        type=POSITIVE_INT,
        default=4 * (os.cpu_count() or 1),
        help="REST requests processed at once (default 4 x CPUs, like TF Serving)",
    )
    p.add_argument(
        "--rest_api_timeout_in_ms",
        type=NON_NEGATIVE_INT,
        default=30000,
        help="REST deadline for a request waiting in the batching queue (default 30000)",
    )
    p.add_argument(
        "--rest_api_read_timeout_seconds",
        type=POSITIVE_FLOAT,
        default=30.0,
        help="a REST request (headers and body) must arrive in full within this time of its "
        "first byte, else 408 (convserve extension; default 30)",
    )
    p.add_argument("--model_name", default=None, help="model name (default 'default')")
    p.add_argument(
        "--model_base_path",
        default=None,
        help="folder with integer version subfolders; with --model_config_file it replaces "
        "the base path of a single-model config (convserve extension)",
    )
    p.add_argument("--model_config_file", default=None, help="ModelServerConfig text proto")
    p.add_argument(
        "--model_config_file_poll_wait_seconds",
        type=NON_NEGATIVE_INT,
        default=0,
        help="re-read --model_config_file every N seconds (0: never, the default)",
    )
    p.add_argument(
        "--file_system_poll_wait_seconds",
        type=NON_NEGATIVE_FLOAT,
        default=1,
        help="seconds between scans of the base paths for new/removed versions (default 1)",
    )
    p.add_argument(
        "--allow_version_labels_for_unavailable_models",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="let version_labels name versions that are not loaded yet (TF Serving refuses them "
        "without this flag; this server always allows them)",
    )
    p.add_argument("--monitoring_config_file", default=None, help="MonitoringConfig text proto")
    p.add_argument(
        "--enable_batching",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="merge concurrent predict requests into batched model calls",
    )
    p.add_argument("--batching_parameters_file", default=None, help="BatchingParameters text proto")
    p.add_argument(
        "--enable_model_warmup",
        type=_bool,
        nargs="?",
        const=True,
        default=True,
        help="replay assets.extra/tf_serving_warmup_requests before serving a version",
    )
    p.add_argument(
        "--prefer_tflite_model",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="run serving_default on the version folder's model.tflite (checked against the "
        "SavedModel at load) where there is one",
    )
    p.add_argument(
        "--grpc_max_threads",
        type=POSITIVE_INT,
        default=32,
        help="gRPC worker threads (convserve extension; default 32)",
    )
    p.add_argument(
        "--shutdown_grace_seconds",
        type=NON_NEGATIVE_FLOAT,
        default=30.0,
        help="on SIGTERM, how long in-flight requests may take (convserve extension)",
    )
    p.add_argument(
        "--log_level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="stderr log level (convserve extension)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check the flags; exits with status 2 and a message on an error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model_config_file:
        if args.model_name:
            parser.error(
                "--model_name cannot be combined with --model_config_file (the config names "
                "the models); pass only --model_base_path to relocate a single-model config"
            )
    elif not args.model_base_path:
        parser.error(
            "either --model_base_path (with --model_name) or --model_config_file is required"
        )
    if args.model_config_file_poll_wait_seconds and not args.model_config_file:
        parser.error("--model_config_file_poll_wait_seconds needs --model_config_file")
    if args.batching_parameters_file and not args.enable_batching:
        parser.error("--batching_parameters_file needs --enable_batching")
    if args.port == 0 and args.rest_api_port == 0:
        parser.error("--port and --rest_api_port are both 0: nothing to serve on")
    if args.port and args.port == args.rest_api_port:
        parser.error(f"--port and --rest_api_port are both {args.port}")
    if args.model_base_path:
        args.model_base_path = str(Path(args.model_base_path).expanduser().resolve())
    return args


class ModelServer:
    """The running server: core, gRPC and REST front ends, config reloads, graceful stop."""

    def __init__(self, args: argparse.Namespace):
        from serving.modelserver.config import (
            MonitoringSettings,
            load_batching_parameters,
            load_model_server_config,
            load_monitoring_config,
            single_model_config,
        )
        from serving.modelserver.core import ServerCore
        from serving.modelserver.metrics import ServerMetrics

        self.args = args
        self._load_config = lambda: load_model_server_config(
            args.model_config_file, base_path_override=args.model_base_path
        )
        if args.model_config_file:
            config = self._load_config()
        else:
            config = single_model_config(args.model_name or "default", args.model_base_path)
        monitoring = (
            load_monitoring_config(args.monitoring_config_file)
            if args.monitoring_config_file
            else MonitoringSettings()
        )
        batching = (
            load_batching_parameters(args.batching_parameters_file)
            if args.enable_batching
            else None
        )
        self.metrics = ServerMetrics() if monitoring.enabled else None
        self.monitoring = monitoring
        self.core = ServerCore(
            config,
            poll_interval_s=args.file_system_poll_wait_seconds,
            batching=batching,
            metrics=self.metrics,
            enable_warmup=args.enable_model_warmup,
            prefer_tflite=args.prefer_tflite_model,
        )
        self.stop_event = threading.Event()
        self.grpc_server: Any = None
        self.rest_server: Any = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Load the models, then open the ports (TF Serving also loads before it listens)."""
        from serving.modelserver.grpc_service import create_grpc_server
        from serving.modelserver.rest import RestServer

        self.core.start()
        if self.args.port:
            self.grpc_server, _ = create_grpc_server(
                self.core,
                f"0.0.0.0:{self.args.port}",
                metrics=self.metrics,
                max_workers=self.args.grpc_max_threads,
            )
            self.grpc_server.start()
            log.info("Running gRPC ModelServer at 0.0.0.0:%d ...", self.args.port)
        if self.args.rest_api_port:
            self.rest_server = RestServer(
                ("0.0.0.0", self.args.rest_api_port),
                self.core,
                metrics=self.metrics,
                metrics_path=self.monitoring.path if self.monitoring.enabled else None,
                max_concurrent=self.args.rest_api_num_threads,
                timeout_s=self.args.rest_api_timeout_in_ms / 1000 or None,
                read_timeout_s=self.args.rest_api_read_timeout_seconds,
            )
            t = threading.Thread(target=self.rest_server.serve_forever, name="rest", daemon=True)
            t.start()
            self._threads.append(t)
            log.info("Exporting HTTP/REST API at:0.0.0.0:%d ...", self.args.rest_api_port)
        if self.args.model_config_file and self.args.model_config_file_poll_wait_seconds:
            t = threading.Thread(target=self._poll_config, name="config-poll", daemon=True)
            t.start()
            self._threads.append(t)

    def _poll_config(self) -> None:
        from serving.modelserver.config import ConfigFileError

        while not self.stop_event.wait(self.args.model_config_file_poll_wait_seconds):
            try:
                self.core.apply_config(self._load_config())
            except ConfigFileError as exc:
                log.error("keeping the current config: %s", exc)
            except Exception:  # keep polling whatever happened; the log has the details
                log.exception("keeping the current config: applying the new one failed")

    def stop(self) -> bool:
        """Stop accepting, let in-flight requests finish (up to the grace period), unload."""
        grace = self.args.shutdown_grace_seconds
        log.info("shutting down: draining requests in flight (up to %.0fs)", grace)
        drained = True
        grpc_done = self.grpc_server.stop(grace) if self.grpc_server is not None else None
        if self.rest_server is not None:
            drained = self.rest_server.drain(grace)
        if grpc_done is not None:
            drained = grpc_done.wait(grace + 1) and drained
        self.core.close()
        log.info("stopped%s", "" if drained else " (some requests were cut off)")
        return drained


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m serving.modelserver``; returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from serving.modelserver.config import ConfigFileError

    try:
        server = ModelServer(args)
    except ConfigFileError as exc:
        print(f"modelserver: {exc}", file=sys.stderr)
        return 1

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        server.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.start()
    except OSError as exc:
        print(f"modelserver: cannot start: {exc}", file=sys.stderr)
        server.core.close()
        return 1
    started = time.monotonic()
    while not server.stop_event.wait(1.0):
        pass
    log.info("served for %.0fs", time.monotonic() - started)
    server.stop()
    return 0
