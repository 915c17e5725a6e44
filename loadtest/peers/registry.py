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
- ``litserve``: one uvicorn API server process feeding ``workers_per_device=2`` inference
  processes on the CPU; ``max_batch_size=64``, ``batch_timeout=0.002`` s (the gateway's 2 ms).
- ``mlserver``: ``mlserver start`` with ``parallel_workers=2`` inference processes; adaptive
  batching ``max_batch_size=64``, ``max_batch_time=0.002`` s. MLServer pins protobuf < 7,
  which is one reason each peer has its own venv.

Example::

    from loadtest.peers import registry
    registry.install_command("litserve")      # 'python -m loadtest.peers install litserve'
    registry.is_installed("litserve")         # False until that has run
    registry.peer_command("litserve", 8123, Path("models/fashion_mnist"))
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PEERS_DIR_ENV = "CONVSERVE_PEERS_DIR"
MODEL_DIR_ENV = "CONVSERVE_PEER_MODEL_DIR"
STAMP = "convserve-peer.json"
#: Micro-batching settings shared by every peer (the gateway's GATEWAY_BATCH_* defaults).
MAX_BATCH_SIZE = 64
BATCH_WAIT_SECONDS = 0.002
WORKERS = 2


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
        """Pinned requirements: the framework's, TensorFlow and the project's numpy/Pillow."""
        return [
            *self.requirements,
            tensorflow_requirement(),
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
            ("mlserver==1.7.1", "protobuf<7"),
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


def peer_env(name: str, model_dir: Path) -> dict[str, str]:
    """Environment additions for the peer process (on top of the caller's environment)."""
    get(name)
    return {
        "PYTHONPATH": str(REPO_ROOT),
        MODEL_DIR_ENV: str(Path(model_dir).resolve()),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
