"""Slow and oversized clients on raw sockets, against the real gateway (gunicorn with each of
its worker classes: serving.gateway.gevent_worker and serving.gateway.slow_clients) and the
model server's REST front end.

A client that trickles its headers or body, or connects and sends nothing, must not hold the
threads or the app (gateway) or the concurrency slots (model server) that other clients need; it is
answered 408 (or closed) once its deadline has passed. A body declared too large is refused
from its Content-Length at once, before anything of it is read.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from loadtest.servers import Server, free_port, http_ok, start_gateway
from serving.gateway import slow_clients
from serving.gateway.request_framing import request_complete
from serving.gateway.worker import GatewayWorker

PNG_HEAD = b"\x89PNG\r\n\x1a\n"
CLIENT_TIMEOUT = 2.0
THREADS = 2
MAX_BODY = 100_000


def _gateway_408() -> dict:
    return {
        "error": {
            "code": "request_timeout",
            "message": f"the request was not received in full within {CLIENT_TIMEOUT:g} s",
        }
    }


@pytest.fixture(scope="module", params=["gevent", "gthread"])
def gateway(request) -> Iterator[Server]:
    """One gunicorn worker of each worker class (gthread with 2 threads); a gRPC backend that is
    down (never needed here: /healthz does not touch it, and bad images are refused before it
    is called)."""
    env = {
        "GATEWAY_WORKER_CLASS": request.param,
        "GATEWAY_CLIENT_TIMEOUT_SECONDS": str(CLIENT_TIMEOUT),
        "GATEWAY_MAX_BODY_BYTES": str(MAX_BODY),
        "GATEWAY_KEEPALIVE_SECONDS": "2",
    }
    with _healthy_gateway(env) as server:
        yield server


def _healthy_gateway(env: dict[str, str]) -> Server:
    """One gunicorn worker (``THREADS`` threads under gthread) in front of a gRPC backend that
    is down, once ``/healthz`` answers."""
    server = start_gateway(
        f"grpc://127.0.0.1:{free_port()}", env=env, workers=1, threads=THREADS, wait=False
    )
    deadline = time.monotonic() + 60
    while not http_ok(f"{server.url}/healthz"):
        if server.proc.poll() is not None or time.monotonic() > deadline:
            output = server.output()
            server.close()
            raise AssertionError(f"the gateway did not come up:\n{output}")
        time.sleep(0.2)
    return server


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed (monotonic)."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(
                f"not closed within {timeout}s; got {b''.join(chunks)!r}"
            ) from None
        except ConnectionResetError:
            data = b""
        if not data:
            return b"".join(chunks), time.monotonic()
        chunks.append(data)


def _body_of(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


@contextlib.contextmanager
def _tricklers(url: str, first: bytes, n: int, byte: bytes = b"x") -> Iterator[list]:
    """``n`` connections that send ``first`` and then one ``byte`` every 0.25 s, forever."""
    socks = [_connect(url) for _ in range(n)]
    for s in socks:
        s.sendall(first)
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(0.25):
            for s in socks:
                with contextlib.suppress(OSError):
                    s.send(byte)

    t = threading.Thread(target=drip, daemon=True)
    t.start()
    try:
        yield socks
    finally:
        stop.set()
        t.join()
        for s in socks:
            s.close()


def _served_quickly(url: str, n: int = 5) -> float:
    """The slowest of ``n`` sequential GET /healthz (each must answer 200)."""
    worst = 0.0
    for _ in range(n):
        t0 = time.monotonic()
        r = requests.get(f"{url}/healthz", timeout=CLIENT_TIMEOUT / 2)
        assert r.status_code == 200
        worst = max(worst, time.monotonic() - t0)
    return worst


# -- the completeness check ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "complete"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc", False),
        (b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nabcde", True),
        (b"POST / HTTP/1.1\r\nContent-Length: 100001\r\n\r\n", True),  # over the limit: 413
        (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", True),  # the parser's 400
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", False),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n", False),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", True),  # parser's 400
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffff\r\nab", False),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000, True),  # headers too long: 431
    ],
)
def test_request_complete(data, complete):
    assert request_complete(data, MAX_BODY).complete is complete


def test_client_socket_skips_only_mode_changes_that_change_nothing(monkeypatch):
    """The worker's client sockets: a mode change that changes nothing makes no syscall; every
    other one is made, so the socket's real mode is always the one asked for."""
    calls: list[tuple[str, object]] = []
    for name in ("setblocking", "settimeout"):
        real = getattr(socket.socket, name)

        def counted(self, value, _real=real, _name=name):
            calls.append((_name, value))
            return _real(self, value)

        monkeypatch.setattr(socket.socket, name, counted)
    a, b = socket.socketpair()
    a.setblocking(False)  # as gthread's TConn leaves a new connection
    with a, b:
        sock = slow_clients._ClientSocket.blocking(a)
        with sock:
            assert a.fileno() == -1  # detached
            assert sock.gettimeout() is None and os.get_blocking(sock.fileno())
            calls.clear()  # the one real change blocking() makes
            sock.setblocking(True)
            sock.settimeout(None)
            assert calls == []
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)  # really non-blocking
            sock.setblocking(False)
            sock.settimeout(0.05)
            with pytest.raises(TimeoutError):
                sock.recv(1)
            sock.settimeout(0.05)
            sock.setblocking(True)
            assert calls == [("setblocking", False), ("settimeout", 0.05), ("setblocking", True)]
            assert sock.gettimeout() is None and os.get_blocking(sock.fileno())
            b.sendall(b"x")
            assert sock.recv(1, socket.MSG_DONTWAIT) == b"x"
            with pytest.raises(BlockingIOError):  # blocking socket, non-blocking read
                sock.recv(1, socket.MSG_DONTWAIT)


