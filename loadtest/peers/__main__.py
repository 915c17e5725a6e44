"""Install and list the peers (each in its own virtual environment, never the project's).

Usage::

    python -m loadtest.peers install                 # all peers (make bench-peers)
    python -m loadtest.peers install bentoml litserve
    python -m loadtest.peers list                    # installed or not, size, install time
    CONVSERVE_PEERS_DIR=/tmp/peers python -m loadtest.peers install mlserver

Each install creates ``<peers dir>/<name>`` with ``python -m venv``, pip-installs the pinned
framework, TensorFlow of the project's version and the project's numpy/Pillow, then imports the
peer's service module there (with this checkout on ``PYTHONPATH``) and records versions, size
and time in ``<venv>/convserve-peer.json``. Exit codes: 0 all done, 1 an install or its import
check failed (its pip log is named), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from loadtest.peers import registry


def _size_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> bool:
    with log.open("ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode == 0


def install(name: str, root: Path) -> bool:
    """Create or update peer ``name``'s venv under ``root``; True when its import check passed."""
    peer = registry.get(name)
    venv = peer.venv(root)
    venv.mkdir(parents=True, exist_ok=True)
    log = venv / "install.log"
    log.write_bytes(b"")
    (venv / registry.STAMP).unlink(missing_ok=True)
    started = time.monotonic()
    reqs = peer.all_requirements()
    print(f"{name}: installing {' '.join(reqs)} into {venv} (log: {log})", file=sys.stderr)
    py = str(peer.python(root))
    env = {**os.environ, **registry.peer_env(name, Path("."))}
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [py, "-m", "pip", "install", "--quiet", *reqs],
        # serving.savedmodel reads the warmup records with TF Serving's generated protos; the
        # wheel's only other requirement is tensorflow, which the line above pinned already.
        [py, "-m", "pip", "install", "--quiet", "--no-deps", registry.serving_api_requirement()],
        [py, "-c", f"import {peer.import_check}, tensorflow, loadtest.peers.{name}_service"],
    ]
    for cmd in steps:
        if not _run(cmd, log, env):
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            print(f"{name}: failed: {' '.join(cmd[:4])} ...", file=sys.stderr)
            print("\n".join(f"  {line}" for line in tail), file=sys.stderr)
            return False
    freeze = subprocess.run(
        [py, "-m", "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout.split()
    stamp = {
        "peer": name,
        "requirements": reqs,
        "installed": sorted(freeze),
        "seconds": round(time.monotonic() - started, 1),
        "size_mb": round(_size_bytes(venv) / 1e6, 1),
    }
    (venv / registry.STAMP).write_text(json.dumps(stamp, indent=1))
    print(f"{name}: ok in {stamp['seconds']} s, {stamp['size_mb']} MB", file=sys.stderr)
    return True


def _list(root: Path) -> int:
    print(f"peers dir: {root}")
    for name, peer in registry.PEERS.items():
        stamp = registry.read_stamp(name, root)
        if registry.is_installed(name, root) and stamp:
            print(
                f"  {name:9} installed  {stamp['size_mb']:8.1f} MB  (last install {stamp['seconds']:.0f} s)"
            )
        else:
            print(f"  {name:9} missing    ({registry.install_command(name)})")
        print(f"  {'':9} {peer.title}: {peer.batching}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.peers", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="create or update peer venvs")
    inst.add_argument("names", nargs="*", help=f"peers (default all: {', '.join(registry.PEERS)})")
    inst.add_argument("--clean", action="store_true", help="delete each venv first")
    sub.add_parser("list", help="show which peers are installed")
    args = parser.parse_args(argv)
    root = registry.peers_dir()
    if args.command == "list":
        return _list(root)
    names = args.names or list(registry.PEERS)
    unknown = [n for n in names if n not in registry.PEERS]
    if unknown:
        parser.error(f"unknown peer {unknown[0]!r} (known: {', '.join(registry.PEERS)})")
    failed = []
    for name in names:
        if args.clean:
            shutil.rmtree(registry.get(name).venv(root), ignore_errors=True)
        if not install(name, root):
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
