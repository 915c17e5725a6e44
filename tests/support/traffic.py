"""Requests against real servers from test threads, where a thread that raises fails the test.

Usage::

    from tests.support.traffic import Traffic, post_image

    with Traffic(lambda: post_image(gw.url, png), threads=4) as traffic:
        ...                                  # break things while requests flow
    outcomes = traffic.outcomes              # every request, in completion order

A worker thread that raises stops the traffic and the exception is re-raised when the block
ends (`Traffic.stop`); nothing dies silently. ``post_image`` opens a new connection per request,
so the kernel spreads requests over all gunicorn workers, and records a refused or reset
connection, or an answer cut off after its headers, as an `Outcome` with ``status=None``
instead of raising.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, TypeVar

import requests

__all__ = ["Outcome", "Traffic", "get", "post_image"]

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome:
    """One HTTP request: wall-clock start and end (``time.time()``), status, headers, JSON body.

    ``status`` is None when no HTTP answer came (``error`` says why: refused, reset, ...).
    """

    start: float
    end: float
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    error: str = ""

    @property
    def elapsed(self) -> float:
        """Seconds from sending to the answer (or the failure)."""
        return self.end - self.start


def _request(method: str, url: str, timeout: float, **kwargs: Any) -> Outcome:
    start = time.time()
    try:
        r = requests.request(method, url, timeout=timeout, **kwargs)
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
        # ChunkedEncodingError: the answer was cut after its headers (a worker killed mid-write)
        return Outcome(start, time.time(), None, error=f"{type(exc).__name__}: {exc}")
    end = time.time()
    try:
        body = r.json()
    except ValueError:
        body = r.text
    return Outcome(start, end, r.status_code, dict(r.headers), body)


def post_image(url: str, image: bytes, timeout: float = 30.0) -> Outcome:
    """``POST {url}/v1/predict`` with a PNG body on a new connection."""
    return _request(
        "POST",
        f"{url}/v1/predict",
        timeout,
        data=image,
        headers={"Content-Type": "image/png", "Connection": "close"},
    )


def get(url: str, timeout: float = 30.0) -> Outcome:
    """``GET url`` on a new connection."""
    return _request("GET", url, timeout, headers={"Connection": "close"})


class Traffic(Generic[T]):
    """``threads`` threads calling ``send()`` in a loop (``pause`` s apart) until stopped.

    Results are appended to ``outcomes`` as they complete. An exception in ``send`` ends that
    thread and is re-raised by `stop` (and so by the ``with`` block).
    """

    def __init__(self, send: Callable[[], T], *, threads: int, pause: float = 0.0) -> None:
        self._send = send
        self._pause = pause
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._outcomes: list[T] = []
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="traffic")
        self._futures: list[Future[None]] = []
        self._threads = threads

    def _loop(self) -> None:
        while not self._stop.is_set():
            result = self._send()
            with self._lock:
                self._outcomes.append(result)
            if self._pause:
                self._stop.wait(self._pause)

    @property
    def outcomes(self) -> list[T]:
        """A snapshot of the results so far, in completion order."""
        with self._lock:
            return list(self._outcomes)

    def start(self) -> Traffic[T]:
        """Start the threads."""
        self._futures = [self._pool.submit(self._loop) for _ in range(self._threads)]
        return self

    def wait_for(self, predicate: Callable[[list[T]], bool], timeout: float, what: str) -> None:
        """Block until ``predicate(outcomes)`` holds; AssertionError naming ``what`` on timeout,
        or the thread's exception at once if a thread died."""
        deadline = time.monotonic() + timeout
        while not predicate(self.outcomes):
            for f in self._futures:
                if f.done():
                    f.result()  # re-raises the thread's exception
            assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
            time.sleep(0.05)

    def stop(self) -> list[T]:
        """Stop the threads, re-raise the first exception one of them died with, return all
        results."""
        self._stop.set()
        try:
            for f in self._futures:
                f.result()
        finally:
            self._pool.shutdown(wait=True)
        return self.outcomes

    def __enter__(self) -> Traffic[T]:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.stop()
            return
        # The block failed already: stop the threads and report the block's own exception.
        with contextlib.suppress(Exception):
            self.stop()
