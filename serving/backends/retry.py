"""Result types and the deadline/retry loop shared by the gRPC and REST clients."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from serving.tfserving.errors import BackendTimeout, BackendUnavailable

__all__ = ["SIGNATURE_NAME", "PredictResult", "VersionStatus", "call_with_retries", "check_batch"]

log = logging.getLogger(__name__)

#: The export's signature and tensor names (DESIGN.md, "Export").
SIGNATURE_NAME = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
#: How TF Serving starts the message for a version label it does not know (gRPC and REST).
UNKNOWN_LABEL = "Unrecognized servable version label"
_BACKOFF = 0.05  # seconds before the first retry; doubles each time, never past the deadline

T = TypeVar("T")


@dataclass(frozen=True)
class PredictResult:
    """Class probabilities for a batch and the model version that produced them."""

    probabilities: np.ndarray  # float32 [N, 10]
    model_version: int


@dataclass(frozen=True)
class VersionStatus:
    """One model version's state as TF Serving names it (AVAILABLE, LOADING, UNLOADING, END, ...)."""

    version: int
    state: str
    error: str = ""


def check_batch(batch: np.ndarray) -> np.ndarray:
    """Return ``batch`` as a C-contiguous float32 ``[N, ...]`` array with N >= 1, or raise ValueError."""
    arr = np.ascontiguousarray(batch, dtype=np.float32)
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch [N, 28, 28, 1], got shape {arr.shape}")
    return arr


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
