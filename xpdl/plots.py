"""Pictures of training: loss and accuracy curves, first-layer weights, confusion matrices, runs side by side.

Every function returns a :class:`Figure` drawn with matplotlib's object-oriented
API on an Agg canvas: no pyplot, no global figure list, no display needed. A
figure is freed as soon as nothing refers to it, so drawing in a loop does not
accumulate figures. Jupyter shows a returned figure inline (it has
``_repr_png_``); :func:`save` writes one as a PNG file, atomically.

- :func:`history`: training loss (log scale when it spans more than a decade)
  and train / validation accuracy against epoch, from a :class:`xpdl.Trainer`, a
  run folder, a ``history.json`` or its dict;
- :func:`weights`: the first layer's weights as an image grid (cs231n's
  ``visualize_grid``), for inputs that are images of shape (H, W, C);
- :func:`confusion`: the confusion matrix of predicted against true classes;
- :func:`compare`: the validation accuracy and training loss of several runs.

Arrays may live on any backend (NumPy, CuPy, ``array_api_strict``); they are
copied to the host before drawing, so a net plots the same on every backend.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.figure
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.ticker import FuncFormatter, LogLocator

from xpdl.host import to_numpy
from xpdl.runs.atomic import atomic_write
from xpdl.runs.folder import read_history
from xpdl.runs.history import history_record

#: Pictures of a run folder: first-layer weights (``xpdl train``) and confusion matrix (``xpdl evaluate --plot``).
WEIGHTS_FILE = "weights.png"
CONFUSION_FILE = "confusion.png"
#: Keys a history document must have to be drawn (see :func:`xpdl.runs.history.history_record`).
HISTORY_KEYS = ("loss_history", "loss_epochs", "check_epochs", "train_acc_history", "val_acc_history")
#: Resolution of saved and inline PNGs (dots per inch); figure sizes are in inches.
DPI = 100
#: Confusion matrices: at most this many classes (a label beyond is refused, not drawn), at most
#: this many labelled ticks per axis, and counts written into the cells up to this many cells.
MAX_CLASSES = 1000
MAX_TICKS = 40
MAX_CELL_TEXTS = 400
#: A loss whose 95th percentile is more than this many times its 5th is drawn on a log scale.
LOG_SCALE_RATIO = 10.0


class Figure(matplotlib.figure.Figure):
    """A matplotlib Figure on an Agg canvas that Jupyter shows inline, with or without pyplot."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=DPI)
        return buf.getvalue()


def new_figure(width: float, height: float) -> Figure:
    """An empty :class:`Figure` of ``width`` x ``height`` inches with constrained layout and an Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: matplotlib.figure.Figure, path: str | os.PathLike[str], dpi: int = DPI) -> Path:
    """Write ``fig`` to the PNG file ``path`` (atomically); returns the path."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def render(fig: matplotlib.figure.Figure, dpi: int = DPI) -> np.ndarray:
    """The pixels of ``fig`` as drawn into a PNG: a (H, W, 4) uint8 RGBA host array."""
    import matplotlib.image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    return (matplotlib.image.imread(buf, format="png") * 255).round().astype(np.uint8)


def write_weights(folder: str | os.PathLike[str], net: Any, image_shape: Sequence[int]) -> Path:
    """Draw :func:`weights` of ``net`` into ``folder/weights.png``; returns the path."""
    return save(weights(net, image_shape), Path(folder) / WEIGHTS_FILE)


def write_confusion(
    folder: str | os.PathLike[str],
    y_true: Any,
    y_pred: Any,
    class_names: Sequence[str],
    title: str = "Confusion matrix",
) -> Path:
    """Draw :func:`confusion` into ``folder/confusion.png``, creating ``folder`` if needed; returns the path.

    When the picture cannot be written, the folders created for it are removed again.
    """
    folder = Path(folder)
    fig = confusion(y_true, y_pred, class_names, title=title)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return save(fig, folder / CONFUSION_FILE)
    except OSError:
        for path in created:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


