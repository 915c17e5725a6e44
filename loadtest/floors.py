"""Floors: what serving costs with no work at all, under the gateway's own gunicorn settings.

- ``flask``: a Flask app whose ``POST /v1/predict`` reads the body and returns a fixed JSON
  answer (one prediction in the gateway's shape);
- ``wsgi``: a bare WSGI callable doing the same, without Flask.

Both run under ``gunicorn -c python:serving.gateway.gunicorn_conf`` (the gateway's settings
module itself: worker class, workers, threads, keep-alive, timeouts, read from the same
``GATEWAY_*`` variables), started by :func:`loadtest.servers.start_gunicorn_app`, with only
the application replaced. ``GET /readyz`` answers 200.
The answer is fixed, so a load test must not count its label as right or wrong.

Example::

    from loadtest.floors import start_floor
    with start_floor("flask") as floor:       # a loadtest.servers.Server
        print(floor.url)                      # http://127.0.0.1:<free port>
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from loadtest.registry import Configuration, Context, Entry
from loadtest.servers import ROOT, Server, start_gunicorn_app
from serving.contract import CLASS_NAMES, MODEL_NAME

#: The fixed answer: one confident "Ankle boot", as the gateway would render it.
FIXED_ANSWER: bytes = json.dumps(
    {
        "model_name": MODEL_NAME,
        "model_version": 1,
        "predictions": [
            {
                "class_id": 9,
                "label": CLASS_NAMES[9],
                "confidence": 1.0,
                "probabilities": [0.0] * 9 + [1.0],
            }
        ],
    },
    separators=(",", ":"),
).encode()
JSON_HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(FIXED_ANSWER)))]
PREDICT_PATH = "/v1/predict"
READY_PATH = "/readyz"

#: floor name → gunicorn application spec
FLOORS: dict[str, str] = {
    "flask": "loadtest.floors:flask_app()",
    "wsgi": "loadtest.floors:wsgi_app",
}


def flask_app() -> Any:
    """The Flask floor (a factory, like the gateway's ``create_app``)."""
    from flask import Flask, Response, request  # in the worker, after gunicorn forks

    app = Flask("convserve-floor")

    @app.post(PREDICT_PATH)
    def predict() -> Response:
        request.get_data(cache=False)
        return Response(FIXED_ANSWER, mimetype="application/json")

    @app.get(READY_PATH)
    def ready() -> str:
        return "ok"

    return app


def wsgi_app(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The bare WSGI floor: reads the whole body of ``POST /v1/predict``, answers FIXED_ANSWER."""
    path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
    if path == PREDICT_PATH and method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        environ["wsgi.input"].read(length)
        start_response("200 OK", JSON_HEADERS)
        return [FIXED_ANSWER]
    if path == READY_PATH and method == "GET":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
    return [b"not found"]


def start_floor(
    name: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    cwd: str | os.PathLike[str] = ROOT,
) -> Server:
    """Start floor ``name`` under the gateway's gunicorn settings (``GATEWAY_*`` from ``env``),
    from the checkout ``cwd``."""
    try:
        spec = FLOORS[name]
    except KeyError:
        raise KeyError(f"unknown floor {name!r} (known: {', '.join(FLOORS)})") from None
    return start_gunicorn_app(
        f"floor-{name}",
        spec,
        env={"GATEWAY_LOG_LEVEL": "WARNING", **(env or {})},
        timeout=timeout,
        cwd=cwd,
    )


def _row(name: str, title: str) -> Configuration:
    @contextlib.contextmanager
    def start(ctx: Context) -> Iterator[str]:
        with start_floor(name, env=ctx.gateway_env) as server:
            yield server.url

    return Configuration(
        title,
        "gateway",
        start,
        group="floor",
        count_labels=False,
        note="fixed JSON answer, gateway's gunicorn settings",
    )


def configurations() -> list[Entry]:
    """``loadtest compare``'s rows: the Flask floor and the bare WSGI floor."""
    return [_row("flask", "Flask floor"), _row("wsgi", "WSGI floor")]
