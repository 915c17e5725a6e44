"""Call options, and the deadline and bounded-retry loop, shared by the remote backends."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from serving.backends.errors import BackendConfigError, BackendTimeout, BackendUnavailable

__all__ = ["call_with_retries", "check_call_options"]

log = logging.getLogger(__name__)

_BACKOFF = 0.05  # seconds before the first retry; doubles each time, never past the deadline

T = TypeVar("T")


def check_call_options(
    version: int | None, label: str | None, timeout: float, retries: int
) -> None:
    """Raise `BackendConfigError` unless at most one pin is set, ``timeout`` > 0, ``retries`` >= 0."""
    if version is not None and label is not None:
        raise BackendConfigError("pin either a version or a label, not both")
    if not timeout > 0 or retries < 0:
        raise BackendConfigError("timeout must be > 0 and retries >= 0")


def call_with_retries(
    attempt: Callable[[float], T], *, timeout: float, retries: int, what: str
) -> T:
    """Run ``attempt(remaining_seconds)`` until it succeeds, within one overall deadline.

    Only :class:`BackendUnavailable` is retried, at most ``retries`` times, with a short
    exponential backoff; every other error propagates at once. Running out of time before
    an attempt could start raises :class:`BackendTimeout` (or the last unavailability error).
    """
    deadline = time.monotonic() + timeout
    failures = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BackendTimeout(f"{what}: no answer within {timeout:g} s")
        try:
            return attempt(remaining)
        except BackendUnavailable as exc:
            failures += 1
            pause = _BACKOFF * 2 ** (failures - 1)
            if failures > retries or deadline - time.monotonic() <= pause:
                raise
            log.warning("%s; retry %d of %d in %.2f s", exc, failures, retries, pause)
            time.sleep(pause)
