"""``xpdl evaluate``: test accuracy and confusion matrix of a run folder or checkpoint, on any backend."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

from xpdl.data import DATASETS, apply_preprocessing
from xpdl.runs import build_model, load_checkpoint
from xpdl.runs.folder import BEST_FILE, CHECKPOINT_FILE
from xpdl.training.options import CHECKPOINT_SPEC, DEFAULTS, UsageError, backend_option
from xpdl.training.run import describe_net, open_backend, read_raw


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``xpdl evaluate``."""
    p = subparsers.add_parser("evaluate", help="test accuracy and confusion matrix of a run or checkpoint")
    p.add_argument(
        "target",
        metavar="RUN_OR_CHECKPOINT",
        help="a run folder (uses its best.npz) or a .npz file (uses its current weights)",
    )
    p.add_argument("--data", choices=DATASETS, help="dataset whose test split to use (default: the trained one)")
    p.add_argument("--data-dir", help="folder holding the datasets (default: the run's)")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    p.add_argument(
        "--backend",
        type=backend_option,
        metavar="NAME",
        help="auto, numpy, cupy, cupy:N or array_api_strict (default $XPDL_BACKEND or auto)",
    )
    p.add_argument(
        "--plot",
        action="store_true",
        help="also draw the confusion matrix into confusion.png in the checkpoint's folder",
    )
    p.add_argument("--out", metavar="DIR", help="draw confusion.png into DIR instead (implies --plot)")
    return p


def model_file(target: str) -> Path:
    """The ``.npz`` to evaluate: a run folder's ``best.npz`` (else its checkpoint), or the file itself."""
    path = Path(target)
    if path.is_dir():
        for name in (BEST_FILE, CHECKPOINT_FILE):
            if (path / name).is_file():
                return path / name
        raise UsageError(f"{target}: a folder without {BEST_FILE} or {CHECKPOINT_FILE} (not a run folder?)")
    if not path.exists():
        raise UsageError(f"{target}: no such run folder or checkpoint file")
    return path


def test_split(ckpt: dict[str, Any], args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str, list[str]]:
    """The test split preprocessed with the checkpoint's mean image and scale: X (N, D), y (N,), name, classes."""
    pre = ckpt["preprocessing"]
    if pre.get("mean_image") is None or pre.get("scale") is None or pre.get("dataset") is None:
        raise UsageError(f"{ckpt['path']}: holds no preprocessing statistics (dataset, mean image, scale)")
    name = args.data or pre["dataset"]
    data_dir = args.data_dir or ckpt["settings"].get("data_dir") or DEFAULTS["data_dir"]
    raw = read_raw(name, Path(data_dir), args.download)
    features = math.prod(raw["X_test"].shape[1:])
    expected = ckpt["config"]["input_dim"]
    if features != (math.prod(expected) if isinstance(expected, list) else expected):  # a conv net's is (C, H, W)
        raise UsageError(
            f"--data {name}: has {features} features per sample, the model expects "
            f"{ckpt['config']['input_dim']} (it was trained on {pre['dataset']})"
        )
    X = apply_preprocessing(raw["X_test"], pre["mean_image"], ckpt["config"]["dtype"], scale=pre["scale"])
    return X, raw["y_test"], name, list(raw["classes"])


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (C, C): row = true class, column = predicted class."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    return counts


def format_confusion(counts: np.ndarray, classes: list[str]) -> str:
    """The confusion matrix as a text table with class labels."""
    labels = [c if c == str(i) else f"{i} {c}" for i, c in enumerate(classes)]
    lw = max(len(x) for x in labels + ["true \\ pred"])
    cw = max(len(str(int(counts.max()))), len(str(len(classes) - 1))) + 1
    lines = ["true \\ pred".ljust(lw) + "".join(f"{j:>{cw}}" for j in range(len(classes)))]
    for label, row in zip(labels, counts):
        lines.append(label.ljust(lw) + "".join(f"{int(v):>{cw}}" for v in row))
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``xpdl evaluate``: test accuracy and confusion matrix of a saved model."""
    path = model_file(args.target)
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    ckpt = load_checkpoint(path, CHECKPOINT_SPEC)
    backend = open_backend(args.backend)
    net = build_model(ckpt, backend)
    X, y, name, classes = test_split(ckpt, args)
    if int(y.max(initial=0)) >= net.num_classes:
        raise UsageError(f"--data {name}: has labels up to {int(y.max())}, the model has {net.num_classes} classes")
    pred = net.predict(X)
    correct = int(np.sum(pred == y))
    acc = correct / len(y) if len(y) else 0.0
    print(
        f"{path}: net {describe_net(net)}, trained on {ckpt['preprocessing'].get('dataset')}; on {backend.describe()}"
    )
    print(f"test accuracy on {name}: {acc:.4f} ({correct} / {len(y)})")
    print("confusion matrix (rows: true class, columns: predicted class):")
    print(format_confusion(confusion_matrix(y, pred, net.num_classes), classes[: net.num_classes]))
    if args.plot or args.out:
        from xpdl.plots import write_confusion

        drawn = write_confusion(args.out or path.parent, y, pred, classes[: net.num_classes], f"{name} test split")
        print(f"confusion matrix drawn into {drawn}")
    return 0
