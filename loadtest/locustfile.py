"""Locust users for convserve: the gateway, and TF Serving / the model server over gRPC and REST.

Run it with the real ``locust`` CLI (settings in ``loadtest/locust.conf``), or through
``python -m loadtest run`` which adds the report::

    locust -f loadtest/locustfile.py --config loadtest/locust.conf \\
        --host http://127.0.0.1:8080 --target gateway --batch-size 1
    locust -f loadtest/locustfile.py --config loadtest/locust.conf \\
        --host grpc://127.0.0.1:8500 --target grpc --batch-size 64
    # distributed, unchanged: one master, any number of workers
    locust -f loadtest/locustfile.py --master --expect-workers 2 --headless -u 32 -r 8 -t 1m \\
        --host http://gateway:8080 --target gateway
    locust -f loadtest/locustfile.py --worker --master-host master

Users (``--target`` picks one unless user classes are named on the command line):

- ``GatewayUser`` (``gateway``, FastHttpUser): ``POST /v1/predict`` with ``--payload`` ``png``
  (raw body, one image), ``multipart`` (N files), ``b64`` (JSON ``{"b64": ...}`` instances) or
  ``mix`` (all that fit the batch size, in turn); ``auto`` is ``png`` at batch 1, else
  ``multipart``. A gateway with API keys: set ``CONVSERVE_API_KEY`` (sent as a Bearer token).
- ``GrpcUser`` (``grpc``): TF Serving's ``PredictionService/Predict`` through the project's client
  (``--host grpc://host:8500``), firing Locust's ``request`` event per call; gevent-compatible.
- ``RestUser`` (``rest``, FastHttpUser): TF Serving's ``POST /v1/models/<name>:predict``.
- ``PeerUser`` (``peer``, FastHttpUser): a peer of ``loadtest/peers/`` (``--peer bentoml``),
  with the request body and answer parsing that peer's registry entry defines.

``--throughput R`` paces all users together to R requests per second (``python -m loadtest
soak`` uses it); by default every user sends its next request as soon as the last answered.

Every response is checked (status, JSON shape, one answer of 10 probabilities per image); a bad
one is a failure. Images come from the Fashion-MNIST test set when ``FASHION_MNIST_DIR`` is set
(then each answer's class is also compared with the dataset label), else from a small generated
set (no labels: nothing to compare with, and the log says so). Wrong labels are their own
statistic, not failures (the model has its own error rate): counted on every worker, summed on
the master, logged at the end and written to ``--check-stats-file`` as JSON.
"""

from __future__ import annotations

import base64
import functools
import importlib
import itertools
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc.experimental.gevent
import numpy as np
from locust import FastHttpUser, User, constant_throughput, events, task
from locust.runners import MasterRunner, WorkerRunner

from client.api import API_KEY_ENV, api_key_headers
from loadtest.images import ImageSet, load_images
from loadtest.modelclient import BackendError, connect
from loadtest.targets import PAYLOADS, TARGETS, payload_kinds
from serving.cli_numbers import POSITIVE_FLOAT, POSITIVE_INT
from serving.contract import CLASS_NAMES, MODEL_NAME, NUM_CLASSES

# gRPC's own threads must cooperate with gevent (Locust's concurrency); before any channel.
grpc.experimental.gevent.init_gevent()

log = logging.getLogger("loadtest")

BOUNDARY = "convserve-loadtest-boundary"
CHECKS_KEY = "convserve_checks"


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("convserve")
    group.add_argument(
        "--target",
        choices=sorted(TARGETS),
        default="gateway",
        env_var="LOCUST_TARGET",
        help="what to load: the gateway, or TF Serving / the model server over grpc or rest",
    )
    group.add_argument(
        "--batch-size",
        type=POSITIVE_INT,
        default=1,
        env_var="LOCUST_BATCH_SIZE",
        help="images per request (default 1)",
    )
    group.add_argument(
        "--payload",
        choices=PAYLOADS,
        default="auto",
        env_var="LOCUST_PAYLOAD",
        help="gateway request body: png (raw, batch 1), multipart, b64 (JSON), mix; "
        "auto = png at batch 1, else multipart",
    )
    group.add_argument(
        "--peer",
        default="",
        env_var="LOCUST_PEER",
        help="with --target peer: which peer of loadtest/peers/ (bentoml, litserve, mlserver)",
    )
    group.add_argument(
        "--images",
        type=POSITIVE_INT,
        default=1000,
        env_var="LOCUST_IMAGES",
        help="how many test images to cycle through (default 1000)",
    )
    group.add_argument(
        "--request-timeout",
        type=POSITIVE_FLOAT,
        default=10.0,
        env_var="LOCUST_REQUEST_TIMEOUT",
        help="seconds before a request counts as failed (default 10)",
    )
    group.add_argument(
        "--throughput",
        type=float,
        default=0.0,
        env_var="LOCUST_THROUGHPUT",
        help="requests per second of all users together (default 0: as fast as they can)",
    )
    group.add_argument(
        "--check-stats-file",
        default="",
        env_var="LOCUST_CHECK_STATS_FILE",
        help="write the label check totals (images checked, wrong labels) here as JSON",
    )


