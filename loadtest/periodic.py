"""`Periodic`: one job repeated in a daemon thread while a load runs (samplers, version swaps).

Subclasses implement `tick`; ``with job:`` runs it from `start` to `stop`::

    class Probe(Periodic):
        def tick(self) -> None:
            print("still here")

    with Probe(interval_s=1.0, name="probe"):
        ...
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TypeVar

_P = TypeVar("_P", bound="Periodic")


class Periodic:
    """Calls `tick` every ``interval_s`` seconds (first call at once when ``first_now``) in a
    daemon thread between `start` and `stop`; a `tick` that returns False ends the loop."""

    def __init__(self, interval_s: float, *, name: str, first_now: bool = False):
        if interval_s <= 0:
            raise ValueError(f"interval must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self.name = name
        self.first_now = first_now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> bool | None:
        """One round of the job; False stops the loop."""
        raise NotImplementedError

    def _run(self) -> None:
        if self.first_now and self.tick() is False:
            return
        while not self._stop.wait(self.interval_s):
            if self.tick() is False:
                return

    def start(self: _P) -> _P:
        """Start the thread."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop and wait for a `tick` in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def __enter__(self: _P) -> _P:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
