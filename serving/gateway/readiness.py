"""``/readyz``: is the model AVAILABLE on the backend? Cached so probes do not hammer it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from serving.backends import Backend, BackendError, VersionStatus
from serving.gateway import errors
from serving.gateway.config import GatewayConfig

__all__ = ["Readiness"]

log = logging.getLogger(__name__)


class Readiness:
    """``/readyz`` answers, cached for ``config.ready_cache_seconds``."""

    def __init__(
        self,
        backend: Backend,
        config: GatewayConfig,
        on_status: Callable[[list[VersionStatus]], None] | None = None,
    ):
        self.backend = backend
        self.on_status = on_status  # sees every status answer (the version-error metric)
        self.ttl = config.ready_cache_seconds
        self.pinned = config.model_version
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._value: tuple[bool, list[int], str] = (False, [], "not checked yet")

    def check(self) -> tuple[bool, list[int], str]:
        """(ready, available versions ascending, reason when not ready)."""
        with self._lock:
            now = time.monotonic()
            if now - self._at < self.ttl:
                return self._value
            try:
                statuses = self.backend.status()
            except BackendError as exc:
                log.warning("readiness: backend status failed: %s", exc)
                value = (False, [], f"backend: {errors.public_backend_message(exc)}")
            else:
                if self.on_status is not None:
                    self.on_status(statuses)
                available = sorted(
                    int(s.version)
                    for s in statuses
                    if s.state == "AVAILABLE" and (self.pinned is None or s.version == self.pinned)
                )
                if available:
                    value = (True, available, "")
                else:
                    states = ", ".join(f"{s.version}: {s.state}" for s in statuses) or "none"
                    want = f"version {self.pinned}" if self.pinned is not None else "a version"
                    value = (
                        False,
                        [],
                        f"{want} of the model is not AVAILABLE (versions: {states})",
                    )
            self._value, self._at = value, time.monotonic()
            return value