# ---------------------------------------------------------------- history
def history_data(source: Any) -> dict[str, Any]:
    """The history document behind :func:`history`, from a Trainer, a run folder, a JSON file or a dict.

    Returns a dict with at least :data:`HISTORY_KEYS` (and ``best_val_acc``,
    ``best_epoch`` when known); see :func:`xpdl.runs.history.history_record`.
    """
    if hasattr(source, "loss_history") and hasattr(source, "iterations_per_epoch"):
        return history_record(source, settings={}, device="")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(
                f"source: expected a run folder or a history.json file, got {str(source)!r} (no such file or folder)"
            )
        doc = read_history(path)
    elif isinstance(source, Mapping):
        doc = dict(source)
    else:
        raise TypeError(
            f"source: expected a Trainer, a run folder, a history.json path or a history dict, "
            f"got {type(source).__name__}"
        )
    missing = [k for k in HISTORY_KEYS if k not in doc]
    if missing:
        raise ValueError(f"source: expected a history document with keys {list(HISTORY_KEYS)}, missing {missing}")
    for key, like, what in (
        ("loss_epochs", "loss_history", "loss"),
        ("train_acc_history", "check_epochs", "check"),
        ("val_acc_history", "check_epochs", "check"),
    ):
        if len(doc[key]) != len(doc[like]):
            raise ValueError(f"source[{key!r}]: expected one value per {what} ({len(doc[like])}), got {len(doc[key])}")
    return doc


def history(source: Any, title: str | None = None) -> Figure:
    """Training loss and train / validation accuracy against epoch, one panel each.

    Args:
        source: a :class:`xpdl.Trainer` (during or after training), a run folder
            (its ``history.json``), a ``history.json`` path, or its dict.
        title: a title over both panels (default: none).

    Top panel: the loss of every iteration (faint dots) and its running mean
    (line), on a log scale when it spans more than a decade. Bottom panel: the
    accuracy at every check, with the best validation accuracy marked.
    """
    doc = history_data(source)
    fig = new_figure(8, 6.5)
    loss_ax, acc_ax = fig.subplots(2, 1, sharex=True)
    _draw_loss(loss_ax, doc)
    _draw_accuracy(acc_ax, doc)
    if title:
        fig.suptitle(title)
    return fig


def plot_curves(doc: dict[str, Any], path: str | os.PathLike[str], dpi: int = DPI) -> Path:
    """Write :func:`history` of the history document ``doc`` to the PNG file ``path`` (``curves.png``)."""
    return save(history(doc), path, dpi=dpi)


def running_mean(values: Sequence[float], window: int) -> np.ndarray:
    """Mean of each ``window`` consecutive values (fewer at the start): an array as long as ``values``."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or window <= 1:
        return v.copy()
    sums = np.cumsum(np.concatenate([[0.0], v]))
    ends = np.arange(1, v.size + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def smoothing_window(doc: dict[str, Any]) -> int:
    """Iterations averaged by the loss line: about a 25th of the run, at most one epoch."""
    n = len(doc["loss_history"])
    ipe = int(doc.get("iterations_per_epoch") or n or 1)
    return max(1, min(n // 25, ipe))


def wants_log_scale(values: Sequence[float]) -> bool:
    """Whether positive ``values`` span more than :data:`LOG_SCALE_RATIO` (5th to 95th percentile)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2 or np.any(v <= 0):
        return False
    low, high = np.percentile(v, [5, 95])
    return bool(high > LOG_SCALE_RATIO * low)


def _plain_number(value: float, _pos: Any = None) -> str:
    return f"{value:g}"


