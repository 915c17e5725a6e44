"""The deadline and bounded-retry loop shared by the remote backends (gRPC and REST)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from serving.backends.errors import BackendTimeout, BackendUnavailable

__all__ = ["call_with_retries"]

log = logging.getLogger(__name__)

_BACKOFF = 0.05  # seconds before the first retry; doubles each time, never past the deadline

T = TypeVar("T")


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
