"""Copy the generated protobuf modules the gateway's gRPC and REST backends import, and no more.

``tensorflow-serving-api`` depends on all of ``tensorflow``, but the gateway only needs a few
dozen generated ``*_pb2`` modules from the two packages (``serving.backends._protos`` loads
them without running TensorFlow's ``__init__``). The gateway image's builder stage installs
both wheels without their dependencies and runs::

    python -m serving.gateway.protos_bundle /protos

which builds the gateway app once with a ``grpc://`` and once with an ``http://`` backend in a
fresh interpreter, records every ``tensorflow.*`` / ``tensorflow_serving.*`` module that was
imported, and copies exactly those files to ``/protos`` (same package layout). ``tensorflow``
itself gets an ``__init__.py`` that raises ImportError with a clear message, so code that needs
the real runtime (the embedded backend) fails loudly instead of half-working. Tests build the
same folder to check that the gateway runs with nothing else of TensorFlow importable.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = ("tensorflow", "tensorflow_serving")

GUARD = '''"""Not TensorFlow: only its generated protobuf modules, for TF Serving's gRPC/REST API."""

raise ImportError(
    "this environment holds TensorFlow's generated protobuf modules only, not the TensorFlow "
    "runtime: use GATEWAY_BACKEND=grpc://host:8500 or http://host:8501 (the embedded backend "
    "needs the tensorflow package)"
)
'''

# Runs in a fresh interpreter so that nothing imported by this process leaks into the list.
_PROBE = """
import json, sys
from serving.gateway.app import create_app
from serving.gateway.config import GatewayConfig
for backend in ("grpc://127.0.0.1:9", "http://127.0.0.1:9"):
    create_app(GatewayConfig(backend=backend))
packages = set(sys.argv[1].split(","))
mods = []
for name, mod in sorted(sys.modules.items()):
    if name.split(".")[0] in packages:
        mods.append([name, getattr(mod, "__file__", None), hasattr(mod, "__path__")])
print(json.dumps(mods))
"""


def imported_modules(python: str = sys.executable) -> list[tuple[str, Path]]:
    """``(module name, file)`` of every TensorFlow/TF Serving module the backends import."""
    out = subprocess.run(
        [python, "-c", _PROBE, ",".join(PACKAGES)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = []
    for name, file, _is_package in json.loads(out.strip().splitlines()[-1]):
        if file is None:
            raise RuntimeError(f"module {name} has no file (a namespace package?)")
        found.append((name, Path(file)))
    return found


def relative_path(name: str, file: Path) -> Path:
    """Where ``file`` (module ``name``) sits below its ``sys.path`` entry."""
    parts = name.split(".")
    if file.name == "__init__.py":
        return Path(*parts, "__init__.py")
    return Path(*parts[:-1], file.name)


def bundle(dest: Path, python: str = sys.executable) -> list[Path]:
    """Copy the imported modules into ``dest``; return their paths relative to ``dest``."""
    copied = []
    for name, file in imported_modules(python):
        rel = relative_path(name, file)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, dest / rel)
        copied.append(rel)
    guard = Path("tensorflow", "__init__.py")
    (dest / guard).write_text(GUARD)
    copied.append(guard)
    return sorted(copied)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m serving.gateway.protos_bundle DEST``."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.gateway.protos_bundle",
        description="Copy the generated protobuf modules the gateway's gRPC/REST backends "
        "import into DEST (for a gateway image without the TensorFlow runtime).",
    )
    parser.add_argument("dest", type=Path, help="folder to create (must not exist yet)")
    args = parser.parse_args(argv)
    if args.dest.exists():
        print(f"protos_bundle: {args.dest} exists already", file=sys.stderr)
        return 2
    try:
        files = bundle(args.dest)
    except subprocess.CalledProcessError as exc:
        print(f"protos_bundle: probing the gateway failed:\n{exc.stderr}", file=sys.stderr)
        return 1
    size = sum((args.dest / f).stat().st_size for f in files)
    print(f"{len(files)} files, {size / 1024:.0f} KiB in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