def _log_y(ax: Any) -> None:
    """A log y axis labelled 0.01, 0.1, 1 (with 2 and 5 in between) instead of powers of ten."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, p: ""))


def _draw_loss(ax: Any, doc: dict[str, Any]) -> None:
    x, loss = doc["loss_epochs"], doc["loss_history"]
    window = smoothing_window(doc)
    ax.plot(x, loss, "o", markersize=2, alpha=0.3, color="C0", label="each iteration")
    if window > 1:
        ax.plot(x, running_mean(loss, window), "-", color="C0", linewidth=2, label=f"mean of {window} iterations")
    if wants_log_scale(loss):
        _log_y(ax)
        ax.set_ylabel("Loss (log scale)")
    else:
        ax.set_ylabel("Loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3, which="major")
    if len(loss):
        ax.legend(loc="upper right")
    ax.tick_params(labelbottom=True)
    ax.set_xlabel("Epoch")


def accuracy_floor(epochs: Sequence[float], accuracies: Sequence[float]) -> float | None:
    """Lower y limit that zooms in on the accuracies from epoch 1 on, or None when no zoom is needed.

    The first check (after one iteration) is often far below the rest and would
    squash them into a thin band at the top; when the checks from epoch 1 on span
    less than half of the whole range, the axis starts a little below them.
    """
    acc = np.asarray(accuracies, dtype=np.float64)
    later = acc[np.asarray(epochs, dtype=np.float64) >= 1]
    if later.size < 2 or acc.size == later.size:
        return None
    top, low, lowest = float(acc.max()), float(later.min()), float(acc.min())
    if top - low >= 0.5 * (top - lowest):
        return None
    return max(0.0, low - 0.15 * max(top - low, 0.02))


def _draw_accuracy(ax: Any, doc: dict[str, Any]) -> None:
    x, train, val = doc["check_epochs"], doc["train_acc_history"], doc["val_acc_history"]
    ax.plot(x, train, "-o", markersize=3, color="C1", label="train")
    ax.plot(x, val, "-o", markersize=3, color="C2", label="validation")
    title = "Accuracy"
    if val:
        best = int(np.argmax(val))
        ax.plot(
            [x[best]],
            [val[best]],
            "*",
            markersize=14,
            color="C3",
            zorder=3,
            label=f"best validation {val[best]:.4f} (epoch {x[best]:.3g})",
        )
        both = len(train) == len(val)
        floor = accuracy_floor(list(x) * 2, list(train) + list(val)) if both else accuracy_floor(x, val)
        if floor is not None:
            top = max(max(train) if both else 0.0, max(val))
            ax.set_ylim(floor, top + 0.1 * (top - floor))
            first = f"train {train[0]:.3f}, validation {val[0]:.3f}" if both else f"validation {val[0]:.3f}"
            title = f"Accuracy (zoomed in; the first check, at epoch {x[0]:.2g}: {first})"
    ax.set_title(title)
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Accuracy")
    ax.grid(alpha=0.3)
    if val:
        ax.legend(loc="lower right")


# ---------------------------------------------------------------- weights
def first_layer_weights(net: Any) -> np.ndarray:
    """The first layer's weights (D, K) as a host array, from a net (``params["W1"]``) or an array."""
    params = getattr(net, "params", None)
    if isinstance(params, Mapping):
        if "W1" not in params:
            raise ValueError(f"net: expected a net with a first-layer weight 'W1', got params {sorted(params)}")
        W = params["W1"]
    elif hasattr(net, "shape"):
        W = net
    else:
        raise TypeError(f"net: expected a FullyConnectedNet or a (D, K) weight array, got {type(net).__name__}")
    W = np.asarray(to_numpy(W), dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f"net: expected first-layer weights of shape (D, K), got shape {W.shape}")
    return W


def weight_grid(
    W: np.ndarray, image_shape: Sequence[int], padding: int = 1, max_units: int | None = None
) -> np.ndarray:
    """Tile the columns of ``W`` (D, K) as images of ``image_shape`` (H, W, C) into one grid (cs231n style).

    Each unit's image is scaled by its own largest absolute weight to [0, 1] with
    0.5 for a zero weight (an all-zero image is 0.5 throughout), so light is
    positive and dark negative. Units fill a near-square grid row by row, with
    ``padding`` pixels of 1.0 (white) between them.

    Returns:
        (rows * (H + padding) + padding, cols * (W + padding) + padding, C) float64 in [0, 1].
    """
    shape = _image_shape(image_shape, W.shape[0])
    k = W.shape[1] if max_units is None else min(W.shape[1], max_units)
    images = W[:, :k].T.reshape(k, *shape)
    peak = np.abs(images).max(axis=(1, 2, 3), keepdims=True)
    images = 0.5 + 0.5 * images / np.where(peak > 0, peak, 1.0)
    cols = max(1, math.ceil(math.sqrt(k)))
    rows = max(1, math.ceil(k / cols))
    h, w, c = shape
    grid = np.ones((rows * (h + padding) + padding, cols * (w + padding) + padding, c))
    for i in range(k):
        r, q = divmod(i, cols)
        y0, x0 = padding + r * (h + padding), padding + q * (w + padding)
        grid[y0 : y0 + h, x0 : x0 + w] = images[i]
    return grid


