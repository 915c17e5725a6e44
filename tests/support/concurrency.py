"""Calling one function from many threads at (nearly) the same moment."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def call_concurrently(fn: Callable[[Any], Any], args: Sequence[Any]) -> list[Any]:
    """``fn(arg)`` for every arg, each in its own thread, all released by one barrier; the
    result, or the exception raised, per arg, in order."""
    barrier = threading.Barrier(len(args))

    def call(arg: Any) -> Any:
        barrier.wait()
        try:
            return fn(arg)
        except Exception as exc:  # collected for the caller's assertions
            return exc

    with ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(call, args))
