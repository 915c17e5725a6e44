"""A gunicorn ``gthread`` worker that reads each request in full before a thread serves it.

It extends `serving.gateway.worker.GatewayWorker` (gthread refusing new connections at once
when a graceful stop begins), so the gateway runs one worker class with both behaviours.

gunicorn's ``gthread`` worker gives a connection to a pool thread as soon as it is readable,
and the thread then reads headers and body with blocking reads and no deadline: a client that
trickles a request one byte at a time (slowloris) holds a thread for as long as it likes, and
``GATEWAY_THREADS`` such clients hold every thread of a worker. `RequestBufferingWorker` keeps
gthread's event loop and pool but changes what a pool thread does with a connection:

- it reads only the bytes already there (non-blocking) into the connection's buffer;
- while the request is incomplete it hands the connection straight back to the event loop
  (gthread's "pending" list, woken when more bytes arrive), so a slow client costs a socket and
  its buffer, never a waiting thread;
- once the request line, the headers and the body (by ``Content-Length``, or a complete chunked
  body) are all in memory, the bytes go to gunicorn's parser and the request is served as
  usual, from memory;
- a request that is not complete within ``GATEWAY_CLIENT_TIMEOUT_SECONDS`` of its first visit
  (the connection opened, or its previous answer sent) is answered ``408`` in the gateway's
  error shape and the connection closed; a connection that sends nothing at all is closed by
  gthread after ``GATEWAY_KEEPALIVE_SECONDS``.

A body declared larger than ``GATEWAY_MAX_BODY_BYTES`` is not buffered: the request goes to the
app after its headers, which answers 413 from the ``Content-Length`` header without reading it.
``Expect: 100-continue`` is answered here (the client then sends its body).

A client socket stays in blocking mode for its whole life (the answer is written with blocking
``sendall``); reads that must not wait pass ``MSG_DONTWAIT`` instead. gthread switches a socket
to non-blocking before each wait on its poller and back in the pool thread, and gunicorn's
parser resets the socket's timeout each time it looks for an unread body: with the body in
memory none of that does anything here, and each call is a syscall and a GIL release, four per
request (docs/BENCHMARKS.md). So the worker leaves the mode alone, `_ClientSocket` skips a mode
change that changes nothing, and what the app left of a body is dropped from memory.

This module is imported by gunicorn's master (it names the worker class), so it imports neither
Flask nor prometheus-client.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from functools import partial
from typing import Any

from gunicorn.workers import gthread

from serving.gateway.config import GatewayConfig
from serving.gateway.request_framing import (
    CONTINUE,
    HEADERS_TOO_LARGE,
    MAX_HEADER_BYTES,
    READ_CHUNK,
    TIMEOUT_LOG,
    body_too_large_response,
    close_gently,
    drain_body,
    drop_expect,
    request_complete,
    timeout_response,
)
from serving.gateway.worker import GatewayWorker

__all__ = ["RequestBufferingWorker"]


class _Pending:
    """The request a connection is sending: bytes so far, deadline, 100 Continue sent."""

    __slots__ = ("buf", "continued", "deadline")

    def __init__(self, deadline: float) -> None:
        self.buf = bytearray()
        self.deadline = deadline
        self.continued = False


class _ClientSocket(socket.socket):
    """A client socket whose ``setblocking``/``settimeout`` skip the syscall (and the GIL
    release) when the socket is in that mode already; the mode itself is never faked."""

    __slots__ = ()

    @classmethod
    def blocking(cls, sock: socket.socket) -> _ClientSocket:
        """``sock``'s connection (``sock`` is detached) as a `_ClientSocket` in blocking mode."""
        wrapped = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        # A socket object built on a descriptor takes it to be blocking, whatever its flags
        # (gthread's TConn made it non-blocking): make the descriptor match.
        socket.socket.setblocking(wrapped, True)
        return wrapped

    def setblocking(self, flag: bool) -> None:
        if self.gettimeout() != (None if flag else 0.0):
            super().setblocking(flag)

    def settimeout(self, value: float | None) -> None:
        if self.gettimeout() != value:
            super().settimeout(value)


def _send_quietly(sock: Any, data: bytes) -> bool:
    """Send a short answer without blocking (it fits any socket buffer); False if it failed."""
    try:
        sock.send(data, socket.MSG_DONTWAIT)
    except OSError:
        return False
    return True


