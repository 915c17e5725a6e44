"""The model limit: in-process ``serving_default`` images/s, no HTTP, one thread.

Four rates, each measured over the same fixed time budget after one warm-up call:

- ``model_b1`` / ``model_b64``: the model alone on already decoded images, batch 1 and 64;
- ``decode_model_b1`` / ``decode_model_b64``: the same plus decoding the PNGs with
  :func:`serving.preprocess.decode_image` on every call (what a server cannot avoid).

The model is loaded and called exactly as the peers and the embedded gateway do
(:class:`loadtest.peers.model.Model`: ``serving.savedmodel.LoadedModel``, TensorFlow limited to
one intra-op and one inter-op thread). ``loadtest compare`` runs it in a subprocess
(:func:`measure_in_subprocess`) so TensorFlow's threads are set before its runtime starts and
stay out of the load generator's process.

Usage::

    python -m loadtest.model_limit --model-dir models/fashion_mnist --budget 2
    python -m loadtest.model_limit --model-dir models/fashion_mnist --json out.json

Exit codes: 0 done, 2 bad arguments or no model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from loadtest.images import load_images
from loadtest.peers.model import Model, decode
from loadtest.registry import Context, Entry, Measurement
from serving.cli_numbers import POSITIVE_FLOAT
from serving.contract import list_versions

BATCH = 64
CELLS = ("model_b1", "model_b64", "decode_model_b1", "decode_model_b64")
#: Seconds per rate when ``loadtest compare`` measures the limit (default 2).
BUDGET_ENV = "CONVSERVE_MODEL_LIMIT_SECONDS"
ROW_NAMES = {
    "model_b1": "model limit b1",
    "model_b64": "model limit b64",
    "decode_model_b1": "decode+model b1",
    "decode_model_b64": "decode+model b64",
}


def _rate(call: Callable[[], object], images_per_call: int, budget_s: float) -> float:
    """Images per second of ``call`` run back to back for ``budget_s`` seconds (after a warm-up)."""
    call()
    calls = 0
    start = time.perf_counter()
    end = start + budget_s
    while True:
        call()
        calls += 1
        now = time.perf_counter()
        if now >= end:
            return calls * images_per_call / (now - start)


def measure(model_dir: Path, pngs: Sequence[bytes], *, budget_s: float = 2.0) -> dict:
    """Measure the four rates on ``pngs`` (cycled to fill batches); returns a flat dict."""
    if not pngs:
        raise ValueError("no images to measure with")
    if budget_s <= 0:
        raise ValueError(f"budget must be > 0 seconds, got {budget_s}")
    model = Model(Path(model_dir))
    batch_pngs = list(itertools.islice(itertools.cycle(pngs), BATCH))
    decoded = [decode(p) for p in batch_pngs]
    one_png = itertools.cycle(batch_pngs)
    one_img = itertools.cycle(decoded)
    rates = {
        "model_b1": _rate(lambda: model.probabilities([next(one_img)]), 1, budget_s),
        "model_b64": _rate(lambda: model.probabilities(decoded), BATCH, budget_s),
        "decode_model_b1": _rate(lambda: model.probabilities([decode(next(one_png))]), 1, budget_s),
        "decode_model_b64": _rate(
            lambda: model.probabilities([decode(p) for p in batch_pngs]), BATCH, budget_s
        ),
    }
    out: dict = {f"{k}_images_per_second": round(v, 1) for k, v in rates.items()}
    out |= {"budget_seconds": budget_s, "model_version": model.version, "images": len(pngs)}
    return out


def load_pngs(folder: Path) -> list[bytes]:
    """The ``*.png`` files of ``folder``, sorted by name."""
    return [p.read_bytes() for p in sorted(Path(folder).glob("*.png"))]


def measure_in_subprocess(
    model_dir: Path, pngs: Sequence[bytes], *, budget_s: float = 2.0, timeout: float = 300.0
) -> dict:
    """:func:`measure` in a fresh ``python -m loadtest.model_limit`` process; returns its dict.

    The PNGs are handed over in a temporary folder. Raises ``RuntimeError`` with the child's
    stderr when it fails.
    """
    with tempfile.TemporaryDirectory(prefix="convserve-model-limit-") as tmp:
        for i, png in enumerate(pngs):
            (Path(tmp) / f"{i:05d}.png").write_bytes(png)
        cmd = [
            sys.executable,
            "-m",
            "loadtest.model_limit",
            "--model-dir",
            str(model_dir),
            "--images",
            tmp,
            "--budget",
            str(budget_s),
            "--json",
            "-",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"model limit failed ({proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def markdown(result: dict) -> str:
    """The rates as a small Markdown table."""
    rows = [
        "| work (one thread, no HTTP) | batch | images/s |",
        "| --- | ---: | ---: |",
    ]
    for cell in CELLS:
        work = "decode PNG + model" if cell.startswith("decode") else "model only"
        batch = cell.rsplit("_b", 1)[1]
        rows.append(f"| {work} | {batch} | {result[f'{cell}_images_per_second']:,.0f} |")
    return "\n".join(rows)


def compare_rows(ctx: Context, images: object) -> list[dict]:
    """The four rates as ``loadtest compare`` rows, on the PNGs Locust sends (``images.pngs``)."""
    try:
        budget = POSITIVE_FLOAT.parse(os.environ.get(BUDGET_ENV) or "2.0")
    except ValueError as exc:
        raise ValueError(f"{BUDGET_ENV}: {exc}") from None
    result = measure_in_subprocess(ctx.model_dir, images.pngs, budget_s=budget)  # type: ignore[attr-defined]
    rows = []
    for cell, name in ROW_NAMES.items():
        ips = result[f"{cell}_images_per_second"]
        batch = int(cell.rsplit("_b", 1)[1])
        rows.append(
            {
                "name": name,
                "batch_size": batch,
                "images_per_second": ips,
                "requests_per_second": round(ips / batch, 1),
            }
        )
    return rows


def configurations() -> list[Entry]:
    """``loadtest compare``'s plug-in hook: the in-process limit (4 rows, one thread, no HTTP)."""
    return [
        Measurement(
            "model limit",
            compare_rows,
            note=f"in-process serving_default, 1 thread, {BUDGET_ENV} s per rate (default 2)",
        )
    ]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.model_limit", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model-dir", type=Path, default=Path("models/fashion_mnist"))
    parser.add_argument(
        "--images",
        type=Path,
        help="folder of PNGs to decode and classify (default: the load test's images, "
        "loadtest.images: the first 64 Fashion-MNIST test images with FASHION_MNIST_DIR set, "
        "else generated ones)",
    )
    parser.add_argument(
        "--budget", type=POSITIVE_FLOAT, default=2.0, help="seconds per rate (default 2)"
    )
    parser.add_argument("--json", metavar="PATH", help="write the dict as JSON ('-' = stdout)")
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error("--budget must be > 0")
    if not list_versions(args.model_dir):
        parser.error(f"no SavedModel version under {args.model_dir}")
    pngs = load_pngs(args.images) if args.images is not None else load_images(BATCH).pngs
    if not pngs:
        parser.error(f"no *.png files in {args.images}")
    result = measure(args.model_dir, pngs, budget_s=args.budget)
    if args.json == "-":
        print(json.dumps(result))
        return 0
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
