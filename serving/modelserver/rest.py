"""TF Serving's REST API on the stdlib's threaded HTTP server.

Paths (case-insensitive, as TF Serving matches them)::

    GET  /v1/models/NAME[/versions/N | /labels/L]            -> GetModelStatusResponse JSON
    GET  /v1/models/NAME[/versions/N | /labels/L]/metadata   -> GetModelMetadataResponse JSON
    POST /v1/models/NAME[/versions/N | /labels/L]:predict    -> {"predictions"} / {"outputs"}
    GET  <monitoring.config path>                            -> Prometheus metrics (if enabled)

Errors are ``{"error": "<message>"}`` with TF Serving's gRPC-code -> HTTP mapping (NOT_FOUND 404,
INVALID_ARGUMENT 400, UNAVAILABLE 503, ...); any other ``/v1/`` request is
``400 Malformed request: METHOD PATH`` like TF Serving; ``:classify``/``:regress`` answer 501;
a method without a handler (HEAD, PATCH, ...) answers a JSON 405 and closes the connection.

Why ``http.server.ThreadingHTTPServer``: it is in the standard library (nothing extra in the
image), speaks HTTP/1.1 keep-alive, and runs each connection in its own thread, so a slow
prediction never blocks other clients. The model call releases the GIL, so threads are enough
for this CPU-bound server on 2 cores; TF Serving's own REST front end (libevent plus a thread
pool) is also a thin layer over the same core. Request bodies are capped
(``MAX_BODY_BYTES``; a larger ``Content-Length`` is answered 413 before anything is read),
sockets have an idle timeout, and ``shutdown`` stops accepting and then waits for the requests
in flight, which is what a graceful SIGTERM needs.

Slow clients: a request (headers and body) must arrive in full within ``read_timeout_s`` of its
first byte, a total deadline rather than one per read, else it is answered 408 (or, still in
its headers, closed). The body is read before the request takes one of the
``--rest_api_num_threads`` slots, so a client trickling its body holds its own connection
thread, never a slot.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from serving.backends.types import VersionStatus
from serving.contract import SIGNATURE_NAME
from serving.modelserver.core import HTTP_STATUS, ServerCore, status_proto
from serving.modelserver.metrics import CONTENT_TYPE, ServerMetrics
from serving.modelserver.tensors import dumps, parse_predict_json, predict_response_json
from serving.savedmodel import ModelError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
# One 28x28x1 image as nested lists is 813 arrays; 2M arrays is ~2,400 images (~150 MB parsed).
MAX_JSON_ARRAYS = 2_000_000
IDLE_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 30.0

_PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)


class HttpError(ModelError):
    """A request-level error with an explicit gRPC code name (and HTTP status, if not the
    code's usual one)."""

    def __init__(
        self, message: str, code: str = "INVALID_ARGUMENT", http_status: int | None = None
    ):
        super().__init__(message)
        self.code = code
        self.http_status = http_status


def _too_large(message: str) -> HttpError:
    """413 with TF Serving's ``{"error": ...}`` body (a body or JSON over the limits)."""
    return HttpError(message, "RESOURCE_EXHAUSTED", http_status=413)


class _DeadlineReader(io.RawIOBase):
    """The connection's socket as a raw stream; with ``deadline`` set, reads end there (a total
    for the request, however the client spaces its bytes), else after ``idle_s`` of silence."""

    def __init__(self, sock: socket.socket, idle_s: float) -> None:
        super().__init__()
        self.sock = sock
        self.idle_s = idle_s
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        timeout = self.idle_s
        if self.deadline is not None:
            timeout = self.deadline - time.monotonic()
            if timeout <= 0:
                raise TimeoutError("the request was not received in time")
        self.sock.settimeout(timeout)
        return self.sock.recv_into(buffer)


def status_json(model_name: str, statuses: list[VersionStatus]) -> dict[str, Any]:
    """A GetModelStatusResponse as TF Serving prints it (every field, codes by name)."""
    return json_format.MessageToDict(
        status_proto(statuses), always_print_fields_with_no_presence=True
    )


def metadata_json(model_name: str, version: int, signature_defs: dict[str, Any]) -> dict[str, Any]:
    """A GetModelMetadataResponse as TF Serving's REST API prints it."""
    spec = model_pb2.ModelSpec(name=model_name)
    spec.version.value = version
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for k, v in signature_defs.items():
        sig_map.signature_def[k].CopyFrom(v)
    opts = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
    return {
        "model_spec": json_format.MessageToDict(spec, **opts),
        "metadata": {"signature_def": json_format.MessageToDict(sig_map, **opts)},
    }


class RestServer(ThreadingHTTPServer):
    """The REST front end of a `ServerCore` (one thread per connection)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        core: ServerCore,
        *,
        metrics: ServerMetrics | None = None,
        metrics_path: str | None = None,
        max_concurrent: int = 64,
        timeout_s: float | None = None,
        read_timeout_s: float = READ_TIMEOUT_S,
    ):
        self.core = core
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.timeout_s = timeout_s
        self.read_timeout_s = read_timeout_s
        self.metrics = metrics
        self.metrics_path = metrics_path
        self._in_flight = 0
        self._idle = threading.Condition()
        self.draining = False
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if ":" in self.server_address[0]:
            self.address_family = socket.AF_INET6
        super().server_bind()

    def begin_request(self) -> None:
        with self._idle:
            self._in_flight += 1

    def end_request(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Stop accepting, then wait up to ``timeout_s`` for requests in flight to finish."""
        self.draining = True
        self.shutdown()  # returns once serve_forever has stopped accepting
        self.socket.close()
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout_s)