# sha256 (first 16 hex digits) of gunicorn 27.0.1's gthread.ThreadWorker.finish_request source
GTHREAD_FINISH_REQUEST_SHA = "616e7bb15a009ff7"


class _Done:
    """A finished future of gthread's pool."""

    def __init__(self, result):
        self._result = result

    def cancelled(self):
        return False

    def result(self):
        return self._result


def test_finish_request_counts_a_connection_the_thread_closed_once():
    """A connection handle() refused and closed itself (408, 413, 431) leaves gthread's
    connection count exactly once; a count gone below zero would end a graceful stop early."""
    worker = slow_clients.RequestBufferingWorker.__new__(slow_clients.RequestBufferingWorker)
    worker.nr_conns, worker.alive = 2, True
    a, b = socket.socketpair()
    with b:
        a.close()

        def close(graceful: bool = False) -> None:
            raise OSError(9, "Bad file descriptor")  # what closing it again does

        conn = type("Conn", (), {"sock": a})()
        conn.close = close
        worker.finish_request(conn, _Done(False))
    assert worker.nr_conns == 1


def test_finish_request_is_gthreads_own_but_for_the_socket_mode():
    """RequestBufferingWorker.finish_request is a copy of gunicorn 27.0.1's, without its two
    switches to non-blocking: a gunicorn whose method changed needs the copy looked at again."""
    import hashlib
    import inspect

    from gunicorn.workers import gthread

    source = inspect.getsource(gthread.ThreadWorker.finish_request)
    assert "conn.sock.setblocking(False)" in source
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == GTHREAD_FINISH_REQUEST_SHA


def test_worker_heartbeat_runs_at_most_once_per_interval(monkeypatch):
    """The heartbeat file is touched at most once a second, or four times per worker timeout."""
    clock = [1000.0]
    monkeypatch.setattr("serving.gateway.worker.time.monotonic", lambda: clock[0])
    beats: list[float] = []
    worker = GatewayWorker.__new__(GatewayWorker)  # no gunicorn arbiter needed for notify()
    worker.tmp = type("Tmp", (), {"notify": lambda self: beats.append(clock[0])})()
    worker.timeout = 15
    for _ in range(3):
        worker.notify()
    clock[0] += 0.99
    worker.notify()
    clock[0] += 0.01
    worker.notify()
    assert beats == [1000.0, 1001.0]
    worker.timeout = 1  # --timeout 2: the master allows 2 s, the worker beats every 0.25 s
    clock[0] += 0.25
    worker.notify()
    assert beats == [1000.0, 1001.0, 1001.25]


def test_request_complete_flags_expect_continue_and_oversized_bodies():
    head = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    assert request_complete(head, MAX_BODY) == (False, True, False, False)
    assert request_complete(head + b"abcde", MAX_BODY) == (True, False, False, False)
    big = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 100001\r\n\r\n"
    assert request_complete(big, MAX_BODY) == (True, False, True, False)
    # a chunked body declared too large is complete once more than the limit is buffered
    chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffff\r\n"
    assert request_complete(chunked + b"a" * MAX_BODY, MAX_BODY) == (False, False, False, False)
    over = chunked + b"a" * (MAX_BODY + 1)
    assert request_complete(over, MAX_BODY) == (True, False, True, False)
    assert request_complete(b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000, MAX_BODY) == (
        True,
        False,
        False,
        True,
    )


# -- the gateway -----------------------------------------------------------------------------