def _image_shape(image_shape: Sequence[int], features: int) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError):
        raise TypeError(f"image_shape: expected (H, W, C) integers, got {image_shape!r}") from None
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or min(shape) < 1 or shape[2] not in (1, 3):
        raise ValueError(f"image_shape: expected (H, W, C) with C 1 or 3, got {tuple(image_shape)}")
    if math.prod(shape) != features:
        raise ValueError(
            f"image_shape: expected H * W * C = {features} (the first layer's inputs), got {shape} = {math.prod(shape)}"
        )
    return shape


def weights(
    net: Any, image_shape: Sequence[int], max_units: int = 256, class_names: Sequence[str] | None = None
) -> Figure:
    """The first layer's weights as a grid of images, one per unit (cs231n's ``visualize_grid``).

    Args:
        net: a :class:`xpdl.FullyConnectedNet` on any backend, or its ``W1`` (D, K); or a
            :class:`xpdl.ConvNet` (or its ``W1`` (F, C, HH, WW)): its first conv layer's filters,
            one HH x WW image each (``image_shape`` is then not used).
        image_shape: (H, W, C) of one input image, H * W * C = D; digits ``(8, 8, 1)``,
            MNIST ``(28, 28, 1)``, CIFAR-10 ``(32, 32, 3)`` (``data["image_shape"]``).
        max_units: draw at most this many units (the first ones).
        class_names: for a net without hidden layers (K classes): a title over each
            class's template.

    Each image is scaled by its own largest absolute weight, so the pattern a unit
    responds to is visible whatever its weights' magnitude: mid-gray is a zero
    weight, light a positive one, dark a negative one (per colour channel for RGB).
    """
    filters = _conv_filters(net)
    if filters is not None:
        return _filter_grid(filters, max_units)
    W = first_layer_weights(net)
    shape = _image_shape(image_shape, W.shape[0])
    k = min(W.shape[1], max_units)
    if class_names is not None:
        return _class_templates(W, shape, class_names)
    grid = weight_grid(W, shape, max_units=k)
    zoom = max(1, round(640 / max(grid.shape[:2])))
    fig = new_figure(grid.shape[1] * zoom / DPI + 0.2, grid.shape[0] * zoom / DPI + 0.7)
    ax = fig.subplots()
    _show_image(ax, grid)
    shown = f"{k} units" if k == W.shape[1] else f"the first {k} of {W.shape[1]} units"
    size = "x".join(str(s) for s in (shape if shape[2] == 3 else shape[:2]))
    ax.set_title(
        f"First-layer weights: {shown}, {size} each\n(each scaled to its own largest weight: gray 0, light +, dark -)"
    )
    return fig


def _conv_filters(net: Any) -> np.ndarray | None:
    """A conv net's (or array's) first-layer filters (F, C, HH, WW) as a host array; None for a 2-D W1."""
    params = getattr(net, "params", None)
    W = params.get("W1") if isinstance(params, Mapping) else net if hasattr(net, "shape") else None
    if W is None or len(W.shape) != 4:
        return None
    W = np.asarray(to_numpy(W), dtype=np.float64)
    if W.shape[1] not in (1, 3):
        raise ValueError(f"net: expected first-layer filters with 1 or 3 input channels to draw, got shape {W.shape}")
    return W


