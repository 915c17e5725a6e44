"""The peers: what each one installs, how it is started, how it is called (project venv side).

Every peer serves the same SavedModel (``serving_default``) with the same preprocessing
(:func:`serving.preprocess.decode_image`), its own batching turned on, and answers the gateway's
prediction shape. Each runs from its own virtual environment under :func:`peers_dir`; the
repository is put on ``PYTHONPATH`` so the peer imports ``serving.preprocess`` and
``loadtest.peers.model`` from this checkout (no copy of the project is installed there).

Process model, kept comparable to the gateway's defaults (2 gunicorn workers, TensorFlow with
one intra-op and one inter-op thread per worker, micro-batches of up to 64 images):

- ``bentoml``: ``bentoml serve`` with ``workers=2``; adaptive batching with
  ``max_batch_size=64`` and BentoML's default latency budget (requests are never refused).
- ``litserve``: two uvicorn API server processes feeding ``workers_per_device=2`` inference
  processes on the CPU (LitServe's default pairing); ``max_batch_size=64``, ``batch_timeout=0.002`` s (the gateway's 2 ms).
- ``mlserver``: ``mlserver start``: one uvicorn HTTP process, ``parallel_workers=2``
  inference processes; adaptive
  batching ``max_batch_size=64``, ``max_batch_time=0.002`` s. MLServer pins protobuf < 7,
  which is one reason each peer has its own venv.

Example::

    from loadtest.peers import registry
    registry.install_command("litserve")      # 'python -m loadtest.peers install litserve'
    registry.is_installed("litserve")         # False until that has run
    registry.peer_command("litserve", 8123, Path("models/fashion_mnist"))
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from loadtest.peers.model import BATCH_WAIT_SECONDS, MAX_BATCH_SIZE, MODEL_DIR_ENV, WORKERS
from loadtest.registry import Configuration, Context, Entry
from loadtest.servers import Server, free_ports, http_ok, launch
from serving.contract import MODEL_NAME

REPO_ROOT = Path(__file__).resolve().parents[2]
PEERS_DIR_ENV = "CONVSERVE_PEERS_DIR"
STAMP = "convserve-peer.json"


def peers_dir() -> Path:
    """The folder holding one virtual environment per peer."""
    env = os.environ.get(PEERS_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "convserve" / "peers"


def tensorflow_requirement() -> str:
    """TensorFlow of the project's version; the CPU-only wheel where one exists (Linux x86_64).

    The CPU wheel has the same kernels as ``tensorflow`` without the CUDA libraries (a few
    hundred MB instead of ~2 GB per venv); the peers run on the CPU like the gateway here.
    """
    version = metadata.version("tensorflow")
    cpu_wheel = sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")
    return f"{'tensorflow-cpu' if cpu_wheel else 'tensorflow'}=={version}"


def serving_api_requirement() -> str:
    """``tensorflow-serving-api`` of the project's version (its protos; installed --no-deps)."""
    return _project_pin("tensorflow-serving-api")


def _project_pin(dist: str) -> str:
    return f"{dist}=={metadata.version(dist)}"


@dataclass(frozen=True)
class Peer:
    """One peer: its pinned packages, the module that must import, how it batches."""

    name: str
    title: str
    requirements: tuple[str, ...]
    import_check: str
    batching: str

    def venv(self, root: Path | None = None) -> Path:
        """This peer's virtual environment folder."""
        return (root or peers_dir()) / self.name

    def python(self, root: Path | None = None) -> Path:
        """The peer venv's interpreter."""
        return self.venv(root) / "bin" / "python"

    def all_requirements(self) -> list[str]:
        """Pinned requirements: the framework's, TensorFlow, and the project's LiteRT (the
        gateway's runtime for ``model.tflite``), numpy and Pillow."""
        return [
            *self.requirements,
            tensorflow_requirement(),
            _project_pin("ai-edge-litert"),
            _project_pin("numpy"),
            _project_pin("pillow"),
        ]


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer(
            "bentoml",
            "BentoML 1.4",
            ("bentoml==1.4.40",),
            "bentoml",
            f"adaptive batching, max_batch_size={MAX_BATCH_SIZE}, {WORKERS} workers",
        ),
        Peer(
            "litserve",
            "LitServe",
            ("litserve==0.2.19",),
            "litserve",
            f"max_batch_size={MAX_BATCH_SIZE}, batch_timeout={BATCH_WAIT_SECONDS}s, "
            f"{WORKERS} inference workers",
        ),
        Peer(
            "mlserver",
            "MLServer",
            ("mlserver==1.7.1", "protobuf<7", "uvloop==0.21.0"),
            "mlserver",
            f"adaptive batching, max_batch_size={MAX_BATCH_SIZE}, "
            f"max_batch_time={BATCH_WAIT_SECONDS}s, {WORKERS} parallel workers",
        ),
    )
}