TRICKLED_HEADERS = (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X")
TRICKLED_BODY = (
    b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
    b"Content-Length: 50000\r\n\r\n" + PNG_HEAD,
    b"x",
)


@pytest.mark.parametrize(
    ("first", "byte"), [TRICKLED_HEADERS, TRICKLED_BODY], ids=["headers", "body"]
)
def test_gateway_trickled_requests_hold_no_thread_and_get_408(gateway, first, byte):
    with _tricklers(gateway.url, first, 4 * THREADS, byte) as socks:
        started = time.monotonic()
        time.sleep(0.5)
        assert _served_quickly(gateway.url) < 0.5
        for s in socks:
            out, closed = _read_until_closed(s, CLIENT_TIMEOUT + 3)
            assert out.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), out
            assert _body_of(out) == _gateway_408()
            assert closed - started < CLIENT_TIMEOUT + 2.0
    assert "request not received within 2s; answered 408" in gateway.output()


def test_gateway_silent_connections_hold_no_thread(gateway):
    socks = [_connect(gateway.url) for _ in range(4 * THREADS)]
    try:
        time.sleep(0.3)
        # stock gthread gives each new connection a thread for up to 5 s while it waits
        assert _served_quickly(gateway.url) < 0.5
        for s in socks:  # nothing sent: closed without an answer
            out, _ = _read_until_closed(s, CLIENT_TIMEOUT + 3)
            assert out == b""
    finally:
        for s in socks:
            s.close()


def test_gateway_refuses_an_oversized_body_from_its_header(gateway):
    with _connect(gateway.url) as s:
        s.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 1000000000\r\n\r\n" + PNG_HEAD
        )
        t0 = time.monotonic()
        out, closed = _read_until_closed(s, 5)
    assert closed - t0 < 1.0  # not after waiting for the body, nor draining it
    assert out.startswith(b"HTTP/1.1 413 "), out
    assert _body_of(out) == {
        "error": {
            "code": "body_too_large",
            "message": f"request body of 1000000000 bytes is larger than the limit of {MAX_BODY}",
        }
    }


def test_gateway_refuses_oversized_headers_and_chunked_bodies_at_once(gateway):
    with _connect(gateway.url) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 70_000)
        out, _ = _read_until_closed(s, 5)
    assert out.startswith(b"HTTP/1.1 431 "), out[:200]
    assert _body_of(out)["error"]["code"] == "headers_too_large"
    with _connect(gateway.url) as s:
        s.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nfffffff\r\n" + b"a" * (MAX_BODY + 10)
        )
        t0 = time.monotonic()
        out, closed = _read_until_closed(s, 5)  # the rest of the body never comes
    assert closed - t0 < 1.0
    assert out.startswith(b"HTTP/1.1 413 "), out[:200]
    assert _body_of(out)["error"]["code"] == "body_too_large"
    # 1-byte chunks: far longer on the wire than decoded; refused once past the buffer
    with _connect(gateway.url) as s:
        s.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + b"1\r\na\r\n" * (MAX_BODY // 3)
        )
        t0 = time.monotonic()
        out, closed = _read_until_closed(s, 5)
    assert closed - t0 < 1.0
    assert out.startswith(b"HTTP/1.1 413 "), out[:200]
    assert _body_of(out) == {
        "error": {
            "code": "body_too_large",
            "message": f"request body is larger than the limit of {MAX_BODY} bytes",
        }
    }


def test_gateway_expect_continue_then_body(gateway):
    body = b"not an image"
    with _connect(gateway.url) as s:
        s.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        s.settimeout(5)
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        out, _ = _read_until_closed(s, 5)
    assert out.startswith(b"HTTP/1.1 400 "), out
    assert b"100 Continue" not in out  # only one interim answer
    assert _body_of(out)["error"]["code"] == "invalid_image"


def test_gateway_pipelined_and_chunked_requests_on_one_connection(gateway):
    body = b"not an image"
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    with _connect(gateway.url) as s:
        s.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + chunked
            + b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
            b"Connection: close\r\n\r\n"
        )
        out, _ = _read_until_closed(s, 5)
    assert out.count(b"HTTP/1.1 400 ") == 1 and out.count(b"HTTP/1.1 200 OK") == 1, out
    assert out.endswith(b'{"status":"ok"}')


