"""PNG plots for the evaluation report: confusion matrix and training curves.

Example::

    from training.report import plot_confusion_matrix
    plot_confusion_matrix(metrics["confusion_matrix"], "confusion_matrix.png")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from serving.contract import CLASS_NAMES

CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "training_curves.png"


def _save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    FigureCanvasAgg(fig)  # Agg canvas without pyplot's global state
    fig.savefig(path, dpi=dpi)
    return Path(path)


def plot_confusion_matrix(cm: Sequence[Sequence[int]], path: str | Path) -> Path:
    """Write the confusion matrix (rows = true class) as an annotated heat map."""
    cm_arr = np.asarray(cm)
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(cm_arr, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ticks = np.arange(len(CLASS_NAMES))
    ax.set_xticks(ticks, CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(ticks, CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (accuracy {np.trace(cm_arr) / max(1, cm_arr.sum()):.4f})")
    threshold = cm_arr.max() / 2 if cm_arr.size else 0
    for (i, j), v in np.ndenumerate(cm_arr):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                color="white" if v > threshold else "black")  # fmt: skip
    return _save(fig, path)


def plot_training_curves(history: dict[str, list[float]], path: str | Path) -> Path:
    """Write loss and accuracy per epoch (training and, if present, validation)."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    for i, metric in enumerate(("loss", "accuracy")):
        ax = fig.add_subplot(1, 2, i + 1)
        for key, style in ((metric, "-o"), (f"val_{metric}", "-s")):
            if history.get(key):
                epochs = np.arange(1, len(history[key]) + 1)
                ax.plot(epochs, history[key], style, label=key, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)