class _Handler(BaseHTTPRequestHandler):
    server: RestServer
    protocol_version = "HTTP/1.1"
    server_version = "convserve-modelserver"
    timeout = IDLE_TIMEOUT_S
    # Headers and body go out in one write (a buffered wfile, flushed by handle_one_request
    # after each request) and without Nagle: otherwise the body waits for the client's
    # delayed ACK, ~40 ms per keep-alive request.
    wbufsize = -1
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def setup(self) -> None:
        super().setup()
        self._reader = _DeadlineReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        """Wait (idle timeout) for a request's first byte, then give it ``read_timeout_s``."""
        self._reader.deadline = None
        try:
            if not self.rfile.peek(1):
                self.close_connection = True
                return
        except OSError:  # idle timeout, reset
            self.close_connection = True
            return
        self._reader.deadline = time.monotonic() + self.server.read_timeout_s
        super().handle_one_request()

    def _handle(self, method: str) -> None:
        self.server.begin_request()
        try:
            # The body is read before a slot is taken: a slow client holds only its own thread.
            try:
                body = self._body(method)
            except HttpError as exc:
                self._send(exc.http_status or HTTP_STATUS[exc.code], dumps({"error": str(exc)}))
                return
            except TimeoutError:
                message = (
                    f"the request was not received in full within {self.server.read_timeout_s:g} s"
                )
                self._send(408, dumps({"error": message}))
                return
            finally:
                self._reader.deadline = None
                self.connection.settimeout(self.timeout)  # for writing the answer
            with self.server.slots:  # at most --rest_api_num_threads requests at once
                self._dispatch(method, body)
        finally:
            self.server.end_request()

    def _read_chunked(self) -> bytes:
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(line, 16)
            except ValueError:
                raise HttpError("malformed chunked request body") from None
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailer headers, then CRLF
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise _too_large(f"request body exceeds the limit of {MAX_BODY_BYTES} bytes")
            parts.append(self.rfile.read(size))
            self.rfile.readline(8)  # the CRLF after each chunk

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            n = int(length)
        except ValueError:
            raise HttpError("Content-Length is not a number") from None
        if n < 0:
            raise HttpError("Content-Length is negative")
        if n > MAX_BODY_BYTES:
            raise _too_large(f"request body of {n} bytes exceeds the limit of {MAX_BODY_BYTES}")
        return self.rfile.read(n)

    def _body(self, method: str) -> bytes:
        """Read the request body; close the connection whenever bytes of it may be left unread,
        so they are never parsed as the next request on this keep-alive connection."""
        if method not in ("POST", "PUT"):
            length = self.headers.get("Content-Length", "0").strip()
            if self.headers.get("Transfer-Encoding") or length not in ("", "0"):
                self.close_connection = True  # a body nobody reads
            return b""
        try:
            return self._read_body()
        except BaseException:
            self.close_connection = True
            raise

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.server.draining:
            self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's errors (unsupported method, malformed request line, oversized headers)
        as ``{"error": ...}`` JSON like every other answer, and the connection closed: the
        request's body, if any, was not read."""
        self.close_connection = True
        if message is None:
            message = self.responses.get(code, ("Error",))[0]
        if code == 501 and message.startswith("Unsupported method"):
            # a method without a handler (HEAD, PATCH, OPTIONS, ...)
            code, message = 405, f"Method not allowed: {self.command} {self.path}"
        self.log_error("code %d, message %s", code, message)
        body = dumps({"error": message})
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def _dispatch(self, method: str, body: bytes) -> None:
        started = time.perf_counter()
        path = self.path.split("?", 1)[0]
        model_name, api = "", ""
        try:
            if self.server.metrics_path and path == self.server.metrics_path and method == "GET":
                assert self.server.metrics is not None
                self._send(200, self.server.metrics.render(), CONTENT_TYPE)
                return
            if not path.lower().startswith("/v1/"):
                self._send(404, dumps({"error": f"Not found: {method} {path}"}))
                return
            m = _PREDICT_RE.fullmatch(path) if method == "POST" else None
            s = _STATUS_RE.fullmatch(path) if method == "GET" else None
            if m:
                model_name, version, label, verb = m.groups()
                api = verb.lower()
                if api != "predict":
                    raise HttpError(
                        f"{api} is not implemented by serving.modelserver (predict only)",
                        "UNIMPLEMENTED",
                    )
                out = self._predict(model_name, _version(version), label, body)
            elif s and s.group(1):
                model_name, version, label, meta = s.groups()
                if meta:
                    api = "GetModelMetadata"
                    v, defs = self.server.core.metadata(model_name, _version(version), label)
                    out = metadata_json(model_name, v, defs)
                else:
                    api = "GetModelStatus"
                    out = status_json(
                        model_name, self.server.core.status(model_name, _version(version), label)
                    )
                out = json.dumps(out, indent=1).encode()
            elif s:
                raise HttpError("Missing model name in request.")
            else:
                raise HttpError(f"Malformed request: {method} {path}")
            self._send(200, out)
            code = "OK"
        except ModelError as exc:
            code = exc.code
            status = getattr(exc, "http_status", None) or HTTP_STATUS.get(code, 500)
            self._send(status, dumps({"error": str(exc)}))
        except Exception:  # never a traceback to the client: log it, answer 500
            log.exception("REST %s %s failed", method, path)
            code = "INTERNAL"
            self._send(500, dumps({"error": "Internal error; see the model server log"}))
        if api and model_name and self.server.metrics is not None:
            self.server.metrics.record_request(
                model_name, api, "REST", code, time.perf_counter() - started
            )

    def _predict(self, name: str, version: int | None, label: str | None, body: bytes) -> bytes:
        core = self.server.core
        manager = core.manager_for_request(name, version, label)

        def signature_for(sig_name: str) -> Any:
            with manager.acquire(version, label) as model:
                return model.signature(sig_name or SIGNATURE_NAME)

        # Bound what json.loads may build before it runs: every JSON array costs ~70 bytes of
        # Python objects for a few bytes of body (a 64 MB body of "[0]," would take ~1 GB).
        arrays = body.count(b"[")
        if arrays > MAX_JSON_ARRAYS:
            raise _too_large(
                f"request body holds {arrays} JSON arrays, more than the limit of "
                f"{MAX_JSON_ARRAYS}; send fewer instances per request"
            )
        sig_name, inputs, fmt = parse_predict_json(body, signature_for)
        result = core.predict(
            name,
            inputs,
            version=version,
            label=label,
            signature_name=sig_name,
            timeout_s=self.server.timeout_s,  # --rest_api_timeout_in_ms
        )
        return dumps(predict_response_json(result.outputs, fmt))


def _version(text: str | None) -> int | None:
    return int(text) if text else None
