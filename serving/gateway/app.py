"""The gateway's Flask app factory.

Example (tests; production runs it under gunicorn with ``python -m serving.gateway``)::

    from serving.gateway import create_app
    app = create_app({"backend": "grpc://localhost:8500"})
    client = app.test_client()
    client.post("/v1/predict", data=png_bytes, content_type="image/png").json

Nothing is built at import time: the config, backend, metrics and OpenAPI document are created
by `create_app` and hang off ``app.extensions["gateway"]`` (a `GatewayState`). The views
(`serving.gateway.views`) are a Blueprint that reads that state.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask

from serving.backends import Backend, connect
from serving.backends.merging import MergingBackend
from serving.gateway import auth, errors, tracking
from serving.gateway.api_keys import load_api_keys
from serving.gateway.body_limit import BodyLimit
from serving.gateway.config import GatewayConfig
from serving.gateway.log import configure_logging
from serving.gateway.state import EXTENSION, GatewayState
from serving.gateway.views import bp

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def _resolve_config(config: GatewayConfig | Mapping[str, Any] | None) -> GatewayConfig:
    if isinstance(config, GatewayConfig):
        return config
    base = GatewayConfig.from_env()
    return base.with_overrides(config) if config else base


def connect_backend(cfg: GatewayConfig) -> Backend:
    """The backend ``cfg.backend`` names, through `serving.backends.connect`; a remote one
    with its concurrent requests merged into one RPC unless ``cfg.remote_batching`` is off."""
    log.info("backend: %s (%s)", cfg.backend_kind, cfg.backend_target)
    backend = connect(
        cfg.backend,
        model_name=cfg.model_name,
        version=cfg.model_version,
        label=cfg.model_label,
        timeout=cfg.timeout_seconds,
        retries=cfg.retries,
        **cfg.embedded_options(),
    )
    if cfg.backend_kind == "embedded" or not cfg.remote_batching:
        return backend
    return MergingBackend(
        backend, batch_max_size=cfg.batch_max_size, batch_timeout_ms=cfg.batch_timeout_ms
    )


def create_app(
    config: GatewayConfig | Mapping[str, Any] | None = None, *, backend: Backend | None = None
) -> Flask:
    """Build the gateway app.

    ``config``: a `GatewayConfig`, or a dict of field overrides applied on top of the
    ``GATEWAY_*`` environment, or None for the environment alone. ``backend``: an object
    implementing `serving.backends.Backend` (tests); by default the one the config names is
    built. Raises `serving.gateway.config.ConfigError` on a bad config.
    """
    cfg = _resolve_config(config)
    configure_logging(cfg.log_level)
    api_keys = load_api_keys(cfg)
    app = Flask("serving.gateway")
    app.config["GATEWAY"] = cfg
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    # Parsed JSON bodies are limited by max_body_bytes already; keep Flask's JSON compact.
    app.json.compact = True  # type: ignore[attr-defined]
    app.wsgi_app = BodyLimit(app.wsgi_app, cfg.max_body_bytes)  # type: ignore[method-assign]
    state = GatewayState(cfg, backend if backend is not None else connect_backend(cfg))
    app.extensions[EXTENSION] = state
    errors.register(app)
    tracking.install(app, state)
    auth.install(app, api_keys, protect_metrics=cfg.api_keys_protect_metrics)
    app.register_blueprint(bp)
    return app
