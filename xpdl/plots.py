"""Training curves as in the cs231n notebooks: loss, and train / validation accuracy, against epoch.

Drawn with matplotlib's Agg canvas (no display, no global pyplot state), from a
``history.json`` document (:func:`xpdl.history.history_record`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from xpdl.atomic import atomic_write


def plot_curves(history: dict[str, Any], path: str | os.PathLike[str], dpi: int = 100) -> Path | None:
    """Draw ``history`` into the PNG file ``path`` (written atomically).

    Top panel: the loss of every iteration (dots) against epoch. Bottom panel:
    train and validation accuracy at every accuracy check against epoch.

    Returns:
        ``path``, or None (with a note on stderr) when matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("xpdl: matplotlib is not installed; skipping curves.png (pip install matplotlib)", file=sys.stderr)
        return None
    fig = Figure(figsize=(8, 7), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(2, 1)
    _draw_loss(loss_ax, history)
    _draw_accuracy(acc_ax, history)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def _draw_loss(ax: Any, history: dict[str, Any]) -> None:
    ax.plot(history["loss_epochs"], history["loss_history"], "o", markersize=2, alpha=0.5)
    ax.set_title("Training loss")
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Loss")
    ax.grid(alpha=0.3)


def _draw_accuracy(ax: Any, history: dict[str, Any]) -> None:
    x = history["check_epochs"]
    ax.plot(x, history["train_acc_history"], "-o", markersize=3, label="train")
    ax.plot(x, history["val_acc_history"], "-o", markersize=3, label="val")
    best = history.get("best_val_acc")
    title = "Accuracy" if best is None else f"Accuracy (best val {best:.4f})"
    ax.set_title(title)
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Accuracy")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
