"""The ``xpdl`` command-line tool (also ``python -m xpdl``): ``train``, ``evaluate``, ``info``.

``xpdl train`` with no arguments trains ``{affine - batch norm - relu - dropout} x 2
- affine - softmax`` on the embedded 8x8 digits dataset and writes a run folder
(:mod:`xpdl.history`); ``xpdl train --resume RUN`` continues one exactly;
``xpdl evaluate RUN`` reports test accuracy and the confusion matrix on any
backend; ``xpdl info`` says which backends work here and why the others do not.

Exit codes: 0 success, 1 training diverged (NaN or infinite loss), 2 bad
arguments or user errors (missing dataset, unreadable checkpoint, unavailable
backend), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from xpdl import distributed
from xpdl.backend import Backend, BackendUnavailable, available_backends, describe_paths, get_backend
from xpdl.checkpoint import CheckpointError, build_model, load_checkpoint, remove_stale_temporaries, restore_trainer
from xpdl.datasets import DATASETS, DatasetError, apply_preprocessing, load_dataset, load_raw
from xpdl.fc_net import FullyConnectedNet
from xpdl.history import BEST_FILE, CHECKPOINT_FILE, RunRecorder
from xpdl.progress import Progress, choose_mode
from xpdl.trainer import Trainer
from xpdl.updater import UPDATE_RULES

#: Settings of a run, with the defaults of ``xpdl train``.
DEFAULTS: dict[str, Any] = {
    "data": "digits",
    "data_dir": "data",
    "download": False,
    "hidden_dims": [256, 256],
    "batchnorm": True,
    "dropout": 0.8,
    "weight_scale": 0.05,
    "reg": 0.0,
    "update_rule": "adam",
    "lr": 3e-3,
    "lr_decay": 0.95,
    "epochs": 20,
    "batch_size": 64,
    "backend": "auto",
    "dtype": "float32",
    "seed": 0,
    "checkpoint_every": None,
    "local_batchnorm": False,
}

#: Settings ``--resume`` may change; the others define the run and stay as saved.
RESUMABLE = ("epochs", "backend", "data_dir", "download", "checkpoint_every")


class UsageError(Exception):
    """A mistake in how the tool was called; printed without a traceback, exit code 2."""


# ---------------------------------------------------------------- argument types
def _int_at_least(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An int >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    """An int >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite float >= 0."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def keep_probability(text: str) -> float:
    """Dropout keep probability: 0 (dropout off) or a number in (0, 1]."""
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a keep probability in (0, 1], or 0 for no dropout, got {text!r}")
    return value


def hidden_dims(text: str) -> list[int]:
    """Comma-separated positive layer widths, e.g. ``256,256``; ``""`` or ``none``: no hidden layer."""
    if text.strip().lower() in ("", "none"):
        return []
    try:
        dims = [int(part) for part in text.split(",")]
    except ValueError:
        dims = [0]
    if any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 256,256, got {text!r}")
    return dims


def backend_name(text: str) -> str:
    """``auto``, ``numpy``, ``cupy``, ``cupy:N`` or ``array_api_strict``."""
    name = text.strip().lower()
    if name in ("auto", "numpy", "cupy", "array_api_strict"):
        return name
    if name.startswith("cupy:") and name[5:].isdigit():
        return name
    raise argparse.ArgumentTypeError(f"expected auto, numpy, cupy, cupy:N or array_api_strict, got {text!r}")


# ---------------------------------------------------------------- the parser
def build_parser() -> argparse.ArgumentParser:
    """The ``xpdl`` argument parser with its three subcommands."""
    parser = argparse.ArgumentParser(
        prog="xpdl", description="Train, evaluate and inspect fully-connected nets (also: python -m xpdl).",
        epilog="Run 'xpdl COMMAND --help' for a command's options. Exit codes: 0 ok, 1 training diverged, "
               "2 bad arguments or missing data, 130 interrupted.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,info}")
    _add_train(sub.add_parser("train", help="train a fully-connected net and write a run folder",
                              description="Train a fully-connected net; options left out keep the defaults "
                                          "shown (or, with --resume, the run's saved settings)."))
    _add_evaluate(sub.add_parser("evaluate", help="test accuracy and confusion matrix of a run or checkpoint"))
    sub.add_parser("info", help="backends that work here (and why others do not), devices, library versions")
    return parser


