"""Train → export → evaluate the exported model → report, as one step.

Example::

    from training.pipeline import run_training
    result = run_training(dataset, RECIPES["quick"], export_dir="models/fashion_mnist")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from serving.contract import MODEL_NAME
from training.data import Dataset
from training.evaluate import METRICS_FILE, compute_metrics, load_serving_fn, predict_probabilities
from training.export import export_model
from training.report import CONFUSION_PNG, CURVES_PNG, plot_confusion_matrix, plot_training_curves
from training.train import Recipe, TrainResult, train

log = logging.getLogger(__name__)


def run_training(
    dataset: Dataset,
    recipe: Recipe,
    *,
    export_dir: str | Path,
    version: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    plots: bool = True,
) -> TrainResult:
    """Train with ``recipe``, export atomically, evaluate the *exported* signature on the test set.

    ``metrics.json`` (and, with ``plots``, ``confusion_matrix.png`` and ``training_curves.png``)
    are written inside the version folder before it is renamed into place.
    """
    result = train(dataset, recipe, progress=progress)
    warmup = dataset.x_test[:64].astype(np.float32)[..., None] / 255.0

    def write_report(tmp: Path, version: int) -> None:
        _, fn = load_serving_fn(tmp)
        metrics = compute_metrics(dataset.y_test, predict_probabilities(fn, dataset.x_test))
        metrics.update(
            {
                "model_name": MODEL_NAME,
                "version": version,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "recipe": dataclasses.asdict(result.recipe),
                "training": {
                    "seconds": round(result.seconds, 1),
                    "cpu_seconds": round(result.cpu_seconds, 1),
                    "load_average": [round(v, 2) for v in result.load_average],
                    "cpu_count": os.cpu_count(),
                    "epochs_run": result.epochs_run,
                    "best_epoch": result.best_epoch,
                    "history": result.history,
                },
            }
        )
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        if plots:
            plot_confusion_matrix(metrics["confusion_matrix"], tmp / CONFUSION_PNG)
            plot_training_curves(result.history, tmp / CURVES_PNG)
        result.metrics = metrics

    result.export_path = export_model(
        result.model, export_dir, version, warmup_images=warmup, overwrite=overwrite,
        extras=write_report, test_time_flip=recipe.test_time_flip,
    )  # fmt: skip
    log.info(
        "test accuracy %.4f, exported to %s", result.metrics["test_accuracy"], result.export_path
    )
    return result
