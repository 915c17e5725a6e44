"""``python -m training``: summary, train, evaluate, inspect, visualize, filter.

Examples::

    python -m training summary
    python -m training train --quick --export-dir models/fashion_mnist
    python -m training train --data-dir "$FASHION_MNIST_DIR" --epochs 12 --batch-size 64 \\
        --seed 42 --export-dir models/fashion_mnist [--version 3] [--max-train-samples 5000]
    python -m training evaluate models/fashion_mnist
    python -m training inspect models/fashion_mnist/1
    python -m training visualize --model models/fashion_mnist --test-index 0 --out maps.png
    python -m training visualize --model models/fashion_mnist --class-id 9 --out boots.png
    python -m training filter photo.png --out filter.png

Exit codes: 0 success, 1 a problem with data, model or image (one-paragraph message on
stderr), 2 invalid arguments, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from serving.cli_numbers import (
    FRACTION,
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    RATIO,
)
from serving.contract import CLASS_NAMES
from training.data import DataError, load_fashion_mnist
from training.errors import ExportError, ImageError, RecipeError
from training.evaluate import ModelNotFoundError, evaluate_export, format_table, resolve_version_dir
from training.visualize import (
    class_examples,
    image_to_model_input,
    load_keras_model,
    plot_feature_maps,
    plot_filter_demo,
    plot_first_layer_filters,
    read_grayscale,
)

# Modules that import TensorFlow/Keras at their top (training.model, .train, .pipeline, .export)
# are imported inside the commands that need them: --help, usage errors and the TF-free
# commands must not wait seconds for TensorFlow's runtime.

log = logging.getLogger("training")

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
FILTER_NAMES = ("edges", "horizontal", "vertical")  # training.visualize.FILTERS (not imported here)


class CliError(Exception):
    """A user-facing problem: printed as one message, exit code 1."""


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the four Fashion-MNIST .gz files (default: $FASHION_MNIST_DIR, "
        "else Keras' fashion_mnist.load_data() cache)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m training``."""
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train, export, evaluate and visualise the lesson's Fashion-MNIST conv/pool model.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("summary", help="print the layer table (output shapes, parameter counts)")

    t = sub.add_parser(
        "train",
        help="train, export the next version, evaluate it on the test set",
        description="Train a fresh model with a recipe (default: the full one), export it "
        "atomically as <export-dir>/<version>/ and write metrics.json and plots beside it.",
    )
    _add_data_dir(t)
    t.add_argument(
        "--recipe", choices=("full", "quick", "lesson"), default="full",
        help="base recipe: full (default, 93.0%% test accuracy in ~6-7.5 min on 2 cores), "
        "quick (about a minute), lesson (the lesson's Adam, batch 32, 5 epochs); flags below "
        "override it",
    )  # fmt: skip
    t.add_argument("--quick", action="store_true", help="same as --recipe quick")
    t.add_argument("--epochs", type=POSITIVE_INT, help="maximum number of epochs")
    t.add_argument("--batch-size", type=POSITIVE_INT, help="training batch size")
    t.add_argument("--learning-rate", type=POSITIVE_FLOAT, help="peak learning rate")
    t.add_argument("--weight-decay", type=NON_NEGATIVE_FLOAT, help="AdamW's weight decay")
    t.add_argument(
        "--erase", type=RATIO,
        help="random-erasing probability per training image (0 = off)",
    )  # fmt: skip
    t.add_argument(
        "--test-time-flip", action=argparse.BooleanOptionalAction,
        help="export a signature that averages each image with its mirror image "
        "(twice the model's work per image)",
    )  # fmt: skip
    t.add_argument("--seed", type=NON_NEGATIVE_INT, help="random seed (same seed, same model)")
    t.add_argument("--max-train-samples", type=POSITIVE_INT, help="train on a random subset")
    t.add_argument(
        "--validation-fraction", type=FRACTION,
        help="fraction of the training set held out for validation/early stopping (0 = none)",
    )  # fmt: skip
    t.add_argument(
        "--patience", type=NON_NEGATIVE_INT,
        help="stop after this many epochs without a better validation accuracy (0 = never)",
    )  # fmt: skip
    t.add_argument(
        "--export-dir", type=Path, default=Path("models/fashion_mnist"),
        help="base folder of the versioned exports (default: %(default)s)",
    )  # fmt: skip
    t.add_argument("--version", type=POSITIVE_INT, help="version to write (default: next free)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --version")
    t.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    e = sub.add_parser("evaluate", help="evaluate an export on the test set and print the report")
    e.add_argument("export", type=Path, help="version folder, or base folder (newest version)")
    _add_data_dir(e)
    e.add_argument("--json", type=Path, metavar="PATH", help="also write the metrics as JSON here")

    i = sub.add_parser(
        "inspect", help="print the SavedModel's signatures (like saved_model_cli show --all)"
    )
    i.add_argument("export", type=Path, help="version folder, or base folder (newest version)")

    v = sub.add_parser(
        "visualize",
        help="feature maps after each conv/pool layer, and the 64 first-layer filters",
        description="Writes the feature maps to --out and the first-layer filters to "
        "<out stem>_filters.png.",
    )
    v.add_argument("--model", type=Path, required=True, help="export (version or base folder)")
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", type=Path, help="an image file (PNG/JPEG/...)")
    src.add_argument("--test-index", type=NON_NEGATIVE_INT, help="a test-set image by index")
    src.add_argument(
        "--class-id", type=int, choices=range(10), metavar="C",
        help="three test images of class C (0-9) side by side, one channel across layers",
    )  # fmt: skip
    v.add_argument("--channels", type=int, default=8, choices=range(1, 65), metavar="K",
                   help="channels shown per layer for one image (1-64, default %(default)s)")  # fmt: skip
    v.add_argument("--channel", type=int, default=1, choices=range(64), metavar="K",
                   help="channel shown for --class-id (0-63, default %(default)s)")  # fmt: skip
    _add_data_dir(v)
    v.add_argument("--out", type=Path, default=Path("feature_maps.png"), help="PNG to write")

    f = sub.add_parser(
        "filter",
        help="apply a hand-written 3x3 filter then 2x2 max pooling; show original/filtered/pooled",
    )
    f.add_argument("image", type=Path, nargs="?", help="any image file (converted to grayscale)")
    f.add_argument("--test-index", type=NON_NEGATIVE_INT, help="use a test-set image instead")
    f.add_argument("--filter", choices=FILTER_NAMES, default="vertical",
                   help="kernel (default: %(default)s, emphasises vertical lines)")  # fmt: skip
    _add_data_dir(f)
    f.add_argument("--out", type=Path, default=Path("filter.png"), help="PNG to write")
    return parser