def _add_train(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    arch = p.add_argument_group("data and net")
    arch.add_argument("--data", choices=DATASETS, help=f"dataset (default {d['data']})")
    arch.add_argument("--data-dir", help=f"folder holding the datasets (default {d['data_dir']})")
    arch.add_argument("--download", action="store_true", default=None, help="download the dataset if missing")
    arch.add_argument("--hidden-dims", type=hidden_dims, metavar="W1,W2,...",
                      help=f"hidden layer widths (default {','.join(map(str, d['hidden_dims']))})")
    arch.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=None,
                      help="batch norm after every hidden affine layer (default on)")
    arch.add_argument("--dropout", type=keep_probability, metavar="P",
                      help=f"dropout keep probability; 0 turns dropout off (default {d['dropout']})")
    arch.add_argument("--weight-scale", type=positive_float, metavar="S",
                      help=f"std of the initial weights (default {d['weight_scale']})")
    arch.add_argument("--reg", type=nonnegative_float, metavar="R", help=f"L2 regularization (default {d['reg']})")
    arch.add_argument("--dtype", choices=("float32", "float64"), help=f"float type (default {d['dtype']})")
    opt = p.add_argument_group("optimization")
    opt.add_argument("--update-rule", choices=UPDATE_RULES, help=f"update rule (default {d['update_rule']})")
    opt.add_argument("--lr", type=positive_float, metavar="LR", help=f"learning rate (default {d['lr']})")
    opt.add_argument("--lr-decay", type=positive_float, metavar="F",
                     help=f"learning rate factor after each epoch (default {d['lr_decay']})")
    opt.add_argument("--epochs", type=positive_int, metavar="N",
                     help=f"epochs in total; with --resume, train on until N (default {d['epochs']})")
    opt.add_argument("--batch-size", type=positive_int, metavar="B", help=f"batch size (default {d['batch_size']})")
    opt.add_argument("--seed", type=nonnegative_int, metavar="S",
                     help=f"seeds the validation split, weights, dropout and shuffles (default {d['seed']})")
    run = p.add_argument_group("run")
    run.add_argument("--backend", type=backend_name, metavar="NAME",
                     help="auto, numpy, cupy, cupy:N or array_api_strict (default $XPDL_BACKEND or auto)")
    run.add_argument("--out", metavar="DIR", help="run folder to create (default runs/<timestamp>)")
    run.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN with its saved settings")
    run.add_argument("--checkpoint-every", type=positive_int, metavar="N",
                     help="save checkpoint.npz every N iterations (default: at every epoch end)")
    run.add_argument("--quiet", action="store_true", help="print only the final summary line")
    run.add_argument("--nproc", type=positive_int, metavar="N",
                     help="train data-parallel on N ranks on this machine (starts mpiexec; needs xpdl[mpi])")
    arch.add_argument("--local-batchnorm", action="store_true", default=None,
                      help="with several ranks, batch norm with each rank's own statistics (default: the batch's)")


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="RUN_OR_CHECKPOINT",
                   help="a run folder (uses its best.npz) or a .npz file (uses its current weights)")
    p.add_argument("--data", choices=DATASETS, help="dataset whose test split to use (default: the trained one)")
    p.add_argument("--data-dir", help="folder holding the datasets (default: the run's)")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    p.add_argument("--backend", type=backend_name, metavar="NAME",
                   help="auto, numpy, cupy, cupy:N or array_api_strict (default $XPDL_BACKEND or auto)")


# ---------------------------------------------------------------- settings
def new_settings(args: argparse.Namespace) -> dict[str, Any]:
    """A new run's settings: the defaults, overridden by the options given."""
    settings = {k: (v if (v := getattr(args, k, None)) is not None else default) for k, default in DEFAULTS.items()}
    if args.backend is None:
        settings["backend"] = os.environ.get("XPDL_BACKEND") or DEFAULTS["backend"]
    return settings


