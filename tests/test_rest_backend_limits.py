"""The REST backend against a tiny real socket server that misbehaves: one total deadline per
call (a trickled answer cannot outlast it) and a bounded response size."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from serving.backends.errors import BackendBadResponse, BackendTimeout
from serving.backends.rest import RestBackend

BATCH = np.zeros((1, 28, 28, 1), np.float32)


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionResetError("the client closed the connection")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    while len(body) < length:
        body += conn.recv(65536)


@contextlib.contextmanager
def misbehaving_server(
    answer: Callable[[socket.socket], None],
) -> Iterator[tuple[str, list[socket.socket]]]:
    """Accepts connections on loopback; reads each request, then lets ``answer`` reply.

    Yields the base URL and the list of accepted connections."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    accepted = []

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(conn)
            with conn:
                try:
                    _read_request(conn)
                    answer(conn)
                except OSError:
                    pass  # the client gave up: expected

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def trickle(delay: float, in_headers: bool) -> Callable[[socket.socket], None]:
    def answer(conn: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"
        data = head + b" " * 400
        start = 0 if in_headers else len(head)
        conn.sendall(data[:start])
        for i in range(start, len(data)):
            conn.sendall(data[i : i + 1])
            time.sleep(delay)

    return answer


@pytest.mark.parametrize("in_headers", [False, True], ids=["body", "headers"])
def test_a_trickled_answer_cannot_outlast_the_deadline(in_headers):
    # one byte every 0.1 s: each read is quick, the answer would take 40+ s
    with misbehaving_server(trickle(0.1, in_headers)) as (url, _accepted):
        backend = RestBackend(url, version=1, timeout=1.0, retries=0)
        start = time.monotonic()
        with pytest.raises(BackendTimeout):
            backend.predict(BATCH)
        elapsed = time.monotonic() - start
        backend.close()
    assert elapsed < 1.5, elapsed


def test_an_oversized_answer_is_refused_while_reading():
    def answer(conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
        )
        chunk = b"[" * 65536
        for _ in range(200):  # 13 MB, no Content-Length
            conn.sendall(chunk)

    with misbehaving_server(answer) as (url, _accepted):
        backend = RestBackend(url, version=1, timeout=10.0, retries=0, max_response_bytes=1_000_000)
        with pytest.raises(BackendBadResponse, match="response is over 1000000 bytes"):
            backend.predict(BATCH)
        backend.close()


def test_a_declared_oversized_answer_is_refused_unread():
    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n")
        time.sleep(2)

    with misbehaving_server(answer) as (url, _accepted):
        backend = RestBackend(url, version=1, timeout=10.0, retries=0, max_response_bytes=1000)
        start = time.monotonic()
        with pytest.raises(BackendBadResponse, match="response of 999999999 bytes is over 1000"):
            backend.predict(BATCH)
        assert time.monotonic() - start < 1.0
        backend.close()


def test_well_behaved_answers_still_share_one_keep_alive_connection():
    answer_body = b'{"outputs": [[0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]]}'

    def answer(conn: socket.socket) -> None:
        while True:  # one connection, many requests, until the client closes it
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(answer_body), answer_body)
            )
            _read_request(conn)

    with misbehaving_server(answer) as (url, accepted):
        backend = RestBackend(url, version=1, timeout=5.0, retries=0)
        for _ in range(3):
            assert backend.predict(BATCH).probabilities.shape == (1, 10)
        backend.close()
        assert len(accepted) == 1