class UnknownPeer(KeyError):
    """A peer name that is not in :data:`PEERS`."""

    def __str__(self) -> str:
        return f"unknown peer {self.args[0]!r} (known: {', '.join(PEERS)})"


def get(name: str) -> Peer:
    """The peer called ``name``; raises :class:`UnknownPeer`."""
    try:
        return PEERS[name]
    except KeyError:
        raise UnknownPeer(name) from None


def install_command(name: str) -> str:
    """The command that installs peer ``name`` (what a skipped peer tells the user)."""
    get(name)
    return f"python -m loadtest.peers install {name}"


def read_stamp(name: str, root: Path | None = None) -> dict | None:
    """The record a successful install wrote (versions, size, time), or None."""
    path = get(name).venv(root) / STAMP
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_installed(name: str, root: Path | None = None) -> bool:
    """True when the peer's venv exists, passed its import check, and has today's pins."""
    peer = get(name)
    stamp = read_stamp(name, root)
    return (
        stamp is not None
        and peer.python(root).is_file()
        and stamp.get("requirements") == peer.all_requirements()
    )


def _b64(pngs: Sequence[bytes]) -> list[str]:
    return [base64.b64encode(p).decode("ascii") for p in pngs]


def peer_command(name: str, port: int, model_dir: Path, root: Path | None = None) -> list[str]:
    """argv starting peer ``name`` on ``127.0.0.1:port`` from its venv.

    MLServer also needs :func:`peer_env` (its ports and batching are ``MLSERVER_*`` variables)
    and a working folder to scan for models: ``model_dir`` is not on its command line.
    """
    peer = get(name)
    bin_dir = peer.venv(root) / "bin"
    if name == "bentoml":
        return [
            str(bin_dir / "bentoml"),
            "serve",
            "loadtest.peers.bentoml_service:FashionMnist",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    if name == "litserve":
        return [
            str(peer.python(root)),
            "-m",
            "loadtest.peers.litserve_service",
            "--port",
            str(port),
        ]
    return [str(bin_dir / "mlserver"), "start", "."]


def peer_env(
    name: str, model_dir: Path, *, grpc_port: int = 0, metrics_port: int = 0, http_port: int = 0
) -> dict[str, str]:
    """Environment additions for the peer process (on top of the caller's environment)."""
    env = {
        "PYTHONPATH": str(REPO_ROOT),
        MODEL_DIR_ENV: str(Path(model_dir).resolve()),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    if get(name).name == "mlserver":
        env |= {
            "MLSERVER_HOST": "127.0.0.1",
            "MLSERVER_HTTP_PORT": str(http_port),
            "MLSERVER_GRPC_PORT": str(grpc_port),
            "MLSERVER_METRICS_PORT": str(metrics_port),
            "MLSERVER_PARALLEL_WORKERS": str(WORKERS),
            "MLSERVER_DEBUG": "false",
            "MLSERVER_LOAD_MODELS_AT_STARTUP": "true",
            "MLSERVER_MODEL_NAME": MODEL_NAME,
            "MLSERVER_MODEL_IMPLEMENTATION": "loadtest.peers.mlserver_service.FashionMnistRuntime",
            "MLSERVER_MODEL_MAX_BATCH_SIZE": str(MAX_BATCH_SIZE),
            "MLSERVER_MODEL_MAX_BATCH_TIME": str(BATCH_WAIT_SECONDS),
        }
    return env


#: peer → (readiness path, prediction path)
PATHS: dict[str, tuple[str, str]] = {
    "bentoml": ("/readyz", "/v1/predict"),
    "litserve": ("/health", "/v1/predict"),
    "mlserver": ("/v2/health/ready", f"/v2/models/{MODEL_NAME}/infer"),
}


def predict_path(name: str) -> str:
    """The URL path that classifies images on peer ``name``."""
    get(name)
    return PATHS[name][1]


def request_body(name: str, pngs: Sequence[bytes]) -> tuple[dict[str, str], bytes]:
    """Headers and body asking peer ``name`` to classify ``pngs`` in one request."""
    get(name)
    if name == "mlserver":
        doc: dict = {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "BYTES",
                    "shape": [len(pngs)],
                    "parameters": {"content_type": "base64"},
                    "data": _b64(pngs),
                }
            ]
        }
    else:
        doc = {"images": _b64(pngs)}
    return {"Content-Type": "application/json"}, json.dumps(doc).encode()


