"""Evaluation of an exported model (or raw probabilities) on the Fashion-MNIST test set.

Example::

    from training.evaluate import evaluate_export, format_table
    metrics = evaluate_export("models/fashion_mnist", dataset)  # newest version
    print(format_table(metrics))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from serving.contract import (
    CLASS_NAMES,
    INPUT_KEY,
    NUM_CLASSES,
    OUTPUT_PROBABILITIES,
    SIGNATURE_NAME,
    list_versions,
)

METRICS_FILE = "metrics.json"

# TensorFlow is imported inside the two functions that run the model: the CLI uses the rest of
# this module (resolve_version_dir, format_table) without TensorFlow's runtime.


class ModelNotFoundError(Exception):
    """The path holds no SavedModel (neither a version dir nor a base dir with versions)."""


def resolve_version_dir(export: str | Path) -> Path:
    """A SavedModel dir: ``export`` itself, or its highest integer version subfolder."""
    path = Path(export)
    if (path / "saved_model.pb").is_file():
        return path
    versions = list_versions(path)
    if versions:
        return path / str(versions[-1])
    raise ModelNotFoundError(
        f"{path}: no SavedModel here; expected a version folder with saved_model.pb or a base "
        "folder with integer version subfolders (train one with `python -m training train`)"
    )


def load_serving_fn(export: str | Path) -> tuple[Path, Any]:
    """Load the ``serving_default`` signature of an export; returns ``(version_dir, fn)``."""
    import tensorflow as tf

    version_dir = resolve_version_dir(export)
    loaded = tf.saved_model.load(str(version_dir))
    fn = loaded.signatures[SIGNATURE_NAME]
    fn._loaded = loaded  # keep the loaded object (and its variables) alive with the function
    return version_dir, fn


def predict_probabilities(fn: Any, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Run a ``serving_default`` function over uint8 ``[N,28,28]`` images; returns ``[N,10]``."""
    import tensorflow as tf

    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size].astype(np.float32)[..., None] / 255.0
        out.append(fn(**{INPUT_KEY: tf.constant(batch)})[OUTPUT_PROBABILITIES].numpy())
    return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES), np.float32)


def compute_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """Accuracy, log loss, confusion matrix (rows = true class) and per-class scores."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (len(y_true), NUM_CLASSES):
        raise ValueError(
            f"probabilities must be [{len(y_true)},{NUM_CLASSES}], got {probabilities.shape}"
        )
    y_pred = probabilities.argmax(axis=1)
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    per_class = []
    for c, name in enumerate(CLASS_NAMES):
        support, predicted, correct = int(cm[c].sum()), int(cm[:, c].sum()), int(cm[c, c])
        recall = correct / support if support else 0.0
        precision = correct / predicted if predicted else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append(
            {
                "class_id": c,
                "label": name,
                "support": support,
                "accuracy": recall,  # per-class accuracy = recall of that class
                "precision": precision,
                "recall": recall,
                "f1": f1,
            }
        )
    p_true = probabilities[np.arange(len(y_true)), y_true]
    return {
        "test_accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "test_loss": float(-np.log(np.clip(p_true, 1e-12, 1.0)).mean()) if len(y_true) else 0.0,
        "num_test_images": len(y_true),
        "labels": list(CLASS_NAMES),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def evaluate_export(export: str | Path, dataset: Any) -> dict[str, Any]:
    """Evaluate an export (version dir or base dir → newest version) on ``dataset``'s test set."""
    version_dir, fn = load_serving_fn(export)
    metrics = compute_metrics(dataset.y_test, predict_probabilities(fn, dataset.x_test))
    metrics["model_path"] = str(version_dir)
    return metrics


def format_table(metrics: dict[str, Any]) -> str:
    """A plain-text report: per-class table, overall accuracy, confusion matrix."""
    lines = [f"{'class':<14}{'support':>8}{'accuracy':>10}{'precision':>11}{'recall':>8}{'f1':>8}"]
    for row in metrics["per_class"]:
        lines.append(
            f"{row['class_id']} {row['label']:<12}{row['support']:>8}{row['accuracy']:>10.4f}"
            f"{row['precision']:>11.4f}{row['recall']:>8.4f}{row['f1']:>8.4f}"
        )
    lines.append(
        f"test accuracy {metrics['test_accuracy']:.4f} on {metrics['num_test_images']} images "
        f"(log loss {metrics['test_loss']:.4f})"
    )
    lines.append("confusion matrix (rows = true class, columns = predicted):")
    lines.append("     " + "".join(f"{c:>6}" for c in range(NUM_CLASSES)))
    for c, row in enumerate(metrics["confusion_matrix"]):
        lines.append(f"{c:>4} " + "".join(f"{v:>6}" for v in row))
    return "\n".join(lines)
