"""The gateway's default gunicorn worker: ``gevent``, every connection a greenlet, each request
read in full before the app runs.

Why gevent: a gateway request is a few hundred microseconds of Python (decoding, metrics,
rendering) around a wait for the micro-batcher. Under ``gthread`` every request crosses three
OS threads (the event loop, a pool thread, the batcher) that take turns at the GIL, about a
dozen GIL hand-offs per request, each a futex wake-up and a context switch on a machine with
few cores. Here the connections, the app, the batcher and the backend's calls share one OS
thread per worker and switch between greenlets in user space; TensorFlow Lite's ``invoke`` runs
in that thread, and the workers (one per core) run in parallel. docs/BENCHMARKS.md has the
measurements ("gevent workers").

What `BufferingGeventWorker` adds to gunicorn's ``gevent`` worker, the same guarantees as the
``gthread`` worker (`serving.gateway.slow_clients.RequestBufferingWorker`), with the same
framing rules (`serving.gateway.request_framing`):

- a request is read into memory in full (headers and body by ``Content-Length`` or a complete
  chunked body) before gunicorn's parser and the app see it; one that is not complete within
  ``GATEWAY_CLIENT_TIMEOUT_SECONDS`` of its first byte (or of the connection's opening) is
  answered ``408`` in the gateway's error shape and the connection closed. A slow client costs
  a greenlet and its buffer; ``worker_connections`` bounds those per worker;
- a connection that sends nothing is closed without an answer: a new one at its client
  timeout, a kept-alive one after ``GATEWAY_KEEPALIVE_SECONDS``;
- headers over `MAX_HEADER_BYTES` get 431, a chunked body over the buffer 413, both here; a
  body declared over ``GATEWAY_MAX_BODY_BYTES`` goes to the app after its headers (413 from the
  ``Content-Length``) and the connection closes; ``Expect: 100-continue`` is answered here;
- on SIGTERM the listening sockets close at once (new connections are refused), connections
  that have sent nothing of a request yet (idle kept-alive ones, new silent ones) close, and
  requests in flight complete (``Connection: close``) within
  ``graceful_timeout`` before the backend is closed.

gRPC's own threads are made to cooperate with gevent (``grpc.experimental.gevent``) before the
app builds its channels.

This module is imported by gunicorn's master (it names the worker class), so it imports neither
Flask nor prometheus-client.
"""

from __future__ import annotations

import contextlib
import errno
import time
from functools import partial
from typing import Any

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn import http
from gunicorn.http2 import negotiation
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

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

__all__ = ["BufferingGeventWorker"]

_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN)


class _Closed(Exception):
    """The connection ends here (refused, timed out, or closed by the client)."""