def _load_data(data_dir: Path | None):
    return load_fashion_mnist(data_dir)


def cmd_summary(args: argparse.Namespace) -> int:
    """Print the layer table."""
    from training.model import EXPECTED_PARAMS, build_model

    model = build_model()
    print(f"{'layer':<16}{'type':<16}{'output shape':>14}{'params':>10}")
    for layer in model.layers:
        shape = "x".join(str(d) for d in layer.output.shape[1:])
        print(f"{layer.name:<16}{type(layer).__name__:<16}{shape:>14}{layer.count_params():>10,}")
    total = model.count_params()
    print(f"Total params: {total:,}")
    if total != EXPECTED_PARAMS:
        raise CliError(f"the model has {total:,} parameters, expected {EXPECTED_PARAMS:,}")
    return 0


def _check_export_dir(path: Path) -> None:
    """Raise CliError unless ``path`` exists as a writable folder or could be created.

    Nothing is created here: a run that fails before exporting leaves no folder behind.
    """
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CliError(f"cannot create the export folder {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CliError(f"cannot create the export folder {path}: {existing} is not writable")


def cmd_train(args: argparse.Namespace) -> int:
    """Train, export, evaluate, report."""
    dataset = _load_data(args.data_dir)  # before TensorFlow: a data problem fails fast
    from training.export import next_version

    if (
        args.version is not None
        and (args.export_dir / str(args.version)).exists()
        and not args.overwrite
    ):
        raise CliError(
            f"version {args.version} already exists in {args.export_dir}; pass --overwrite to "
            f"replace it or omit --version to export as version {next_version(args.export_dir)}"
        )
    _check_export_dir(args.export_dir)  # fails in seconds, not after minutes of training
    from training.pipeline import run_training
    from training.train import RECIPES

    recipe = RECIPES["quick" if args.quick else args.recipe].replace(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        erase=args.erase,
        test_time_flip=args.test_time_flip,
        seed=args.seed,
        max_train_samples=args.max_train_samples,
        validation_fraction=args.validation_fraction,
        patience=args.patience,
    )
    log.info("recipe: %s", recipe)
    result = run_training(
        dataset, recipe, export_dir=args.export_dir, version=args.version, overwrite=args.overwrite,
        progress=not args.no_progress, plots=not args.no_plots,
    )  # fmt: skip
    print(format_table(result.metrics))
    print(
        f"trained {result.epochs_run} epochs in {result.seconds:.0f} s ({result.cpu_seconds:.0f} "
        f"CPU s, load average {result.load_average[0]:.1f} -> {result.load_average[1]:.1f}; best "
        f"epoch {result.best_epoch}); exported to {result.export_path}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate an export on the test set."""
    version_dir = resolve_version_dir(args.export)
    dataset = _load_data(args.data_dir)

    metrics = evaluate_export(version_dir, dataset)
    print(f"model: {version_dir}")
    print(format_table(metrics))
    if args.json:
        args.json.write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def describe_signatures(version_dir: Path) -> str:
    """Signatures of a SavedModel, in ``saved_model_cli show --all`` style."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(version_dir))
    lines = [f"SavedModel: {version_dir}", ""]
    for name, fn in sorted(loaded.signatures.items()):
        lines.append(f"signature_def['{name}']:")
        lines.append("  The given SavedModel SignatureDef contains the following input(s):")
        for key, spec in sorted(fn.structured_input_signature[1].items()):
            lines.append(f"    inputs['{key}'] tensor_info:")
            lines.append(f"        dtype: {_dtype(spec.dtype)}")
            lines.append(f"        shape: {_shape(spec.shape)}")
        lines.append("  The given SavedModel SignatureDef contains the following output(s):")
        for key, spec in sorted(fn.structured_outputs.items()):
            lines.append(f"    outputs['{key}'] tensor_info:")
            lines.append(f"        dtype: {_dtype(spec.dtype)}")
            lines.append(f"        shape: {_shape(spec.shape)}")
        lines.append("  Method name is: tensorflow/serving/predict")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _dtype(dtype) -> str:
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(dtype.as_datatype_enum)


def _shape(shape) -> str:
    dims = [-1 if d is None else int(d) for d in shape.as_list()]
    return "(" + ", ".join(map(str, dims)) + ("," if len(dims) == 1 else "") + ")"


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print the signatures of an export."""

    version_dir = resolve_version_dir(args.export)
    sys.stdout.write(describe_signatures(version_dir))
    extras = [
        p.name
        for p in sorted(version_dir.iterdir())
        if p.name not in {"variables", "assets", "saved_model.pb", "fingerprint.pb"}
    ]
    print(f"other files: {', '.join(extras) or 'none'}")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    """Feature maps and first-layer filters."""

    version_dir = resolve_version_dir(args.model)
    if args.image is not None:
        if not args.image.is_file():
            raise CliError(f"{args.image}: no such image file")
        images, titles = [image_to_model_input(args.image)], [args.image.name]
    else:
        ds = _load_data(args.data_dir)
        if args.test_index is not None:
            if args.test_index >= len(ds.x_test):
                raise CliError(f"--test-index must be < {len(ds.x_test)}, got {args.test_index}")
            idx = np.array([args.test_index])
        else:
            idx = class_examples(ds.x_test, ds.y_test, args.class_id, count=3)
        images = [ds.x_test[i].astype(np.float32) / 255.0 for i in idx]
        titles = [f"test #{i} {CLASS_NAMES[ds.y_test[i]]}" for i in idx]
    model = load_keras_model(version_dir)
    out = plot_feature_maps(
        model, images, args.out, channels=args.channels, channel=args.channel, titles=titles
    )
    filters = plot_first_layer_filters(model, args.out.with_name(f"{args.out.stem}_filters.png"))
    print(f"wrote {out} and {filters}")
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    """The hand-written filter + max-pooling demo."""

    if (args.image is None) == (args.test_index is None):
        raise CliError("give either an IMAGE file or --test-index N (not both)")
    if args.image is not None:
        if not args.image.is_file():
            raise CliError(f"{args.image}: no such image file")
        image = read_grayscale(args.image)
    else:
        ds = _load_data(args.data_dir)
        if args.test_index >= len(ds.x_test):
            raise CliError(f"--test-index must be < {len(ds.x_test)}, got {args.test_index}")
        image = ds.x_test[args.test_index].astype("float32")
    out = plot_filter_demo(image, args.out, args.filter)
    print(f"wrote {out}")
    return 0


COMMANDS = {
    "summary": cmd_summary,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "inspect": cmd_inspect,
    "visualize": cmd_visualize,
    "filter": cmd_filter,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m training``; returns the exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    try:
        return COMMANDS[args.command](args)
    except (CliError, DataError, ExportError, ModelNotFoundError, ImageError, RecipeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # an unwritable --out/--export-dir, a file that vanished, ...
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