def _filter_grid(filters: np.ndarray, max_units: int) -> Figure:
    """The first conv layer's filters (F, C, HH, WW) as a grid of HH x WW images (cs231n's ``visualize_grid``)."""
    f, c, hh, ww = filters.shape
    k = min(f, max_units)
    columns = filters.transpose(0, 2, 3, 1).reshape(f, -1).T  # (HH·WW·C, F): one filter per column
    grid = weight_grid(columns, (hh, ww, c), max_units=k)
    zoom = max(1, round(480 / max(grid.shape[:2])))
    fig = new_figure(max(5.6, grid.shape[1] * zoom / DPI + 0.2), grid.shape[0] * zoom / DPI + 0.7)
    ax = fig.subplots()
    _show_image(ax, grid)
    shown = f"{k} filters" if k == f else f"the first {k} of {f} filters"
    ax.set_title(
        f"First conv layer: {shown}, {hh}x{ww}\n(each scaled to its own largest weight: gray 0, light +, dark -)"
    )
    return fig


def _class_templates(W: np.ndarray, shape: tuple[int, int, int], class_names: Sequence[str]) -> Figure:
    names = [str(c) for c in class_names]
    if len(names) != W.shape[1]:
        raise ValueError(f"class_names: expected one name per first-layer unit ({W.shape[1]}), got {len(names)}")
    cols = min(len(names), 5)
    rows = math.ceil(len(names) / cols)
    fig = new_figure(1.6 * cols + 0.4, 1.8 * rows + 0.5)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for i, ax in enumerate(axes):
        if i < len(names):
            _show_image(ax, weight_grid(W[:, i : i + 1], shape, padding=0))
            ax.set_title(names[i])
        else:
            ax.axis("off")
    fig.suptitle("Class templates: the weights of each class (gray 0, light +, dark -)")
    return fig


