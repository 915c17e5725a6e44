"""Gateway configuration: one typed object read from ``GATEWAY_*`` environment variables.

Every field of :class:`GatewayConfig` has an environment variable named ``GATEWAY_`` plus the
field name in upper case (``max_batch`` → ``GATEWAY_MAX_BATCH``). Values are parsed and
validated once, at start-up; a bad value raises :class:`ConfigError` with a one-line message
that names the variable.

Example::

    >>> cfg = GatewayConfig.from_env({"GATEWAY_BACKEND": "grpc://localhost:8500"})
    >>> cfg.backend_kind, cfg.backend_target
    ('grpc', 'localhost:8500')
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, get_args, get_origin, get_type_hints

from serving.backends.address import BackendKind, parse_address
from serving.backends.errors import BackendConfigError
from serving.cli_numbers import (
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    Number,
)
from serving.contract import GATEWAY_PORT, MODEL_NAME

ENV_PREFIX = "GATEWAY_"
DEFAULT_MODEL_DIR = f"models/{MODEL_NAME}"
DEFAULT_BACKEND = f"embedded:{DEFAULT_MODEL_DIR}"
# Mirrors serving.preprocess.MAX_PIXELS (kept literal so reading the config needs no Pillow);
# a test checks that the two agree.
DEFAULT_MAX_PIXELS = 40_000_000

_LABEL = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: GATEWAY_WORKER_CLASS → the gunicorn worker class it names.
WORKER_CLASSES = {
    "gevent": "serving.gateway.gevent_worker.BufferingGeventWorker",
    "gthread": "serving.gateway.slow_clients.RequestBufferingWorker",
}


class ConfigError(ValueError):
    """A configuration value is missing, malformed or inconsistent (message names the variable)."""


def env_name(field_name: str) -> str:
    """Return the environment variable that sets ``field_name`` (``max_batch`` → ``GATEWAY_MAX_BATCH``)."""
    return ENV_PREFIX + field_name.upper()


@dataclass(frozen=True)
class GatewayConfig:
    """All gateway settings; see the module docstring for how they map to env variables."""

    # Where predictions come from: grpc://host:port | http(s)://host:port | embedded:<path>.
    backend: str = DEFAULT_BACKEND
    model_name: str = MODEL_NAME
    # Pin one model version, or a version label (TF Serving canary labels); never both.
    model_version: int | None = None
    model_label: str | None = None
    # Deadline of one backend call, and how often an UNAVAILABLE backend is retried within it.
    timeout_seconds: float = 5.0
    retries: int = 2
    # Limits: request body, images per request, decoded pixels per image and per request (a
    # small body of highly compressible images must not buy minutes of decoding).
    max_body_bytes: int = 10 * 1024 * 1024
    max_batch: int = 256
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_request_pixels: int = 2 * DEFAULT_MAX_PIXELS
    # gunicorn process model (used by `python -m serving.gateway` / gunicorn_conf.py).
    host: str = "0.0.0.0"
    port: int = GATEWAY_PORT
    workers: int = 2
    # gevent: every connection a greenlet on one OS thread per worker (serving/gateway/
    # gevent_worker.py); gthread: a pool of `threads` threads per worker (slow_clients.py).
    worker_class: str = "gevent"
    worker_connections: int = 1000
    threads: int = 16
    worker_timeout_seconds: int = 30
    graceful_timeout_seconds: int = 20
    keepalive_seconds: int = 5
    access_log: bool = False
    log_level: str = "INFO"
    # Micro-batching: the embedded backend's model calls and, with remote_batching, the
    # requests merged into one RPC to a remote backend (serving/backends/merging.py).
    batch_max_size: int = 64
    batch_timeout_ms: float = 2.0
    remote_batching: bool = True
    # Embedded backend: polling of the model directory for new versions.
    model_poll_seconds: float = 2.0
    # TensorFlow thread pools of each worker (0 = TensorFlow's default, one per core). With
    # several gunicorn workers on few cores, 1 avoids oversubscription and spinning threads.
    tf_intra_op_threads: int = 1
    tf_inter_op_threads: int = 1
    # Embedded backend: run a version's model.tflite (which training exports beside the
    # SavedModel, checked against it at load) instead of the SavedModel's TensorFlow graph.
    prefer_tflite_model: bool = True
    # Readiness probe cache and the Retry-After sent with 503 answers.
    ready_cache_seconds: float = 1.0
    retry_after_seconds: int = 1
    # Optional API keys (serving/gateway/api_keys.py, auth.py): comma-separated, or a file with one key per
    # line (a mounted Kubernetes Secret); never both. Unset = no authentication. The keys are
    # kept out of repr() and of `python -m serving.gateway --check`.
    api_keys: str | None = field(default=None, repr=False)
    api_keys_file: str | None = None
    # /healthz and /readyz are always open (probes); /metrics only unless this is set.
    api_keys_protect_metrics: bool = False
    # A client must send its whole request (headers and body) within this many seconds
    # (serving/gateway/request_framing.py); a trickling client is cut off, not waited for.
    client_timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        self._validate()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewayConfig:
        """Build the config from ``GATEWAY_*`` variables of ``environ`` (default ``os.environ``)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        hints = get_type_hints(cls)
        for f in fields(cls):
            raw = environ.get(env_name(f.name))
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = _parse(env_name(f.name), raw.strip(), hints[f.name], f.name)
        return cls(**values)

    def with_overrides(self, overrides: Mapping[str, Any]) -> GatewayConfig:
        """Return a copy with ``overrides`` (field name → value; strings are parsed like env)."""
        hints = get_type_hints(type(self))
        names = {f.name for f in fields(self)}
        values: dict[str, Any] = {}
        for key, value in overrides.items():
            if key not in names:
                raise ConfigError(f"unknown gateway setting {key!r}")
            values[key] = _parse(key, value, hints[key], key) if isinstance(value, str) else value
        return dataclasses.replace(self, **values)

    # -- derived ------------------------------------------------------------------------------
    @property
    def backend_kind(self) -> BackendKind:
        """``grpc``, ``http`` or ``embedded``."""
        return parse_address(self.backend).kind

    @property
    def backend_target(self) -> str:
        """``host:port`` for gRPC, the base URL for REST, the model directory for embedded."""
        return parse_address(self.backend).target

    def embedded_options(self) -> dict[str, Any]:
        """The `serving.backends.connect` options of an embedded backend (none for remote ones)."""
        if self.backend_kind != "embedded":
            return {}
        return {name: getattr(self, name) for name in _EMBEDDED_OPTIONS}

    def public_items(self) -> dict[str, Any]:
        """Every setting by field name, secrets masked (for printing the effective config)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.api_keys is not None:
            out["api_keys"] = "<set>"
        return out

    # -- validation ---------------------------------------------------------------------------
    def _validate(self) -> None:
        hints = get_type_hints(type(self))
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), hints[f.name])
        try:
            parse_address(self.backend)
        except BackendConfigError as exc:
            raise ConfigError(f"{env_name('backend')}={exc}") from None
        if not self.model_name or not _LABEL.match(self.model_name):
            raise ConfigError(f"{env_name('model_name')}={self.model_name!r} is not a model name")
        if self.model_version is not None and self.model_label is not None:
            raise ConfigError(
                f"set {env_name('model_version')} or {env_name('model_label')}, not both"
            )
        if self.api_keys is not None and self.api_keys_file is not None:
            raise ConfigError(
                f"set {env_name('api_keys')} or {env_name('api_keys_file')}, not both"
            )
        if self.model_label is not None and not _LABEL.match(self.model_label):
            raise ConfigError(f"{env_name('model_label')}={self.model_label!r} is not a label")
        if self.model_label is not None and self.backend_kind == "embedded":
            raise ConfigError(
                f"{env_name('model_label')} needs a grpc:// or http:// backend "
                "(version labels live in TF Serving's model config)"
            )
        for name in (*_POSITIVE, *_NON_NEGATIVE, "port"):
            if getattr(self, name) is not None:  # model_version is optional
                _check_number(name, getattr(self, name))
        if self.worker_class not in WORKER_CLASSES:
            raise ConfigError(
                f"{env_name('worker_class')}={self.worker_class!r}: expected one of "
                f"{', '.join(WORKER_CLASSES)}"
            )
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ConfigError(
                f"{env_name('log_level')}={self.log_level!r}: expected one of {', '.join(_LOG_LEVELS)}"
            )


# Fields passed to serving.backends.connect as embedded-backend options (same names).
_EMBEDDED_OPTIONS = (
    "batch_max_size",
    "batch_timeout_ms",
    "model_poll_seconds",
    "tf_intra_op_threads",
    "tf_inter_op_threads",
    "prefer_tflite_model",
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# Numeric fields by the values they accept (all finite: NaN and infinity are never valid).
_POSITIVE = (
    "timeout_seconds",
    "max_body_bytes",
    "max_batch",
    "max_pixels",
    "max_request_pixels",
    "workers",
    "worker_connections",
    "threads",
    "worker_timeout_seconds",
    "batch_max_size",
    "model_poll_seconds",
    "model_version",
    "client_timeout_seconds",
)
_NON_NEGATIVE = (
    "retries",
    "graceful_timeout_seconds",
    "keepalive_seconds",
    "batch_timeout_ms",
    "tf_intra_op_threads",
    "tf_inter_op_threads",
    "ready_cache_seconds",
    "retry_after_seconds",
)
# A gateway port must be bound, so 0 ("any free port") is not accepted.
_GATEWAY_PORT = Number(int, low=1, high=65535)


def _number_rule(name: str) -> Number:
    """The `Number` a numeric field accepts (by its type and the lists above)."""
    is_float = _base_type(get_type_hints(GatewayConfig)[name]) is float
    if name == "port":
        return _GATEWAY_PORT
    if name in _POSITIVE:
        return POSITIVE_FLOAT if is_float else POSITIVE_INT
    if name in _NON_NEGATIVE:
        return NON_NEGATIVE_FLOAT if is_float else NON_NEGATIVE_INT
    return Number(float if is_float else int)


def _check_number(name: str, value: Any) -> None:
    """Bounds (and finiteness) of a numeric field set in code, in the same words as parsing."""
    try:
        _number_rule(name).check(value)
    except ValueError as exc:
        raise ConfigError(f"{env_name(name)}: {exc}") from None


def _parse(name: str, raw: str, hint: Any, field: str) -> Any:
    """Parse one string value of ``field`` (type ``hint``); raise ConfigError naming ``name``."""
    base = _base_type(hint)
    if base is bool:
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{name}: expected a boolean (1/0, true/false), got {raw!r}")
    if base in (int, float):
        try:
            return _number_rule(field).parse(raw)  # NaN and infinity are refused here
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return raw


def _base_type(hint: Any) -> type:
    if get_origin(hint) is not None:  # Optional[X] / X | None
        args = [a for a in get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def _check_type(name: str, value: Any, hint: Any) -> None:
    optional = type(None) in get_args(hint)
    if value is None:
        if not optional:
            raise ConfigError(f"{env_name(name)} must be set")
        return
    base = _base_type(hint)
    ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(f"{env_name(name)}={value!r} must be {base.__name__}")


__all__ = ["DEFAULT_BACKEND", "WORKER_CLASSES", "ConfigError", "GatewayConfig", "env_name"]