def test_gateway_drops_a_body_the_app_did_not_read_before_the_next_request(gateway):
    body = b"GET /v1/models HTTP/1.1\r\n\r\n"  # would read as a request if it were not dropped
    with _connect(gateway.url) as s:
        s.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
            + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        out, _ = _read_until_closed(s, 5)
    assert out.startswith(b"HTTP/1.1 415 "), out
    assert out.count(b"HTTP/1.1 ") == 2 and out.endswith(b'{"status":"ok"}'), out


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_gateway_stop_closes_idle_connections_and_refuses_new_ones_at_once(worker_class):
    """SIGTERM with a kept-alive connection idle, a new one silent and a third mid-request: the
    listener is closed at once, the idle and silent connections are closed, the started request
    is still answered (with ``Connection: close``), and the gateway exits 0 long before its
    graceful timeout."""
    env = {
        "GATEWAY_WORKER_CLASS": worker_class,
        "GATEWAY_KEEPALIVE_SECONDS": "30",
        "GATEWAY_CLIENT_TIMEOUT_SECONDS": str(CLIENT_TIMEOUT),
    }
    with _healthy_gateway(env) as server:
        idle = _connect(server.url)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        idle.settimeout(5)
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):  # headers and body: two writes
            answer += idle.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        started = _connect(server.url)
        started.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the rest comes later
        silent = _connect(server.url)  # a new connection that has sent nothing yet
        time.sleep(0.3)
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        port = int(server.url.rsplit(":", 1)[1])
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() - t0 < 2.0, "new connections still accepted"
            time.sleep(0.05)
        started.sendall(b"\r\n")
        out, _ = _read_until_closed(started, 5)
        assert out.startswith(b"HTTP/1.1 200 OK\r\n"), out
        assert b"Connection: close" in out and out.endswith(b'{"status":"ok"}')
        # gevent closes both at once; gthread the idle one after its 2 s stop linger, the silent
        # one at its client timeout (2 s after it opened). Keep-alive is 30 s.
        bound = 1.0 if worker_class == "gevent" else 3.5
        for sock in (idle, silent):
            out, closed = _read_until_closed(sock, 5)
            assert out == b"" and closed - t0 < bound
        assert server.proc.wait(10) == 0, server.output()
        assert time.monotonic() - t0 < 8.0  # the graceful timeout is 20 s
        for sock in (idle, started, silent):
            sock.close()


# -- the model server's REST port --------------------------------------------------------------


@pytest.fixture(scope="module")
def rest(tmp_path_factory) -> Iterator[str]:
    """The REST front end on a model base path with no versions (statuses answer 404), 2 slots."""
    from serving.modelserver.config import single_model_config
    from serving.modelserver.core import ServerCore
    from serving.modelserver.rest import RestServer

    base = tmp_path_factory.mktemp("empty") / "fashion_mnist"
    base.mkdir()
    core = ServerCore(single_model_config("fashion_mnist", str(base)), enable_warmup=False)
    core.start()
    server = RestServer(("127.0.0.1", 0), core, max_concurrent=2, read_timeout_s=CLIENT_TIMEOUT)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.drain(5)
        core.close()


def _rest_status(url: str) -> float:
    t0 = time.monotonic()
    r = requests.get(f"{url}/v1/models/fashion_mnist", timeout=CLIENT_TIMEOUT / 2)
    assert r.status_code == 404
    assert r.json() == {"error": "Could not find any versions of model fashion_mnist"}
    return time.monotonic() - t0


def test_modelserver_trickled_body_holds_no_slot_and_gets_408(rest):
    head = b"POST /v1/models/fashion_mnist:predict HTTP/1.1\r\nHost: x\r\n"
    head += b"Content-Length: 50000\r\n\r\n{"
    with _tricklers(rest, head, 4) as socks:  # twice the slots
        started = time.monotonic()
        time.sleep(0.5)
        assert max(_rest_status(rest) for _ in range(3)) < 0.5
        for s in socks:
            out, closed = _read_until_closed(s, CLIENT_TIMEOUT + 3)
            assert out.startswith(b"HTTP/1.1 408 "), out
            assert _body_of(out) == {
                "error": f"the request was not received in full within {CLIENT_TIMEOUT:g} s"
            }
            assert closed - started < CLIENT_TIMEOUT + 2.0


def test_modelserver_trickled_headers_are_cut_off_at_the_deadline(rest):
    with _tricklers(rest, b"GET /v1/models/fashion_mnist HTTP/1.1\r\n", 4, b"X") as socks:
        started = time.monotonic()
        time.sleep(0.5)
        assert _rest_status(rest) < 0.5
        for s in socks:
            _, closed = _read_until_closed(s, CLIENT_TIMEOUT + 3)
            assert closed - started < CLIENT_TIMEOUT + 2.0


def test_modelserver_refuses_an_oversized_body_from_its_header(rest):
    with _connect(rest) as s:
        s.sendall(
            b"POST /v1/models/fashion_mnist:predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 100000000000\r\n\r\n{"
        )
        t0 = time.monotonic()
        out, closed = _read_until_closed(s, 5)
    assert closed - t0 < 1.0
    assert out.startswith(b"HTTP/1.1 413 "), out
    assert _body_of(out) == {
        "error": "request body of 100000000000 bytes exceeds the limit of 67108864"
    }