def labels(name: str, answer: object) -> list[str]:
    """The predicted labels in peer ``name``'s parsed JSON answer, in request order.

    Raises ``ValueError`` when the answer does not have the peer's shape.
    """
    get(name)
    try:
        if name == "mlserver":
            out = {o["name"]: o for o in answer["outputs"]}  # type: ignore[index]
            return [str(x) for x in out["labels"]["data"]]
        preds = answer if name == "bentoml" else answer["predictions"]  # type: ignore[index]
        return [p["label"] for p in preds]  # type: ignore[union-attr]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{name} answer has an unexpected shape: {exc!r}") from None


class NotInstalled(RuntimeError):
    """The peer's venv is missing; the message names the command that installs it."""


def start_peer(
    name: str,
    model_dir: Path,
    *,
    root: Path | None = None,
    timeout: float = 180.0,
    wait: bool = True,
) -> Server:
    """Start peer ``name`` on free loopback ports with the launcher; ready when it says so.

    Raises :class:`NotInstalled` (with the install command) when its venv is missing, and
    ``loadtest.servers.StartError`` when it exits or is not ready within ``timeout``.
    """
    if not is_installed(name, root):
        raise NotInstalled(
            f"{name} is not installed under {root or peers_dir()}: run `{install_command(name)}`"
        )
    http, grpc, metrics = free_ports(3)
    workdir = Path(tempfile.mkdtemp(prefix=f"convserve-peer-{name}-"))
    ready_path = PATHS[name][0]
    return launch(
        f"peer-{name}",
        peer_command(name, http, model_dir, root),
        ready=lambda s: http_ok(f"{s.url}{ready_path}"),
        ports={"http": http},
        env=peer_env(name, model_dir, http_port=http, grpc_port=grpc, metrics_port=metrics),
        cwd=workdir,
        timeout=timeout,
        wait=wait,
        workdir=workdir,
    )


# -- loadtest compare ---------------------------------------------------------------------------
def _unavailable(name: str) -> str | None:
    if is_installed(name):
        return None
    return f"not installed: {install_command(name)} (or make bench-peers)"


def _row(name: str) -> Configuration:
    @contextlib.contextmanager
    def start(ctx: Context) -> Iterator[str]:
        with start_peer(name, ctx.model_dir) as server:
            yield server.url

    peer = get(name)
    return Configuration(
        peer.title,
        "peer",
        start,
        group="peer",
        available=lambda: _unavailable(name),
        locust_args=("--peer", name),
        note=peer.batching,
    )


def configurations() -> list[Entry]:
    """One single-image row per peer; a peer whose venv is missing reports its install command."""
    return [_row(name) for name in PEERS]
