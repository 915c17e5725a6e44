"""`GatewayState`: everything one app owns, at ``app.extensions["gateway"]``."""

from __future__ import annotations

from importlib import resources

from flask import current_app

from serving.backends import Backend
from serving.contract import CLASS_NAMES
from serving.gateway.config import GatewayConfig
from serving.gateway.metrics import GatewayMetrics
from serving.gateway.readiness import Readiness

__all__ = ["EXTENSION", "GatewayState", "current_state"]

EXTENSION = "gateway"


class GatewayState:
    """Config, backend, metrics, readiness cache and the OpenAPI document of one app."""

    def __init__(self, config: GatewayConfig, backend: Backend):
        self.config = config
        self.backend = backend
        self.metrics = GatewayMetrics(CLASS_NAMES)
        self.readiness = Readiness(backend, config, self.metrics.observe_versions)
        self.openapi = resources.files("serving.gateway").joinpath("openapi.json").read_bytes()

    def close(self) -> None:
        """Close the backend."""
        self.backend.close()


def current_state() -> GatewayState:
    """The state of the app handling the current request."""
    return current_app.extensions[EXTENSION]
