"""The backend interface: what every backend takes and returns (NumPy only, no transport)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

__all__ = [
    "Backend",
    "ClosesOnExit",
    "PredictResult",
    "VersionStatus",
    "check_batch",
    "newest_first",
]


@dataclass(frozen=True)
class PredictResult:
    """Class probabilities for a batch and the model version that produced them."""

    probabilities: np.ndarray  # float32 [N, NUM_CLASSES]
    model_version: int


@dataclass(frozen=True)
class VersionStatus:
    """One model version's state as TF Serving names it (START, LOADING, AVAILABLE,
    UNLOADING, END); ``error`` is empty when the version is healthy."""

    version: int
    state: str
    error: str = ""


@runtime_checkable
class Backend(Protocol):
    """Where predictions come from: TF Serving over gRPC or REST, or a SavedModel in-process.

    Failures are raised as `serving.backends.errors.BackendError` subclasses.
    """

    def predict(self, batch: np.ndarray) -> PredictResult:
        """Classify a float32 ``[N, 28, 28, 1]`` batch (values in [0, 1]) in one call."""
        ...

    def status(self) -> list[VersionStatus]:
        """The model's versions (only the pinned one when pinned), ALWAYS newest first."""
        ...

    def close(self) -> None:
        """Release connections, threads and models."""
        ...


_C = TypeVar("_C", bound="ClosesOnExit")


class ClosesOnExit:
    """Mixin for backends: ``with backend:`` calls ``close()`` at the end."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_batch(batch: np.ndarray) -> np.ndarray:
    """Return ``batch`` as a C-contiguous float32 ``[N, ...]`` array with N >= 1, or raise ValueError."""
    arr = np.ascontiguousarray(batch, dtype=np.float32)
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch [N, 28, 28, 1], got shape {arr.shape}")
    return arr


def newest_first(statuses: list[VersionStatus]) -> list[VersionStatus]:
    """``statuses`` in the order `Backend.status` promises."""
    return sorted(statuses, key=lambda s: s.version, reverse=True)