# -- the label check counters: per process, summed on the master ---------------------------------
class _Checks:
    """Images whose answer was compared with the dataset label, and how many were wrong."""

    def __init__(self) -> None:
        self.pending = {"images_checked": 0, "wrong_labels": 0}  # not yet sent to the master
        self.totals = {"images_checked": 0, "wrong_labels": 0}

    def record(self, predicted: np.ndarray, labels: np.ndarray | None) -> int:
        """Count one answer; return how many of its images were wrong."""
        if labels is None:
            return 0
        wrong = int(np.count_nonzero(predicted != labels))
        self.pending["images_checked"] += len(labels)
        self.pending["wrong_labels"] += wrong
        return wrong

    def take_pending(self) -> dict[str, int]:
        out, self.pending = self.pending, {k: 0 for k in self.pending}
        return out

    def add(self, counts: dict[str, int]) -> None:
        for key, value in counts.items():
            self.totals[key] += int(value)


CHECKS = _Checks()


@events.report_to_master.add_listener
def _report_checks(client_id: str, data: dict[str, Any]) -> None:
    data[CHECKS_KEY] = CHECKS.take_pending()


@events.worker_report.add_listener
def _collect_checks(client_id: str, data: dict[str, Any]) -> None:
    CHECKS.add(data.get(CHECKS_KEY, {}))


@events.quit.add_listener
def _write_checks(exit_code: int, **_kw: Any) -> None:
    environment = _ENV.get("environment")
    if environment is None or isinstance(environment.runner, WorkerRunner):
        return
    CHECKS.add(CHECKS.take_pending())  # a local runner's own counts
    images = _ENV.get("images")
    labelled = images is not None and images.labels is not None
    doc = {**CHECKS.totals, "labelled": labelled, "images_source": images.source if images else ""}
    if labelled:
        log.info(
            "label check: %d wrong of %d images compared with the dataset labels",
            doc["wrong_labels"],
            doc["images_checked"],
        )
    else:
        log.info("label check: no dataset labels (generated images), answers not compared")
    path = environment.parsed_options.check_stats_file
    if path:
        Path(path).write_text(json.dumps(doc, indent=1) + "\n")


# -- set-up: pick the user class; images are loaded once per process --------------------------
_ENV: dict[str, Any] = {}


@events.init.add_listener
def _on_init(environment: Any, **_kw: Any) -> None:
    _ENV["environment"] = environment
    opts = environment.parsed_options
    if opts is None or isinstance(environment.runner, WorkerRunner):
        # Workers keep every user class and get the master's options with each spawn message.
        return
    try:
        payload_kinds(opts.payload, opts.batch_size)
    except ValueError as exc:
        raise SystemExit(f"locustfile: {exc}") from None
    if opts.target == "peer" and not opts.peer:
        raise SystemExit("locustfile: --target peer needs --peer NAME")
    if opts.request_timeout <= 0 or opts.images < 1:
        raise SystemExit("locustfile: --request-timeout and --images must be positive")
    if not 0 <= opts.throughput < float("inf"):
        raise SystemExit("locustfile: --throughput must be a finite number >= 0")
    log.info("images: %s", _images().source)
    if not opts.user_classes:  # user classes named on the command line win over --target
        wanted = TARGETS[opts.target]
        environment.user_classes = [u for u in environment.user_classes if u.__name__ == wanted]


def _options() -> Any:
    return _ENV["environment"].parsed_options


def _images() -> ImageSet:
    """The image set for the current ``--images`` (a worker learns it from the master)."""
    count = _options().images
    if _ENV.get("images_count") != count:
        _ENV["images"], _ENV["images_count"] = load_images(count), count
    return _ENV["images"]


# -- request bodies, built once ------------------------------------------------------------------
def _multipart(pngs: list[bytes]) -> bytes:
    parts = []
    for i, png in enumerate(pngs):
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{i}.png"'
            "\r\nContent-Type: image/png\r\n\r\n".encode()
            + png
            + b"\r\n"
        )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def _b64_json(pngs: list[bytes]) -> bytes:
    instances = [{"b64": base64.b64encode(p).decode()} for p in pngs]
    return json.dumps({"instances": instances}).encode()