class BufferingGeventWorker(GeventWorker):
    """gunicorn's ``gevent`` worker reading each request in full first (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = GatewayConfig.from_env()
        self.client_timeout = cfg.client_timeout_seconds
        self.max_body = cfg.max_body_bytes
        self.max_buffer = self.max_body + MAX_HEADER_BYTES
        self.body_too_large = body_too_large_response(self.max_body)
        self._servers: list[StreamServer] = []
        self._idle: set[gevent.Greenlet] = set()  # connections with nothing of a request yet
        self._stopping: Event | None = None

    def load_wsgi(self) -> None:
        """Make gRPC cooperate with gevent, then build the app (and its backend's channels)."""
        import grpc.experimental.gevent

        grpc.experimental.gevent.init_gevent()
        super().load_wsgi()

    # -- the worker's life -------------------------------------------------------------------

    def run(self) -> None:
        """Serve until told to stop, then drain: gevent's loop, with listeners closed at once."""
        self._stopping = Event()
        for sock in self.sockets:
            sock.setblocking(1)
            server = StreamServer(
                sock, handle=partial(self.handle, sock), spawn=Pool(self.worker_connections)
            )
            if self.cfg.workers > 1:
                server.max_accept = 1  # take turns with the other workers
            server.start()
            self._servers.append(server)
        while self.alive:
            self.notify()
            self._stopping.wait(1.0)
        self._stop_accepting()
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while any(s.pool.free_count() != s.pool.size for s in self._servers):
            if time.monotonic() >= deadline:
                self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
                for server in self._servers:
                    server.stop(timeout=1)
                return
            self.notify()
            gevent.sleep(0.1)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: stop now (the main loop wakes at once instead of within a second)."""
        super().handle_exit(sig, frame)
        if self._stopping is not None:
            gevent.spawn(self._stopping.set)

    def _stop_accepting(self) -> None:
        for server in self._servers:
            server.close()  # closes the listening socket: new connections are refused
        for idle in list(self._idle):
            idle.kill(block=False)

    # -- one connection ----------------------------------------------------------------------

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> bool:
        """Serve one parsed request; True if the connection stays open for another (gevent's
        version answers None either way)."""
        try:
            return AsyncWorker.handle_request(self, listener_name, req, sock, addr)
        except (gevent.GreenletExit, SystemExit):  # killed at the end of a graceful stop
            return False

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        """Serve a connection's requests, each read in full before gunicorn parses it."""
        if negotiation.prior_knowledge_allowed(self.cfg, addr) or self.cfg.is_ssl:
            return super().handle(listener, client, addr)  # HTTP/2 or TLS: gunicorn's own way
        client.setblocking(1)
        req = None
        try:
            listener_name = listener.getsockname()
            parser = http.get_parser(self.cfg, client, addr)
            buf = bytearray()
            opened = time.monotonic()
            while True:
                oversized = self._read_request(client, addr, buf, opened)
                parser.unreader.unread(bytes(buf))
                req = next(parser)
                if not self.handle_request(listener_name, req, client, addr):
                    break
                if oversized or not drain_body(parser):
                    break
                buf = bytearray(parser.unreader.take_buffered())  # pipelined requests
                opened = None
        except (_Closed, StopIteration, http.errors.NoMoreData, gevent.GreenletExit):
            pass
        except OSError as exc:
            if exc.errno not in _GONE:
                self.log.exception("Socket error processing request.")
        except Exception as exc:
            self.handle_error(req, client, addr, exc)
        finally:
            close_gently(client)

    def _read_request(self, client: Any, addr: Any, buf: bytearray, opened: float | None) -> bool:
        """Read until ``buf`` holds a whole request; True if its body is over the limit.

        ``opened``: when a new connection was accepted (its request is due within the client
        timeout of that); None for a kept-alive one (idle up to the keep-alive timeout, then
        due within the client timeout of its first byte). Raises `_Closed` when the connection
        ends instead: answered 408, 413 or 431 where a request was started.
        """
        deadline = None if opened is None else opened + self.client_timeout
        continued = False
        while True:
            if buf:
                done, expects, oversized, headers_too_large = request_complete(buf, self.max_body)
                if headers_too_large:
                    self._answer_and_close(client, HEADERS_TOO_LARGE)
                if done:
                    client.settimeout(None)
                    return oversized
                if len(buf) > self.max_buffer:
                    self._answer_and_close(client, self.body_too_large)
                if expects and not continued:
                    continued = True
                    buf[:] = drop_expect(bytes(buf))
                    client.sendall(CONTINUE)
                if deadline is None:
                    deadline = time.monotonic() + self.client_timeout
            data = self._recv(client, buf, deadline)
            if data is None:  # past the deadline
                if buf:
                    self.log.warning(
                        TIMEOUT_LOG,
                        addr[0] if addr else "?",
                        self.client_timeout,
                    )
                    self._answer_and_close(client, timeout_response(self.client_timeout))
                raise _Closed
            if not data:
                raise _Closed  # closed by the client (mid-request, or between requests)
            buf += data

    def _recv(self, client: Any, buf: bytearray, deadline: float | None) -> bytes | None:
        """The next bytes, or None once ``deadline`` (None: the keep-alive timeout) passed.

        A connection with nothing of a request yet is idle: a graceful stop closes it.
        """
        if deadline is None:
            timeout = float(self.cfg.keepalive)
        else:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return None
        client.settimeout(timeout)
        me = None if buf else gevent.getcurrent()
        if me is not None:
            if not self.alive:
                raise _Closed
            self._idle.add(me)
        try:
            return client.recv(READ_CHUNK)
        except TimeoutError:
            return None
        finally:
            if me is not None:
                self._idle.discard(me)

    @staticmethod
    def _answer_and_close(client: Any, answer: bytes) -> None:
        client.settimeout(1.0)  # a short answer; a client that does not read it is dropped
        with contextlib.suppress(OSError):
            client.sendall(answer)
        raise _Closed
