"""HTTP/1.1 request framing for the gateway's workers: is a buffered request all there, and
the answers a worker writes itself for a request that never reaches the app.

Both gunicorn workers of the gateway (`serving.gateway.slow_clients` for ``gthread``,
`serving.gateway.gevent_worker` for ``gevent``) read a request into memory in full before the
app runs; this module decides when that is, from the bytes alone. It imports neither Flask nor
prometheus-client (gunicorn's master imports the worker classes).
"""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Any, NamedTuple

__all__ = [
    "CONTINUE",
    "HEADERS_TOO_LARGE",
    "MAX_HEADER_BYTES",
    "READ_CHUNK",
    "TIMEOUT_LOG",
    "Verdict",
    "body_too_large_response",
    "close_gently",
    "drain_body",
    "drop_expect",
    "error_response",
    "request_complete",
    "timeout_response",
]

#: A request line and headers longer than this are refused with 431 (gunicorn's own
#: limits allow ~800 KiB, which its parser would then read with blocking reads).
MAX_HEADER_BYTES = 64 * 1024
READ_CHUNK = 256 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: The worker's log line for a 408 (arguments: the client's address, the client timeout).
TIMEOUT_LOG = "client %s: request not received within %gs; answered 408"


def _header_fields(head: bytes) -> dict[bytes, bytes]:
    """Lower-cased header names → values (the last one wins) of a header block."""
    out = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


def _chunked_end(buf: bytes | bytearray, pos: int, limit: int) -> tuple[int, bool] | None:
    """(where a chunked body starting at ``pos`` ends, whether it is over ``limit``), or None
    while it is not all there.

    Malformed framing ends at ``len(buf)``: gunicorn's parser refuses it from the buffer. A body
    over ``limit`` ends once more than ``limit`` decoded bytes of it are buffered, so the app's
    413 (serving/gateway/body_limit.py reads ``limit + 1`` bytes) never waits on the client.
    """
    total = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None if len(buf) - pos < 1024 else (len(buf), False)
        try:
            size = int(buf[pos:eol].split(b";", 1)[0].strip(), 16)
        except ValueError:
            return len(buf), False
        if total + size > limit:  # decoded bytes buffered: earlier chunks + this one's start
            held = total + max(0, len(buf) - (eol + 2))
            return (len(buf), True) if held > limit else None
        total += size
        if size == 0:  # last chunk: trailer fields, then an empty line
            end = buf.find(b"\r\n\r\n", eol)
            if buf.startswith(b"\r\n", eol + 2):
                return eol + 4, False
            return None if end < 0 else (end + 4, False)
        pos = eol + 2 + size + 2
        if pos > len(buf):
            return None


class Verdict(NamedTuple):
    """What `request_complete` found at the start of a buffer."""

    complete: bool  # hand it to gunicorn's parser: it will not wait on the client
    expects_continue: bool  # incomplete, and the client waits for "100 Continue"
    oversized: bool  # the body is over the limit: the app answers 413, nothing is drained
    headers_too_large: bool = False  # no end of headers within MAX_HEADER_BYTES: 431 here


def request_complete(buf: bytes | bytearray, max_body: int) -> Verdict:
    """Is the request at the start of ``buf`` all there?

    Complete means the request can be handed to gunicorn's parser without it waiting on the
    client: headers and body are in ``buf``, or there is nothing worth waiting for (a body
    declared over ``max_body``, framing the parser refuses anyway).
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        too_long = len(buf) > MAX_HEADER_BYTES
        return Verdict(too_long, False, False, too_long)
    head, body_start = bytes(buf[:end]), end + 4
    fields = _header_fields(head)
    oversized = False
    if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        found = _chunked_end(buf, body_start, max_body)
        done, oversized = found is not None, found is not None and found[1]
    elif b"content-length" in fields:
        try:
            length = int(fields[b"content-length"])
        except ValueError:
            return Verdict(True, False, False)  # gunicorn answers 400
        oversized = length > max_body
        done = oversized or len(buf) - body_start >= length
    else:
        done = True
    expects = fields.get(b"expect", b"").lower() == b"100-continue"
    return Verdict(done, expects and not done, oversized)


def drop_expect(buf: bytes) -> bytes:
    """``buf`` without its ``Expect`` header line (the 100 Continue went out already)."""
    end = buf.find(b"\r\n\r\n")
    lines = buf[:end].split(b"\r\n")
    kept = [ln for ln in lines if not ln.lower().startswith(b"expect:")]
    return b"\r\n".join(kept) + buf[end:]


def error_response(status: str, code: str, message: str) -> bytes:
    """An answer in the gateway's error shape (serving/gateway/errors.py), written here because
    the request never reached the app; the connection closes after it."""
    body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":"))
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return (head + body).encode()


def timeout_response(seconds: float) -> bytes:
    return error_response(
        "408 Request Timeout",
        "request_timeout",
        f"the request was not received in full within {seconds:g} s",
    )


HEADERS_TOO_LARGE = error_response(
    "431 Request Header Fields Too Large",
    "headers_too_large",
    f"the request line and headers are longer than {MAX_HEADER_BYTES} bytes",
)


def body_too_large_response(max_body: int) -> bytes:
    """413 for a body over ``max_body`` refused before the app (a chunked body can be far longer
    on the wire than decoded), with the app's words for an oversized body."""
    return error_response(
        "413 Content Too Large",
        "body_too_large",
        f"request body is larger than the limit of {max_body} bytes",
    )


def drain_body(parser: Any) -> bool:
    """Read what the app left of the current request's body, from the parser's buffer (the body
    was in memory before the app ran), so the parser starts the next request at once; False
    when the body cannot be read (a malformed chunk or trailer): the connection must close.

    Draining here replaces gunicorn's ``finish_body``, which resets the socket's timeout around
    reads that cannot reach the socket: each reset is a syscall.
    """
    body = getattr(parser.mesg, "body", None)
    if body is not None:
        if getattr(body, "failed", False) is True:
            return False  # reading it failed: where the next request starts is unknown
        try:
            while body.read(READ_CHUNK):
                pass
        except Exception:  # a malformed chunk or trailer
            return False
    parser.mesg = None  # drained: nothing for the parser to drain before the next request
    return True


def close_gently(sock: Any) -> None:
    """Close a client connection at once, without lingering and without a reset.

    FIN, then drop what the kernel holds of the client's bytes (closing with unread bytes
    resets the connection, and a reset can discard the answer before the client reads it: a
    408, or a 413 whose body was never read), then close. Nothing waits: gthread's lingering
    close reads from the client for up to 2 s on its event loop, so a client that keeps
    trickling would stall every connection of the worker that long.
    """
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.0)  # reads raise instead of waiting (a gevent socket would wait)
        while sock.recv(READ_CHUNK):
            pass
    with contextlib.suppress(OSError):
        sock.close()