_CONTENT_TYPES = {
    "png": "image/png",
    "multipart": f"multipart/form-data; boundary={BOUNDARY}",
    "b64": "application/json",
}
_ENCODERS = {"png": lambda pngs: pngs[0], "multipart": _multipart, "b64": _b64_json}


def _batches(images: ImageSet, batch_size: int) -> list[tuple[list[int], np.ndarray | None]]:
    """Image indices of each request (consecutive, wrapping around) and their labels."""
    out = []
    for b in range(max(1, len(images) // batch_size)):
        idx = [(b * batch_size + i) % len(images) for i in range(batch_size)]
        out.append((idx, None if images.labels is None else images.labels[idx]))
    return out


def _build(target: str, opts: Any) -> list[tuple]:
    images = _images()
    batches = _batches(images, opts.batch_size)
    if target == "gateway":
        return [
            (kind, _ENCODERS[kind]([images.pngs[i] for i in idx]), labels, len(idx))
            for kind in payload_kinds(opts.payload, opts.batch_size)
            for idx, labels in batches
        ]
    if target == "peer":
        peers = _peers()
        return [
            (*peers.request_body(opts.peer, [images.pngs[i] for i in idx]), labels, len(idx))
            for idx, labels in batches
        ]
    if target == "rest":
        return [
            (json.dumps({"instances": images.tensor(idx).tolist()}).encode(), labels, len(idx))
            for idx, labels in batches
        ]
    return [(images.tensor(idx), labels) for idx, labels in batches]


def _peers() -> Any:
    # loadtest/peers/ is a plug-in of this file, needed only for --target peer; importing it by
    # name here keeps the gateway and TF Serving users free of it.
    return importlib.import_module("loadtest.peers.registry")


def _requests(target: str) -> list[tuple]:
    """Every request body of ``target`` for the current options, built once per process and
    shuffled (fixed seed) so that consecutive requests mix images and payload kinds."""
    opts = _options()
    key = (target, opts.batch_size, opts.payload, opts.images)
    if _ENV.get("requests_key") != key:
        built = _build(target, opts)
        random.Random(0).shuffle(built)
        _ENV["requests"], _ENV["requests_key"] = built, key
    return _ENV["requests"]


def _cycle(target: str) -> Iterator[tuple]:
    """The requests of ``target`` from a random starting point (users are not in lockstep)."""
    reqs = _requests(target)
    start = random.randrange(len(reqs))
    return itertools.cycle(reqs[start:] + reqs[:start])


@events.test_start.add_listener
def _prepare(environment: Any, **_kw: Any) -> None:
    # Encoding the bodies costs CPU (seconds for 1000 REST bodies): do it before users spawn.
    if not isinstance(environment.runner, MasterRunner) and environment.parsed_options:
        _requests(environment.parsed_options.target)


# -- response checks -----------------------------------------------------------------------------
class BadResponse(Exception):
    """The answer is not what the API promises (status, shape)."""


def _gateway_classes(doc: Any, n: int) -> np.ndarray:
    predictions = doc.get("predictions") if isinstance(doc, dict) else None
    if not isinstance(predictions, list) or len(predictions) != n:
        got = len(predictions) if isinstance(predictions, list) else type(predictions).__name__
        raise BadResponse(f"expected {n} predictions, got {got}")
    classes = np.empty(n, np.int64)
    for i, p in enumerate(predictions):
        probs = p.get("probabilities") if isinstance(p, dict) else None
        cid = p.get("class_id") if isinstance(p, dict) else None
        if not isinstance(probs, list) or len(probs) != NUM_CLASSES:
            raise BadResponse(f"prediction {i}: expected {NUM_CLASSES} probabilities")
        if not isinstance(cid, int) or not 0 <= cid < NUM_CLASSES:
            raise BadResponse(f"prediction {i}: bad class_id {cid!r}")
        classes[i] = cid
    return classes


def _tfserving_classes(doc: Any, n: int) -> np.ndarray:
    rows = doc.get("predictions") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or len(rows) != n:
        raise BadResponse(f"expected {n} predictions rows")
    # One output: rows are the probabilities; several outputs: a dict per row.
    probs = [r.get("probabilities") if isinstance(r, dict) else r for r in rows]
    arr = np.asarray(probs, dtype=np.float64) if probs else np.empty((0, NUM_CLASSES))
    if arr.shape != (n, NUM_CLASSES):
        raise BadResponse(f"expected probabilities of shape ({n}, {NUM_CLASSES}), got {arr.shape}")
    return arr.argmax(axis=1)


def _post_checked(
    user: FastHttpUser,
    path: str,
    body: bytes,
    headers: dict[str, str],
    name: str,
    classes_of: Callable[[Any], np.ndarray],
    labels: np.ndarray | None,
) -> None:
    """POST, fail the request on a non-200 or a bad answer, count wrong labels otherwise."""
    with user.client.post(path, data=body, headers=headers, name=name, catch_response=True) as resp:
        if resp.status_code != 200:
            resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
            return
        try:
            classes = classes_of(resp.json())
        except (BadResponse, ValueError) as exc:  # ValueError: not JSON, unknown label name
            resp.failure(f"bad answer: {exc}")
            return
        CHECKS.record(classes, labels)
        resp.success()


# -- users ---------------------------------------------------------------------------------------
class _Paced:
    """Users that wait between requests so that all of them together send ``--throughput``
    requests per second (Locust's ``constant_throughput`` per user); no wait when it is 0."""

    def wait_time(self) -> float:
        opts = _options()
        if not opts.throughput:
            return 0.0
        # the pacing state lives on the user instance, so a fresh function per call is fine
        return constant_throughput(opts.throughput / max(1, opts.num_users))(self)


class GatewayUser(_Paced, FastHttpUser):
    """``POST /v1/predict`` on the gateway with PNG images (raw, multipart or JSON b64)."""

    def on_start(self) -> None:
        timeout = _options().request_timeout
        self.client.network_timeout = self.client.connection_timeout = timeout
        self.cycle = _cycle("gateway")
        # A gateway with API keys configured: the key comes from the environment.
        self.auth = api_key_headers(os.environ.get(API_KEY_ENV))

    @task
    def predict(self) -> None:
        payload, body, labels, n = next(self.cycle)
        headers = {"Content-Type": _CONTENT_TYPES[payload], **self.auth}
        name = f"/v1/predict [{payload} x{n}]"
        parse = functools.partial(_gateway_classes, n=n)
        _post_checked(self, "/v1/predict", body, headers, name, parse, labels)


class RestUser(_Paced, FastHttpUser):
    """TF Serving's REST ``POST /v1/models/<name>:predict`` with float instances."""

    path = f"/v1/models/{MODEL_NAME}:predict"

    def on_start(self) -> None:
        timeout = _options().request_timeout
        self.client.network_timeout = self.client.connection_timeout = timeout
        self.cycle = _cycle("rest")

    @task
    def predict(self) -> None:
        body, labels, n = next(self.cycle)
        headers = {"Content-Type": "application/json"}
        parse = functools.partial(_tfserving_classes, n=n)
        _post_checked(self, self.path, body, headers, f"{self.path} [x{n}]", parse, labels)


class GrpcUser(_Paced, User):
    """TF Serving's gRPC ``Predict`` (``--host grpc://host:8500``), one request event per call."""

    def on_start(self) -> None:
        host = self.environment.host or self.host or ""
        address = host if host.startswith("grpc://") else f"grpc://{host}"
        self.model = connect(address, timeout=_options().request_timeout)
        self.cycle = _cycle("grpc")

    def on_stop(self) -> None:
        self.model.close()

    @task
    def predict(self) -> None:
        x, labels = next(self.cycle)
        n = len(x)
        exc: BaseException | None = None
        length = 0
        start = time.perf_counter()
        try:
            result = self.model.predict(x)
            if result.probabilities.shape != (n, NUM_CLASSES):
                raise BadResponse(
                    f"expected ({n}, {NUM_CLASSES}), got {result.probabilities.shape}"
                )
            length = result.probabilities.nbytes
        except (BackendError, BadResponse) as err:
            exc = err
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        if exc is None:
            CHECKS.record(result.probabilities.argmax(axis=1), labels)
        self.environment.events.request.fire(
            request_type="grpc",
            name=f"Predict [x{n}]",
            response_time=elapsed_ms,
            response_length=length,
            exception=exc,
            context={},
        )


class PeerUser(_Paced, FastHttpUser):
    """A peer of ``loadtest/peers/`` (``--peer NAME``): its own request body and answer shape."""

    def on_start(self) -> None:
        opts = _options()
        self.client.network_timeout = self.client.connection_timeout = opts.request_timeout
        self.peer = opts.peer
        self.path = _peers().predict_path(self.peer)
        self.cycle = _cycle("peer")

    @task
    def predict(self) -> None:
        headers, body, labels, n = next(self.cycle)
        parse = functools.partial(self._classes, n=n)
        _post_checked(self, self.path, body, headers, f"{self.path} [x{n}]", parse, labels)

    def _classes(self, doc: Any, n: int) -> np.ndarray:
        names = _peers().labels(self.peer, doc)
        if len(names) != n:
            raise BadResponse(f"expected {n} labels, got {len(names)}")
        return np.array([CLASS_NAMES.index(x) for x in names], np.int64)