def _show_image(ax: Any, image: np.ndarray) -> None:
    if image.shape[2] == 1:
        ax.imshow(image[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()


# ---------------------------------------------------------------- confusion
def confusion_counts(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Counts (C, C) as int64: row = true class, column = predicted class."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    return counts


def _labels(values: Any, name: str) -> np.ndarray:
    a = np.asarray(to_numpy(values))
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array of class labels, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.equal(np.mod(a, 1), 0)):
            raise ValueError(f"{name}: expected integer class labels, got dtype {a.dtype} with fractions")
    a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise ValueError(f"{name}: expected labels >= 0, got {int(a.min())}")
    return a


def confusion(
    y_true: Any, y_pred: Any, class_names: Sequence[str] | None = None, title: str = "Confusion matrix"
) -> Figure:
    """The confusion matrix: how often each true class (row) was predicted as each class (column).

    Args:
        y_true, y_pred: (N,) integer labels, host or device arrays of any backend.
        class_names: C names (index = label); default ``"0" .. str(max label)``.
        title: what the title says before the accuracy.

    Each cell gives the count (mistakes in bold red); its colour is the count as a
    fraction of the true class (the row), on a square-root scale so that a few
    mistakes still show. The title gives the accuracy.
    """
    yt, yp = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if yt.shape != yp.shape:
        raise ValueError(f"y_pred: expected as many labels as y_true ({yt.size}), got {yp.size}")
    top = int(max(yt.max(initial=-1), yp.max(initial=-1)))
    if top >= MAX_CLASSES or (class_names is not None and len(class_names) > MAX_CLASSES):
        raise ValueError(
            f"y_true, y_pred: expected at most {MAX_CLASSES} classes (labels 0 to {MAX_CLASSES - 1}), "
            f"got {'a label ' + str(top) if top >= MAX_CLASSES else str(len(class_names)) + ' class names'}"
        )
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(top + 1)]
    if top >= len(names):
        raise ValueError(f"class_names: expected a name for every label up to {top}, got {len(names)} names")
    c = len(names)
    counts = confusion_counts(yt, yp, c)
    rows = counts.sum(axis=1, keepdims=True)
    fraction = counts / np.maximum(rows, 1)
    side = min(max(4.0, 0.4 * c + 2.2), 16.0)
    long_names = max((len(n) for n in names), default=1) > 3
    fig = new_figure(side + 1.3 + (0.6 if long_names else 0), side + (0.6 if long_names else 0))
    ax = fig.subplots()
    image = ax.imshow(fraction, cmap="Blues", norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0))
    fontsize = 10 if c <= 12 else max(5, int(120 / c))
    cells = range(c) if c * c <= MAX_CELL_TEXTS else range(0)  # beyond that the colours tell the story
    for i in cells:
        for j in range(c):
            if counts[i, j]:
                dark = fraction[i, j] > 0.4
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if dark else ("black" if i == j else "#b2182b"),
                    fontweight="normal" if i == j else "bold",
                )
    ticks = range(0, c, -(-c // MAX_TICKS))  # every class up to MAX_TICKS classes, else evenly spaced
    ax.set_xticks(
        ticks,
        [names[i] for i in ticks],
        rotation=45 if long_names else 0,
        ha="right" if long_names else "center",
        rotation_mode="anchor",
    )
    ax.set_yticks(ticks, [names[i] for i in ticks])
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    correct, n = int(np.trace(counts)), int(counts.sum())
    acc = correct / n if n else 0.0
    ax.set_title(f"{title}: accuracy {acc:.4f} ({correct} / {n})" if title else f"Accuracy {acc:.4f} ({correct} / {n})")
    fig.colorbar(image, ax=ax, shrink=0.8, label="Fraction of the true class (square-root scale)")
    return fig


# ---------------------------------------------------------------- compare
def _run_label(source: Any, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return (path.parent if path.is_file() else path).name or str(path)
    return f"run {index + 1}"


def compare(runs: Mapping[str, Any] | Sequence[Any]) -> Figure:
    """Several runs side by side: validation accuracy (left) and training loss (right) against epoch.

    Args:
        runs: ``{label: source}`` or a list of sources (labelled by their folder
            name, else ``run 1``, ``run 2``, ...); a source is anything
            :func:`history` takes (a Trainer, a run folder, a history file or dict).

    The loss is each run's running mean (as in :func:`history`), on a log scale
    when it spans more than a decade; a star marks each run's best validation accuracy.
    """
    if isinstance(runs, Mapping):
        items = [(str(k), v) for k, v in runs.items()]
    elif isinstance(runs, Sequence) and not isinstance(runs, (str, bytes)):
        items = [(_run_label(s, i), s) for i, s in enumerate(runs)]
    else:
        raise TypeError(f"runs: expected a dict of label: run or a list of runs, got {type(runs).__name__}")
    if not items:
        raise ValueError("runs: expected at least one run, got none")
    docs = [(label, history_data(src)) for label, src in items]
    fig = new_figure(11, 4.8)
    acc_ax, loss_ax = fig.subplots(1, 2)
    all_losses = []
    for i, (label, doc) in enumerate(docs):
        color = f"C{i % 10}"
        val, x = doc["val_acc_history"], doc["check_epochs"]
        name = label
        if val:
            best = int(np.argmax(val))
            name = f"{label} (best {val[best]:.4f})"
            acc_ax.plot([x[best]], [val[best]], "*", markersize=12, color=color, zorder=3)
        acc_ax.plot(x, val, "-o", markersize=3, color=color, label=name)
        loss = doc["loss_history"]
        loss_ax.plot(doc["loss_epochs"], running_mean(loss, smoothing_window(doc)), "-", color=color, label=label)
        all_losses.extend(loss)
    acc_ax.set_title("Validation accuracy")
    acc_ax.set_xlabel("Epoch")
    acc_ax.set_ylabel("Accuracy")
    acc_ax.grid(alpha=0.3)
    acc_ax.legend(loc="lower right")
    loss_ax.set_title("Training loss (running mean; colours as on the left)")
    loss_ax.set_xlabel("Epoch")
    if wants_log_scale(all_losses):
        _log_y(loss_ax)
        loss_ax.set_ylabel("Loss (log scale)")
    else:
        loss_ax.set_ylabel("Loss")
    loss_ax.grid(alpha=0.3)
    return fig