class RequestBufferingWorker(GatewayWorker):
    """gthread with requests buffered in full before a thread serves them (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = GatewayConfig.from_env()
        self.client_timeout = cfg.client_timeout_seconds
        self.max_body = cfg.max_body_bytes
        self.max_buffer = self.max_body + MAX_HEADER_BYTES
        # A chunked body can be far longer on the wire than decoded (1-byte chunks): past
        # max_buffer it is refused here.
        self.body_too_large = body_too_large_response(self.max_body)
        # Requests the pool threads are serving, counted by the threads themselves: gthread's
        # own connection count can fall to 0 with deferred connections still being served, and
        # its graceful stop would then close the backend under them (tests/test_faults.py).
        self._serving = 0
        self._serving_done = threading.Condition()

    def enqueue_req(self, conn: Any) -> None:
        """gthread's hand-off to the pool, with a new connection's socket as a blocking
        `_ClientSocket`."""
        if type(conn.sock) is socket.socket:
            conn.sock = _ClientSocket.blocking(conn.sock)
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        """Serve the connection's request if it is all there, else give the connection back."""
        with self._serving_done:
            self._serving += 1
        try:
            result = self._handle(conn)
            if result is False:
                close_gently(conn.sock)
            return result
        finally:
            with self._serving_done:
                self._serving -= 1
                self._serving_done.notify_all()

    def run(self) -> None:
        """gthread's loop and graceful stop, then wait (up to ``graceful_timeout``) for the
        requests still being served before the worker exits and its backend is closed."""
        super().run()
        deadline = time.monotonic() + self.cfg.graceful_timeout
        with self._serving_done:
            while self._serving > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.log.warning("stopping with %d request(s) still served", self._serving)
                    return
                self.notify()
                self._serving_done.wait(min(left, 1.0))

    def _handle(self, conn: Any) -> Any:
        pending: _Pending | None = getattr(conn, "convserve_pending", None)
        if pending is None:
            pending = conn.convserve_pending = _Pending(time.monotonic() + self.client_timeout)
        try:
            if not conn.initialized:
                conn.init()  # the parser; plain sockets only (no TLS in this gateway)
            if conn.is_http2:
                conn.convserve_pending = None
                return super().handle(conn)
            # Read-ahead gunicorn's parser already holds (pipelined requests) comes first.
            pending.buf += conn.parser.unreader.take_buffered()
            eof = self._read_available(conn, pending)
        except OSError:
            conn.convserve_pending = None
            return False
        done, expects, oversized, headers_too_large = request_complete(pending.buf, self.max_body)
        if headers_too_large:
            conn.convserve_pending = None
            _send_quietly(conn.sock, HEADERS_TOO_LARGE)
            return False
        if not done and len(pending.buf) > self.max_buffer:
            conn.convserve_pending = None
            _send_quietly(conn.sock, self.body_too_large)
            return False
        if not done and not eof:
            if time.monotonic() >= pending.deadline:
                self._refuse(conn)
                return False
            if expects and not pending.continued:
                pending.continued = True
                pending.buf = bytearray(drop_expect(bytes(pending.buf)))
                if not _send_quietly(conn.sock, CONTINUE):
                    conn.convserve_pending = None
                    return False
            return gthread._DEFER  # back to the event loop until more bytes arrive
        conn.convserve_pending = None
        if not pending.buf:
            return False  # the client closed the connection without sending anything
        conn.parser.unreader.unread(bytes(pending.buf))
        conn.data_ready = True  # gthread must not wait for data again
        conn.convserve_oversized = oversized
        return super().handle(conn)

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        """Whether the connection serves another request; after an oversized body's 413 it
        closes instead of draining a body never wanted.

        Any other body was in memory before the app ran, so what the app left of it is read
        from the parser's buffer here, not by gunicorn's ``finish_body``, which resets the
        socket's timeout around its reads (now, and again before the next request): reads
        that cannot reach the socket here. A body that fails to parse closes the connection.
        """
        if getattr(conn, "convserve_oversized", False):
            conn.convserve_oversized = False
            return False
        if not keepalive:
            return False
        return drain_body(conn.parser)

    def _read_available(self, conn: Any, pending: _Pending) -> bool:
        """Append what the socket holds to ``pending.buf`` without blocking; True at EOF.

        A read shorter than asked for took what the kernel held, so there is no second read
        to learn that (the request is checked next; an incomplete one waits on the poller).
        """
        while len(pending.buf) <= self.max_buffer:
            try:
                data = conn.sock.recv(READ_CHUNK, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return False
            if not data:
                return True
            pending.buf += data
            if len(data) < READ_CHUNK:
                return False
        return False

    def _refuse(self, conn: Any) -> None:
        """408 (if the client sent anything) for a request past its deadline."""
        pending = conn.convserve_pending
        conn.convserve_pending = None
        if pending is not None and pending.buf:
            self.log.warning(
                TIMEOUT_LOG,
                conn.client[0] if conn.client else "?",
                self.client_timeout,
            )
            _send_quietly(conn.sock, timeout_response(self.client_timeout))

    def finish_request(self, conn: Any, fs: Any) -> None:
        """gthread's (gunicorn 27) bookkeeping on the event loop, with the socket left in
        blocking mode on the poller (module docstring); a deferred request keeps its own
        deadline, not keep-alive's."""
        try:
            result = fs.result() if not fs.cancelled() else False
            if result is gthread._DEFER and self.alive:
                conn.timeout = conn.convserve_pending.deadline  # _handle defers with one
                self.pending_conns.append(conn)
                self.poller.register(
                    conn.sock,
                    selectors.EVENT_READ,
                    partial(self.on_pending_socket_readable, conn),
                )
            elif result:
                if conn.parser.unreader.buf.getvalue():
                    self.enqueue_req(conn)  # the next request is in memory already (pipelined)
                    return
                conn.set_timeout()
                if not self.alive:  # stopping: keep it briefly, to answer "Connection: close"
                    conn.timeout = min(
                        conn.timeout, time.monotonic() + gthread.STOP_KEEPALIVE_LINGER
                    )
                self.keepalived_conns.append(conn)
                self.poller.register(
                    conn.sock,
                    selectors.EVENT_READ,
                    partial(self.on_client_socket_readable, conn),
                )
            else:
                self.nr_conns -= 1
                if conn.sock.fileno() != -1:  # handle() closes a refused connection itself
                    conn.close(graceful=True)
        except Exception:
            self.nr_conns -= 1
            conn.close()

    def murder_pending(self) -> None:
        """Close deferred connections past their deadline (408 if a request was started).

        gthread's version stops at the first live entry, as its deadlines are in order; these
        are per request, so every entry is checked.
        """
        now = time.monotonic()
        for conn in [c for c in self.pending_conns if c.timeout <= now]:
            self.pending_conns.remove(conn)
            with contextlib.suppress(OSError, KeyError, ValueError):  # already unregistered
                self.poller.unregister(conn.sock)
            self.nr_conns -= 1
            self._refuse(conn)
            conn.close()
