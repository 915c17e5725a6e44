"""A WSGI middleware that makes a body sent without Content-Length (chunked) a sized one.

Werkzeug caps such a stream at ``MAX_CONTENT_LENGTH`` but then stops reading silently, so an
oversized chunked body would be cut short and processed. `BodyLimit` reads it into memory
first, at most ``limit + 1`` bytes: within the limit it becomes an ordinary body with a
Content-Length; over it, the body is dropped and ``environ[OVERSIZED]`` is set, which the
predict view answers with 413 (so the answer still gets the gateway's request id, metrics and
error body).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.wsgi import get_content_length

__all__ = ["OVERSIZED", "BodyLimit"]

#: Set in the WSGI environ (to the limit, in bytes) when an unsized body was over the limit.
OVERSIZED = "convserve.body_over_limit"

_CHUNK = 65536

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class BodyLimit:
    """Wrap ``app`` so that unsized bodies are buffered up to ``limit`` bytes."""

    def __init__(self, app: WsgiApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        # Werkzeug's reading: no length when there is none, or when the body is chunked.
        if get_content_length(environ) is None and environ.get("wsgi.input_terminated"):
            self._buffer(environ)
        return self.app(environ, start_response)

    def _buffer(self, environ: dict[str, Any]) -> None:
        raw, parts, size = environ["wsgi.input"], [], 0
        while size <= self.limit:
            chunk = raw.read(min(_CHUNK, self.limit + 1 - size))
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
        if size > self.limit:
            environ[OVERSIZED] = self.limit
            parts, size = [], 0
        environ["wsgi.input"] = io.BytesIO(b"".join(parts))
        environ["CONTENT_LENGTH"] = str(size)
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ.pop("wsgi.input_terminated", None)
