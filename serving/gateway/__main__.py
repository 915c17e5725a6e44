"""Serve the gateway under gunicorn (never Flask's development server).

Usage::

    GATEWAY_BACKEND=embedded:models/fashion_mnist python -m serving.gateway --port 8080
    GATEWAY_BACKEND=grpc://localhost:8500 GATEWAY_WORKERS=4 python -m serving.gateway
    python -m serving.gateway --check        # validate the GATEWAY_* config and exit

Settings come from ``GATEWAY_*`` environment variables (serving/gateway/config.py); ``--host``
and ``--port`` override ``GATEWAY_HOST``/``GATEWAY_PORT``. gunicorn's settings and hooks are in
serving/gateway/gunicorn_conf.py; ``GUNICORN_CMD_ARGS`` overrides them, as for gunicorn's own
command. Exit codes: 0 clean shutdown, 2 bad configuration, 1 gunicorn
failed to start (e.g. the port is taken).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from serving.cli_numbers import Number
from serving.gateway.api_keys import load_api_keys
from serving.gateway.config import ConfigError, GatewayConfig


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m serving.gateway",
        description="Run the convserve gateway under gunicorn. Configure it with GATEWAY_* "
        "environment variables (GATEWAY_BACKEND=grpc://host:8500 | http://host:8501 | "
        "embedded:<model base path>, GATEWAY_WORKERS, GATEWAY_WORKER_CLASS, ...).",
    )
    parser.add_argument("--host", help="address to bind (default: GATEWAY_HOST or 0.0.0.0)")
    parser.add_argument(
        "--port",
        type=Number(int, low=1, high=65535),
        help="TCP port (default: GATEWAY_PORT or 8080)",
    )
    parser.add_argument(
        "--check", action="store_true", help="validate the configuration, print it and exit"
    )
    return parser.parse_args(argv)


class GatewayApplication(BaseApplication):
    """gunicorn with the settings of serving.gateway.gunicorn_conf and the app factory."""

    def load_config(self) -> None:
        conf = importlib.import_module("serving.gateway.gunicorn_conf")
        self._apply(vars(conf))
        # As gunicorn's own command does: GUNICORN_CMD_ARGS overrides the config file.
        env_args = self.cfg.get_cmd_args_from_env()
        if env_args:
            self._apply(vars(self.cfg.parser().parse_args(env_args)))

    def _apply(self, settings: dict[str, Any]) -> None:
        """Set every gunicorn setting named in ``settings`` that has a value."""
        for key, value in settings.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        # Imported in the worker, after gunicorn_conf has set up prometheus-client's
        # multiprocess directory (prometheus-client reads it when first imported).
        from serving.gateway.app import create_app

        return create_app()


def main(argv: list[str] | None = None) -> int:
    """Validate the config, then run gunicorn until it is told to stop."""
    args = _parse_args(argv)
    if args.host is not None:
        os.environ["GATEWAY_HOST"] = args.host
    if args.port is not None:
        os.environ["GATEWAY_PORT"] = str(args.port)
    try:
        cfg = GatewayConfig.from_env()
        load_api_keys(cfg)  # a missing or malformed keys file stops here, not in each worker
    except ConfigError as exc:
        print(f"serving.gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        for key, value in cfg.public_items().items():
            print(f"GATEWAY_{key.upper()}={'' if value is None else value}")
        return 0
    GatewayApplication(prog="python -m serving.gateway").run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
