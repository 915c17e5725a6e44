"""A requests adapter whose plain-HTTP sockets never wait past the calling thread's deadline.

requests (urllib3, http.client) applies its read timeout to each socket read, so a server
that sends the status line, headers or body a byte at a time can hold a call for as long as
it likes. Connections made through `DeadlineAdapter` use `DeadlineSocket`, whose every read
gets only the time left before the deadline set with `deadline()` on the same thread.

Example::

    session.mount("http://", DeadlineAdapter(pool_maxsize=64))
    with deadline(time.monotonic() + 5.0):
        session.get(url, timeout=(5.0, 5.0))   # raises requests' ReadTimeout at the deadline

TLS sockets are wrapped by the ssl module and read outside this class: over https only the
body (read by the caller against the deadline) is covered.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
import urllib3
from urllib3.connection import HTTPConnection

__all__ = ["DeadlineAdapter", "DeadlineSocket", "deadline"]

_local = threading.local()


@contextlib.contextmanager
def deadline(at: float) -> Iterator[None]:
    """Within the block, reads on this thread's `DeadlineSocket` s end at ``at`` (monotonic)."""
    previous = getattr(_local, "deadline", None)
    _local.deadline = at
    try:
        yield
    finally:
        _local.deadline = previous


class DeadlineSocket(socket.socket):
    """A socket whose reads wait at most until the thread's `deadline` (TimeoutError after)."""

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        at = getattr(_local, "deadline", None)
        if at is not None:
            left = at - time.monotonic()
            if left <= 0:
                raise TimeoutError("the call's deadline passed")
            self.settimeout(left)
        return super().recv_into(buffer, nbytes, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        buffer = bytearray(bufsize)
        n = self.recv_into(buffer, bufsize, flags)
        return bytes(buffer[:n])


class _DeadlineConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        timeout = sock.gettimeout()
        wrapped = DeadlineSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        wrapped.settimeout(timeout)
        return wrapped


class _DeadlinePool(urllib3.HTTPConnectionPool):
    ConnectionCls = _DeadlineConnection


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """`requests.adapters.HTTPAdapter` whose http:// connections are `DeadlineSocket` s."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            **self.poolmanager.pool_classes_by_scheme,
            "http": _DeadlinePool,
        }