def resumed_settings(saved: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """A resumed run's settings: the saved ones, with the options ``--resume`` may change.

    Raises:
        UsageError: an option that defines the run was given with a different value.
    """
    settings = {**DEFAULTS, **saved}
    conflicts = []
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is None:
            continue
        if key in RESUMABLE:
            settings[key] = value
        elif value != settings[key]:
            conflicts.append(f"--{key.replace('_', '-')} (saved {settings[key]!r}, given {value!r})")
    if conflicts:
        raise UsageError(f"--resume continues a run with its saved settings; these cannot change: "
                         f"{', '.join(conflicts)}. Start a new run to change them.")
    if args.out is not None:
        raise UsageError("--out cannot be combined with --resume: a resumed run writes into its own folder")
    return settings


def trainer_options(settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :class:`Trainer` for a run's settings."""
    return {"update_rule": settings["update_rule"], "updater_config": {"learning_rate": settings["lr"]},
            "lr_decay": settings["lr_decay"], "batch_size": settings["batch_size"],
            "num_epochs": settings["epochs"], "seed": settings["seed"], "verbose": False,
            "comm": distributed.init(), "local_batchnorm": bool(settings["local_batchnorm"])}


def open_backend(name: str) -> Backend:
    """The backend called ``name``; :class:`UsageError` saying why when it cannot run here."""
    try:
        return get_backend(name)
    except (BackendUnavailable, ValueError) as exc:
        raise UsageError(f"--backend {name}: {exc}") from None


def load_data(settings: dict[str, Any]) -> dict[str, Any]:
    """The run's dataset, split and preprocessed with its seed and dtype."""
    return load_dataset(settings["data"], data_dir=settings["data_dir"], download=bool(settings["download"]),
                        seed=settings["seed"], dtype=settings["dtype"])


def preprocessing_meta(data: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint keeps to preprocess new data like the training data."""
    return {"dataset": data["name"], "scale": float(data["scale"]), "mean_image": data["mean_image"],
            "image_shape": list(data["image_shape"]), "classes": list(data["classes"])}


# ---------------------------------------------------------------- run folders
def new_run_folder(out: str | None) -> Path:
    """Create the run folder ``out`` (default ``runs/<timestamp>``); refuse one that holds a run."""
    if out is None:
        return _timestamped_folder(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    folder = Path(out)
    if (folder / CHECKPOINT_FILE).exists():
        raise UsageError(f"--out {out}: already holds a run ({CHECKPOINT_FILE}); continue it with "
                         f"--resume {out} or choose another folder")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _timestamped_folder(base: Path) -> Path:
    """Create ``base``, or ``base-2``, ``base-3``, ... if runs started in the same second took it."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise UsageError(f"{base}: could not create a new run folder; choose one with --out")


def resume_paths(run: str) -> tuple[Path, Path]:
    """The run folder and its ``checkpoint.npz`` for ``--resume RUN`` (a folder or that file)."""
    path = Path(run)
    folder = path.parent if path.is_file() else path
    ckpt = path if path.is_file() else path / CHECKPOINT_FILE
    if not folder.is_dir():
        raise UsageError(f"--resume {run}: no such run folder")
    if not ckpt.is_file():
        raise UsageError(f"--resume {run}: no {CHECKPOINT_FILE} in {folder} (the run saved no checkpoint yet)")
    return folder, ckpt


@dataclass
class Session:
    """Everything one ``xpdl train`` invocation works with."""

    folder: Path
    settings: dict[str, Any]
    data: dict[str, Any]
    backend: Backend
    trainer: Trainer
    recorder: RunRecorder
    resumed: bool


def start_session(args: argparse.Namespace) -> Session:
    """Set up a new run from the options."""
    settings = new_settings(args)
    backend = open_backend(distributed.rank_backend_name(settings["backend"], distributed.init()))
    data = load_data(settings)
    folder = distributed.on_root(distributed.init(), lambda: new_run_folder(args.out))
    net = FullyConnectedNet(input_dim=int(data["X_train"].shape[1]), hidden_dims=settings["hidden_dims"],
                            num_classes=int(data["num_classes"]), dropout=settings["dropout"],
                            use_batchnorm=settings["batchnorm"], reg=settings["reg"],
                            weight_scale=settings["weight_scale"], seed=settings["seed"],
                            dtype=settings["dtype"], backend=backend)
    trainer = Trainer(net, data, **trainer_options(settings))
    return _session(folder, settings, data, backend, trainer, resumed=False)


def resume_session(args: argparse.Namespace) -> Session:
    """Set up a run continued from its ``checkpoint.npz``."""
    folder, ckpt_path = resume_paths(args.resume)
    ckpt = load_checkpoint(ckpt_path)
    if ckpt["kind"] != "training":
        raise UsageError(f"--resume {args.resume}: {ckpt_path} is a model file, not a training checkpoint")
    settings = resumed_settings(ckpt["settings"], args)
    backend = open_backend(distributed.rank_backend_name(settings["backend"], distributed.init()))
    data = load_data(settings)
    saved_mean = ckpt["preprocessing"].get("mean_image")
    if saved_mean is not None and not np.array_equal(saved_mean, data["mean_image"]):
        print(f"xpdl: warning: the {settings['data']} training data differs from the run's "
              "(its mean image changed); the continuation will not match an uninterrupted run", file=sys.stderr)
    trainer = Trainer(build_model(ckpt, backend, seed=settings["seed"]), data, **trainer_options(settings))
    restore_trainer(ckpt, trainer)
    done = trainer.t / trainer.iterations_per_epoch
    if trainer.t > trainer.num_iterations:
        raise UsageError(f"--epochs {settings['epochs']}: the run has done {done:.4g} epochs already; "
                         "expected a total of at least that many")
    distributed.on_root(distributed.init(), lambda: remove_stale_temporaries(folder))
    return _session(folder, settings, data, backend, trainer, resumed=True)


def _session(folder: Path, settings: dict[str, Any], data: dict[str, Any], backend: Backend, trainer: Trainer,
             resumed: bool) -> Session:
    meta = {"settings": settings, "preprocessing": preprocessing_meta(data)}
    recorder = RunRecorder(folder, meta, backend.describe(), checkpoint_every=settings["checkpoint_every"])
    if distributed.init().rank != 0:  # rank 0 writes the run folder
        recorder.save = recorder.save_best = recorder.finish = lambda trainer: None
    return Session(folder, settings, data, backend, trainer, recorder, resumed)


# ---------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    """``xpdl train``: train (or resume) a run and print a summary."""
    if args.nproc is not None:
        from xpdl import launch

        return launch.run(args.nproc, args.argv[args.argv.index("train") + 1:])
    distributed.init(quiet_others=True)
    session = resume_session(args) if args.resume else start_session(args)
    trainer = session.trainer
    if session.resumed and trainer.t >= trainer.num_iterations:
        session.recorder.finish(trainer)  # in case the run was stopped while drawing its curves
        print(f"{session.folder}: the run is complete ({trainer.epoch} epochs); "
              f"pass --epochs N with N > {trainer.epoch} to train further")
        return 0
    if not args.quiet:
        print(header(session))
    t0 = trainer.t
    seconds = train_with_progress(session, Progress(choose_mode(args.quiet)))
    if seconds is None:
        return 130
    session.recorder.finish(trainer)
    print(summary(session, trainer.t - t0, seconds))
    return 0


def train_with_progress(session: Session, progress: Progress) -> float | None:
    """Train with the run folder's recorder and ``progress`` called after every iteration.

    Returns:
        Wall-clock seconds of :meth:`Trainer.train`, or None after Ctrl-C (with a note
        on how to resume).
    """
    trainer = session.trainer

    def on_iteration(tr: Trainer) -> None:
        session.recorder(tr)
        progress(tr)

    trainer.on_iteration = on_iteration
    session.recorder.start(trainer)
    start = time.perf_counter()
    try:
        trainer.train()
    except KeyboardInterrupt:
        progress.close()
        print(f"\ninterrupted at iteration {trainer.t}; continue from the last checkpoint with: "
              f"xpdl train --resume {session.folder}", file=sys.stderr)
        return None
    finally:
        progress.close()
    return time.perf_counter() - start


def describe_net(net: FullyConnectedNet) -> str:
    """E.g. ``64-256-256-10, batch norm, dropout keep 0.8, float32``."""
    parts = ["-".join(str(d) for d in [net.input_dim, *net.hidden_dims, net.num_classes])]
    if net.use_batchnorm:
        parts.append("batch norm")
    if net.use_dropout:
        parts.append(f"dropout keep {net.dropout:g}")
    if net.reg:
        parts.append(f"reg {net.reg:g}")
    parts.append(net.dtype)
    return ", ".join(parts)


def header(session: Session) -> str:
    """Two lines saying what is trained, on what, and where it is saved."""
    s, tr, data = session.settings, session.trainer, session.data
    n_train, n_val, n_test = (len(data[k]) for k in ("y_train", "y_val", "y_test"))
    verb = (f"resuming {session.folder} at epoch {tr.t / tr.iterations_per_epoch:.4g}"
            if session.resumed else f"run {session.folder}")
    return (f"{verb}: {s['data']} ({n_train} train / {n_val} val / {n_test} test) on {session.backend.describe()}\n"
            f"net {describe_net(tr.model)}; {s['update_rule']} lr {s['lr']:g} decay {s['lr_decay']:g}, "
            f"batch {s['batch_size']}, {s['epochs']} epochs x {tr.iterations_per_epoch} iterations")


def summary(session: Session, iterations: int, seconds: float) -> str:
    """The final line: best validation accuracy, test accuracy, wall time, samples per second, device."""
    tr, data = session.trainer, session.data
    test_acc = float(np.mean(tr.model.predict(data["X_test"]) == data["y_test"])) if len(data["y_test"]) else 0.0
    doc = session.recorder.history(tr)
    rate = iterations * tr.batch_size / seconds if seconds > 0 else 0.0
    return (f"best val acc {tr.best_val_acc:.4f} (epoch {doc['best_epoch']:.3g}), test acc {test_acc:.4f}; "
            f"{iterations} iterations in {seconds:.1f} s ({rate:,.0f} samples/s) on {session.backend.describe()}; "
            f"saved in {session.folder}/")


# ---------------------------------------------------------------- evaluate
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
    if pre.get("mean_image") is None or pre.get("scale") is None:
        raise UsageError(f"{ckpt['path']}: holds no preprocessing statistics (mean image, scale)")
    name = args.data or pre.get("dataset")
    data_dir = args.data_dir or ckpt["settings"].get("data_dir") or DEFAULTS["data_dir"]
    raw = load_raw(name, data_dir=data_dir, download=args.download)
    X = apply_preprocessing(raw["X_test"], pre["mean_image"], ckpt["config"]["dtype"], scale=pre["scale"])
    if X.shape[1] != ckpt["config"]["input_dim"]:
        raise UsageError(f"--data {name}: has {X.shape[1]} features per sample, the model expects "
                         f"{ckpt['config']['input_dim']}")
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
    ckpt = load_checkpoint(path)
    backend = open_backend(args.backend or os.environ.get("XPDL_BACKEND") or "auto")
    net = build_model(ckpt, backend)
    X, y, name, classes = test_split(ckpt, args)
    if int(y.max(initial=0)) >= net.num_classes:
        raise UsageError(f"--data {name}: has labels up to {int(y.max())}, the model has {net.num_classes} classes")
    pred = net.predict(X)
    correct = int(np.sum(pred == y))
    acc = correct / len(y) if len(y) else 0.0
    print(f"{path}: net {describe_net(net)}, trained on {ckpt['preprocessing'].get('dataset')}; "
          f"on {backend.describe()}")
    print(f"test accuracy on {name}: {acc:.4f} ({correct} / {len(y)})")
    print("confusion matrix (rows: true class, columns: predicted class):")
    print(format_confusion(confusion_matrix(y, pred, net.num_classes), classes[:net.num_classes]))
    return 0


# ---------------------------------------------------------------- info
LIBRARIES = ("numpy", "array-api-compat", "array-api-strict", "numba", "scikit-learn", "tqdm", "matplotlib")
CUPY_DISTRIBUTIONS = ("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x")


def library_versions() -> dict[str, str]:
    """Installed version of each library xpdl uses (``"not installed"`` otherwise)."""
    out = {}
    for dist in LIBRARIES + CUPY_DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if dist not in CUPY_DISTRIBUTIONS:
                out[dist] = "not installed"
    if not any(d in out for d in CUPY_DISTRIBUTIONS):
        out["cupy"] = "not installed"
    return out


def host_memory_gib() -> float | None:
    """Physical memory of this machine in GiB, where the OS says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (AttributeError, ValueError, OSError):
        return None


def gpu_lines() -> list[str]:
    """One line per CUDA device (name, memory total/free, compute capability) plus CUDA versions."""
    import cupy

    rt = cupy.cuda.runtime
    lines = [f"  CUDA runtime {rt.runtimeGetVersion()}, driver {rt.driverGetVersion()}"]
    for i in range(rt.getDeviceCount()):
        props = rt.getDeviceProperties(i)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        with cupy.cuda.Device(i):
            free, total = rt.memGetInfo()
        lines.append(f"  cupy:{i}  {name}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free), "
                     f"compute capability {props['major']}.{props['minor']}")
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    """``xpdl info``: backends, devices, library versions."""
    from xpdl import __version__
    from xpdl.backend import cpu_name

    print(f"xpdl {__version__}, Python {platform.python_version()} on {platform.platform()}")
    status = available_backends()
    print("backends:")
    for name, why in status.items():
        print(f"  {name:<17} {'works' if not why else 'unavailable: ' + why}")
    print(f"  {'auto':<17} picks {'cupy:0' if not status.get('cupy') else 'numpy'}")
    mem = host_memory_gib()
    print("devices:")
    print(f"  cpu     {cpu_name()}, {os.cpu_count()} cores" + (f", {mem:.1f} GiB" if mem else ""))
    if not status.get("cupy"):
        print("\n".join(gpu_lines()))
    print(f"training steps: {describe_paths()}")
    versions = library_versions()
    print("libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return 0


# ---------------------------------------------------------------- main
COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "info": cmd_info}


def main(argv: list[str] | None = None) -> int:
    """Run the tool with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, DatasetError, CheckpointError) as exc:
        print(f"xpdl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"xpdl {args.command}: training diverged: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nxpdl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
