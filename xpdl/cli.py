"""The ``xpdl`` command-line tool (also ``python -m xpdl``): ``train``, ``evaluate``, ``info``, ``tune``.

``xpdl train`` with no arguments trains ``{affine - batch norm - relu - dropout} x 2
- affine - softmax`` on the embedded 8x8 digits dataset and writes a run folder
(:mod:`xpdl.history`); ``xpdl train --resume RUN`` continues one exactly;
``xpdl evaluate RUN`` reports test accuracy and the confusion matrix on any
backend; ``xpdl info`` says which backends work here and why the others do not.

Exit codes: 0 success, 1 training diverged (NaN or infinite loss), 2 a user
error (bad option, missing dataset, unreadable checkpoint, unavailable backend, a
run folder that cannot be created, locked or written), 130 interrupted. Every
error is one line on stderr, without a traceback.

:func:`train_main` runs ``xpdl train`` in-process (``xpdl tune`` runs its trials
through it).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from xpdl import distributed, schema, tune
from xpdl.backend import (
    ENV_VARIABLE,
    Backend,
    BackendUnavailable,
    available_backends,
    default_backend_name,
    describe_paths,
    get_backend,
    parse_backend_name,
)
from xpdl.checkpoint import CheckpointError
from xpdl.datasets import DATASETS, DatasetError, apply_preprocessing, default_num_val, load_raw, prepare
from xpdl.fc_net import FullyConnectedNet
from xpdl.history import RunRecorder
from xpdl.net_checkpoint import build_model, load_checkpoint, restore_trainer, spec_with_settings
from xpdl.progress import Progress, choose_mode
from xpdl.run_folder import BEST_FILE, CHECKPOINT_FILE, RunFolder, RunFolderError, describe_os_error
from xpdl.trainer import Trainer
from xpdl.updater import UPDATE_RULES

#: Settings of a run, with the defaults of ``xpdl train``.
DEFAULTS: dict[str, Any] = {
    "data": "digits",
    "data_dir": "data",
    "download": False,
    "hidden_dims": [256, 256],
    "normalization": "batchnorm",
    "dropout": 0.8,
    "weight_scale": 0.05,
    "reg": 0.0,
    "update_rule": "adam",
    "lr": 3e-3,
    "weight_decay": None,
    "lr_decay": 0.95,
    "epochs": 20,
    "batch_size": 64,
    "backend": "auto",
    "dtype": "float32",
    "seed": 0,
    "split_seed": None,
    "checkpoint_every": None,
    "num_val": None,
    "local_batchnorm": False,
}

#: Values of --normalization (``none``: no normalization layer).
NORMALIZATION_CHOICES = ("none", "batchnorm", "layernorm")

#: Seeds accepted by --seed: the Philox key of the net's generator is a 128-bit integer.
SEED_LIMIT = 2**128

#: The schema of the ``settings`` a run saves in its checkpoints (checked when one is read).
SETTINGS_SCHEMA = schema.Obj(
    {
        "data": schema.Str(choices=DATASETS),
        "data_dir": schema.Str(max_len=4096),
        "download": schema.Bool(),
        "hidden_dims": schema.ListOf(schema.Int(min=1), max_len=1000),
        # "batchnorm": runs saved before "normalization" existed (see migrate_settings)
        "normalization": schema.Str(choices=NORMALIZATION_CHOICES),
        "batchnorm": schema.Bool(),
        "weight_decay": schema.Nullable(schema.Number(ge=0)),
        "dropout": schema.Number(ge=0, le=1),
        "weight_scale": schema.Number(gt=0),
        "reg": schema.Number(ge=0),
        "update_rule": schema.Str(choices=UPDATE_RULES),
        "lr": schema.Number(gt=0),
        "lr_decay": schema.Number(gt=0),
        "epochs": schema.Int(min=1),
        "batch_size": schema.Int(min=1),
        "backend": schema.Check(schema.Str(max_len=40), lambda name: _backend_problem(name)),
        "dtype": schema.Str(choices=("float32", "float64")),
        "seed": schema.Int(min=0, max=SEED_LIMIT - 1),
        "checkpoint_every": schema.Nullable(schema.Int(min=1)),
        "num_val": schema.Nullable(schema.Int(min=1)),
        "local_batchnorm": schema.Bool(),
        "split_seed": schema.Nullable(schema.Int(min=0, max=SEED_LIMIT - 1)),
    }
)

#: Settings ``--resume`` may change; the others define the run and stay as saved.
RESUMABLE = ("epochs", "backend", "data_dir", "download", "checkpoint_every")


class UsageError(Exception):
    """A mistake in how the tool was called; printed without a traceback, exit code 2."""


def _backend_problem(name: str) -> str:
    try:
        parse_backend_name(name)
    except ValueError:
        return "a backend name (auto, numpy, cupy, cupy:N, array_api_strict)"
    return ""


#: How run files are checked: the net's spec with this tool's settings schema.
CHECKPOINT_SPEC = spec_with_settings(SETTINGS_SCHEMA)


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


def seed(text: str) -> int:
    """An int in ``[0, 2**128)`` (the net generator's key)."""
    value = _int_at_least(text, 0, "an integer in [0, 2**128 - 1]")
    if value >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**128 - 1], got {text!r}")
    return value


def backend_option(text: str) -> str:
    """A backend name checked by :func:`xpdl.backend.parse_backend_name`."""
    try:
        return parse_backend_name(text, source="--backend")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--backend: ")) from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``xpdl train: error: argument --seed: expected ..., got '-1'``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------- the parser
def build_parser() -> argparse.ArgumentParser:
    """The ``xpdl`` argument parser with its three subcommands."""
    parser = ArgumentParser(
        prog="xpdl",
        description="Train, evaluate and inspect fully-connected nets (also: python -m xpdl).",
        epilog="Run 'xpdl COMMAND --help' for a command's options. Exit codes: 0 ok, 1 training diverged, "
        "2 bad arguments or missing data, 130 interrupted.",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{train,evaluate,info}", parser_class=ArgumentParser
    )
    _add_train(
        sub.add_parser(
            "train", help="train a fully-connected net and write a run folder", description=TRAIN_DESCRIPTION
        )
    )
    _add_evaluate(sub.add_parser("evaluate", help="test accuracy and confusion matrix of a run or checkpoint"))
    sub.add_parser("info", help="backends that work here (and why others do not), devices, library versions")
    tune.add_parser(sub)
    return parser


TRAIN_DESCRIPTION = (
    "Train a fully-connected net; options left out keep the defaults shown (or, with --resume, "
    "the run's saved settings)."
)


def build_train_parser() -> argparse.ArgumentParser:
    """The parser of ``xpdl train``'s options alone (for :func:`train_main`)."""
    parser = ArgumentParser(prog="xpdl train", description=TRAIN_DESCRIPTION)
    _add_train(parser)
    return parser


def _add_train(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    arch = p.add_argument_group("data and net")
    arch.add_argument("--data", choices=DATASETS, help=f"dataset (default {d['data']})")
    arch.add_argument("--data-dir", help=f"folder holding the datasets (default {d['data_dir']})")
    arch.add_argument("--download", action="store_true", default=None, help="download the dataset if missing")
    arch.add_argument(
        "--num-val",
        type=positive_int,
        metavar="N",
        help="training images held out for validation (default: the dataset's usual split, "
        "at most a quarter of the training images)",
    )
    arch.add_argument(
        "--hidden-dims",
        type=hidden_dims,
        metavar="W1,W2,...",
        help=f"hidden layer widths (default {','.join(map(str, d['hidden_dims']))})",
    )
    arch.add_argument(
        "--normalization",
        choices=NORMALIZATION_CHOICES,
        help=f"normalization after every hidden affine layer (default {d['normalization']})",
    )
    arch.add_argument(
        "--batchnorm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the same as --normalization batchnorm / none",
    )
    arch.add_argument(
        "--dropout",
        type=keep_probability,
        metavar="P",
        help=f"dropout keep probability; 0 turns dropout off (default {d['dropout']})",
    )
    arch.add_argument(
        "--weight-scale",
        type=positive_float,
        metavar="S",
        help=f"std of the initial weights (default {d['weight_scale']})",
    )
    arch.add_argument("--reg", type=nonnegative_float, metavar="R", help=f"L2 regularization (default {d['reg']})")
    arch.add_argument("--dtype", choices=("float32", "float64"), help=f"float type (default {d['dtype']})")
    opt = p.add_argument_group("optimization")
    opt.add_argument("--update-rule", choices=UPDATE_RULES, help=f"update rule (default {d['update_rule']})")
    opt.add_argument("--lr", type=positive_float, metavar="LR", help=f"learning rate (default {d['lr']})")
    opt.add_argument(
        "--weight-decay",
        type=nonnegative_float,
        metavar="WD",
        help="decoupled weight decay of --update-rule adamw (default 0.01)",
    )
    opt.add_argument(
        "--lr-decay",
        type=positive_float,
        metavar="F",
        help=f"learning rate factor after each epoch (default {d['lr_decay']})",
    )
    opt.add_argument(
        "--epochs",
        type=positive_int,
        metavar="N",
        help=f"epochs in total; with --resume, train on until N (default {d['epochs']})",
    )
    opt.add_argument("--batch-size", type=positive_int, metavar="B", help=f"batch size (default {d['batch_size']})")
    opt.add_argument(
        "--seed",
        type=seed,
        metavar="S",
        help=f"seeds the validation split, weights, dropout and shuffles (default {d['seed']})",
    )
    opt.add_argument(
        "--split-seed",
        type=seed,
        metavar="S",
        help="seeds the validation split alone (default: --seed); xpdl tune fixes it for all trials",
    )
    run = p.add_argument_group("run")
    run.add_argument(
        "--backend",
        type=backend_option,
        metavar="NAME",
        help="auto, numpy, cupy, cupy:N or array_api_strict (default $XPDL_BACKEND or auto)",
    )
    run.add_argument("--out", metavar="DIR", help="run folder to create (default runs/<timestamp>)")
    run.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN with its saved settings")
    run.add_argument(
        "--checkpoint-every",
        type=positive_int,
        metavar="N",
        help="save checkpoint.npz every N iterations (default: at every epoch end)",
    )
    run.add_argument("--quiet", action="store_true", help="print only the final summary line")
    run.add_argument(
        "--nproc",
        type=positive_int,
        metavar="N",
        help="train data-parallel on N ranks on this machine (starts mpiexec; needs xpdl[mpi])",
    )
    arch.add_argument(
        "--local-batchnorm",
        action="store_true",
        default=None,
        help="with several ranks, batch norm with each rank's own statistics (default: the batch's)",
    )


def _add_evaluate(p: argparse.ArgumentParser) -> None:
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


# ---------------------------------------------------------------- settings
def new_settings(args: argparse.Namespace) -> dict[str, Any]:
    """A new run's settings: the defaults, overridden by the options given.

    The backend is ``--backend``, else ``XPDL_BACKEND``, else ``auto``.
    """
    fold_batchnorm_option(args)
    settings = {k: (v if (v := getattr(args, k, None)) is not None else default) for k, default in DEFAULTS.items()}
    if args.backend is None:
        settings["backend"] = env_backend_name()
    if settings["weight_decay"] is not None and settings["update_rule"] != "adamw":
        raise UsageError(
            f"--weight-decay: only --update-rule adamw decays weights, got --update-rule "
            f"{settings['update_rule']} (use --reg for an L2 penalty)"
        )
    return settings


def fold_batchnorm_option(args: argparse.Namespace) -> None:
    """``--batchnorm`` / ``--no-batchnorm`` as ``--normalization batchnorm`` / ``none``; a contradiction is refused."""
    flag = getattr(args, "batchnorm", None)
    if flag is None:
        return
    implied = "batchnorm" if flag else "none"
    if getattr(args, "normalization", None) not in (None, implied):
        raise UsageError(f"--{'' if flag else 'no-'}batchnorm contradicts --normalization {args.normalization}")
    args.normalization = implied


def _normalization(settings: dict[str, Any]) -> str | None:
    """The ``normalization`` argument of :class:`FullyConnectedNet` for a run's settings."""
    return None if settings["normalization"] == "none" else settings["normalization"]


def migrate_settings(saved: dict[str, Any]) -> dict[str, Any]:
    """Settings saved before ``normalization`` existed: ``batchnorm: true/false`` becomes it."""
    saved = dict(saved)
    if "batchnorm" in saved:
        flag = saved.pop("batchnorm")
        saved.setdefault("normalization", "batchnorm" if flag else "none")
    return saved


def env_backend_name() -> str:
    """The backend ``XPDL_BACKEND`` names (``auto`` when unset); UsageError naming the variable otherwise."""
    try:
        return default_backend_name()
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def resumed_settings(saved: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """A resumed run's settings: the saved ones, with the options ``--resume`` may change.

    Raises:
        UsageError: an option that defines the run was given with a different value.
    """
    fold_batchnorm_option(args)
    settings = {**DEFAULTS, **migrate_settings(saved)}
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
        raise UsageError(
            f"--resume continues a run with its saved settings; these cannot change: "
            f"{', '.join(conflicts)}. Start a new run to change them."
        )
    if args.out is not None:
        raise UsageError("--out cannot be combined with --resume: a resumed run writes into its own folder")
    return settings


def trainer_options(settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :class:`Trainer` for a run's settings."""
    config = {"learning_rate": settings["lr"]}
    if settings.get("weight_decay") is not None:
        config["weight_decay"] = settings["weight_decay"]
    return {
        "update_rule": settings["update_rule"],
        "updater_config": config,
        "lr_decay": settings["lr_decay"],
        "batch_size": settings["batch_size"],
        "num_epochs": settings["epochs"],
        "seed": settings["seed"],
        "verbose": False,
        "comm": distributed.init(),
        "local_batchnorm": bool(settings["local_batchnorm"]),
    }


def open_backend(name: str | None, option: str = "--backend") -> Backend:
    """The backend called ``name`` (None: ``XPDL_BACKEND`` or ``auto``); UsageError saying why it cannot run here.

    The message names where the name came from: ``option`` or the ``XPDL_BACKEND`` variable.
    """
    source = f"{option} {name}" if name is not None else f"{ENV_VARIABLE}={os.environ.get(ENV_VARIABLE, '')}"
    if name is None:
        env_backend_name()  # a bad variable is reported as such
    try:
        return get_backend(name)
    except (BackendUnavailable, ValueError) as exc:
        text = str(exc)
        raise UsageError(text if text.startswith(ENV_VARIABLE) else f"{source}: {text}") from None


def auto_num_val(name: str, num_train: int) -> int:
    """Validation images for a dataset of ``num_train`` training images: its usual split, at most a quarter."""
    return max(1, min(default_num_val(name), num_train // 4))


def load_data(settings: dict[str, Any]) -> dict[str, Any]:
    """The run's dataset, split (``num_val``) and preprocessed with its seed and dtype.

    Raises:
        UsageError: ``--data-dir`` is a file or cannot be read or written, or the dataset
            has too few training images for the validation split.
    """
    name, data_dir = settings["data"], Path(settings["data_dir"])
    raw = read_raw(name, data_dir, bool(settings["download"]))
    n = len(raw["y_train"])
    if n < 2:
        raise UsageError(
            f"--data {name}: {data_dir} holds {n} training images; training needs at least 2 "
            "(some for training, one or more for validation)"
        )
    num_val = settings["num_val"] or auto_num_val(name, n)
    if num_val >= n:
        raise UsageError(
            f"--num-val {num_val}: expected fewer than the {n} training images of {name} (in {data_dir}), got {num_val}"
        )
    split_seed = settings["seed"] if settings.get("split_seed") is None else settings["split_seed"]
    return prepare(raw, num_val=num_val, seed=split_seed, dtype=settings["dtype"])


def read_raw(name: str, data_dir: Path, download: bool) -> dict[str, Any]:
    """:func:`load_raw`, with file-system problems of ``--data-dir`` as one-line UsageErrors."""
    if name != "digits" and data_dir.exists() and not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir}: exists and is not a folder")
    try:
        return load_raw(name, data_dir=data_dir, download=download)
    except OSError as exc:
        raise UsageError(
            f"--data-dir {data_dir}: cannot {'download into' if download else 'read'} it: {describe_os_error(exc)}"
        ) from None


def preprocessing_meta(data: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint keeps to preprocess new data like the training data."""
    return {
        "dataset": data["name"],
        "scale": float(data["scale"]),
        "mean_image": data["mean_image"],
        "image_shape": list(data["image_shape"]),
        "classes": list(data["classes"]),
    }


def build_trainer(settings: dict[str, Any], data: dict[str, Any], backend: Backend) -> Trainer:
    """The net and trainer of a new run; a setting they refuse is a UsageError."""
    try:
        net = FullyConnectedNet(
            input_dim=int(data["X_train"].shape[1]),
            hidden_dims=settings["hidden_dims"],
            num_classes=int(data["num_classes"]),
            dropout=settings["dropout"],
            normalization=_normalization(settings),
            reg=settings["reg"],
            weight_scale=settings["weight_scale"],
            seed=settings["seed"],
            dtype=settings["dtype"],
            backend=backend,
        )
        return Trainer(net, data, **trainer_options(settings))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"these settings cannot train: {exc}") from None


# ---------------------------------------------------------------- sessions
@dataclass
class Session:
    """Everything one ``xpdl train`` invocation works with."""

    run: RunFolder
    settings: dict[str, Any]
    data: dict[str, Any]
    backend: Backend
    trainer: Trainer
    recorder: RunRecorder
    resumed: bool

    @property
    def folder(self) -> Path:
        """The run folder."""
        return self.run.path


def start_session(args: argparse.Namespace) -> Session:
    """Set up a new run from the options; the run folder is taken last, once everything else worked."""
    settings = new_settings(args)
    comm = distributed.init()
    name = distributed.rank_backend_name(settings["backend"], comm) if comm.size > 1 else args.backend
    backend = open_backend(name)
    data = load_data(settings)
    trainer = build_trainer(settings, data, backend)
    try:
        run = _on_root_folder(comm, lambda: RunFolder.create(args.out))
    except RunFolderError as exc:
        raise UsageError(str(exc)) from None
    return _session(run, settings, data, backend, trainer, resumed=False)


def _on_root_folder(comm: distributed.Communicator, take: Callable[[], RunFolder]) -> RunFolder:
    """Rank 0 takes (and locks) the run folder; the other ranks get a view of it that writes nothing."""
    if comm.size == 1:
        return take()
    holder: list[RunFolder] = []
    path = distributed.on_root(comm, lambda: str(holder.append(take()) or holder[0].path))
    return holder[0] if holder else RunFolder.view(Path(path))


def resume_session(args: argparse.Namespace) -> Session:
    """Set up a run continued from its ``checkpoint.npz`` (the folder is locked first)."""
    comm = distributed.init()
    try:
        run = _on_root_folder(comm, lambda: RunFolder.resume(args.resume)[0])
        ckpt_path = RunFolder.checkpoint_of(args.resume)
    except RunFolderError as exc:
        raise UsageError(str(exc)) from None
    try:
        return _resume(run, ckpt_path, args)
    except BaseException:
        run.release()
        raise


def _resume(run: RunFolder, ckpt_path: Path, args: argparse.Namespace) -> Session:
    ckpt = load_checkpoint(ckpt_path, CHECKPOINT_SPEC)
    if ckpt["kind"] != "training":
        raise UsageError(f"--resume {args.resume}: {ckpt_path} is a model file, not a training checkpoint")
    settings = resumed_settings(ckpt["settings"], args)
    backend = open_backend(
        distributed.rank_backend_name(settings["backend"], distributed.init()),
        option="--backend" if args.backend else "saved backend",
    )
    data = load_data(settings)
    saved_mean = ckpt["preprocessing"].get("mean_image")
    if saved_mean is not None and not np.array_equal(saved_mean, data["mean_image"]):
        print(
            f"xpdl: warning: the {settings['data']} training data differs from the run's "
            "(its mean image changed); the continuation will not match an uninterrupted run",
            file=sys.stderr,
        )
    try:
        trainer = Trainer(build_model(ckpt, backend, seed=settings["seed"]), data, **trainer_options(settings))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--resume {args.resume}: the saved settings cannot train here: {exc}") from None
    restore_trainer(ckpt, trainer)
    done = trainer.t / trainer.iterations_per_epoch
    if trainer.t > trainer.num_iterations:
        raise UsageError(
            f"--epochs {settings['epochs']}: the run has done {done:.4g} epochs already; "
            "expected a total of at least that many"
        )
    return _session(run, settings, data, backend, trainer, resumed=True)


def _session(
    run: RunFolder, settings: dict[str, Any], data: dict[str, Any], backend: Backend, trainer: Trainer, resumed: bool
) -> Session:
    meta = {"settings": settings, "preprocessing": preprocessing_meta(data)}
    recorder = RunRecorder(run.path, meta, backend.describe(), checkpoint_every=settings["checkpoint_every"])
    if distributed.init().rank != 0:  # rank 0 writes the run folder
        recorder.save = recorder.save_best = recorder.finish = lambda trainer: None
    return Session(run, settings, data, backend, trainer, recorder, resumed)


# ---------------------------------------------------------------- train
class CallbackFailed(Exception):
    """Carries an exception raised by :func:`train_main`'s ``epoch_callback`` past the error handling."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def cmd_train(args: argparse.Namespace, epoch_callback: Callable[[Trainer], None] | None = None) -> int:
    """``xpdl train``: train (or resume) a run and print a summary; the run folder is locked meanwhile.

    ``--nproc N`` starts N ranks of this command under ``mpiexec`` (:mod:`xpdl.launch`) instead.
    """
    if args.nproc is not None:
        from xpdl import launch

        return launch.run(args.nproc, args.argv)
    comm = distributed.init(quiet_others=True)
    session = resume_session(args) if args.resume else start_session(args)
    with session.run:
        trainer = session.trainer
        if session.resumed and trainer.t >= trainer.num_iterations:
            session.recorder.finish(trainer)  # in case the run was stopped while drawing its curves
            print(
                f"{session.folder}: the run is complete ({plural(trainer.epoch, 'epoch')}); "
                f"pass --epochs N with N > {trainer.epoch} to train further"
            )
            return 0
        if not args.quiet:
            print(header(session))
        t0 = trainer.t
        seconds = train_with_progress(session, Progress(choose_mode(args.quiet)), epoch_callback)
        if seconds is None:
            return 130
        session.recorder.finish(trainer)
        if comm.rank == 0:
            from xpdl.plots import write_weights  # matplotlib loads only when a run ends

            write_weights(session.folder, trainer.model, session.data["image_shape"])
        print(summary(session, trainer.t - t0, seconds))
        return 0


def train_with_progress(
    session: Session, progress: Progress, epoch_callback: Callable[[Trainer], None] | None = None
) -> float | None:
    """Train with the run folder's recorder and ``progress`` called after every iteration.

    ``epoch_callback(trainer)`` runs after every epoch's accuracy check, once that
    epoch's files are written. NumPy's floating-point warnings are silenced: a
    diverging loss is reported once, by the Trainer.

    Returns:
        Wall-clock seconds of :meth:`Trainer.train`, or None after Ctrl-C.

    Raises:
        FloatingPointError: training diverged; ``history.json`` and ``curves.png`` are
            written up to the failure first.
        CallbackFailed: ``epoch_callback`` raised; the run folder is finalized first.
        RunFolderError: a run file could not be written; a new run that has no
            checkpoint yet is removed.
    """
    trainer = session.trainer

    def on_iteration(tr: Trainer) -> None:
        session.recorder(tr)
        progress(tr)
        if epoch_callback is not None and tr.t % tr.iterations_per_epoch == 0:
            try:
                epoch_callback(tr)
            except Exception as exc:
                raise CallbackFailed(exc) from exc

    trainer.on_iteration = on_iteration
    start = time.perf_counter()
    try:
        with np.errstate(all="ignore"):
            session.recorder.start(trainer)
            trainer.train()
    except KeyboardInterrupt:
        progress.close()
        _interrupted(session)
        return None
    except (FloatingPointError, CallbackFailed):
        progress.close()
        with np.errstate(all="ignore"):
            session.recorder.finish(trainer)
        raise
    except RunFolderError as exc:
        progress.close()
        raise UsageError(_write_failure(session, exc)) from None
    finally:
        progress.close()
    return time.perf_counter() - start


def _interrupted(session: Session) -> None:
    """After Ctrl-C: say how to continue, or remove a new run that saved no checkpoint yet."""
    t = session.trainer.t
    if session.run.holds_checkpoint():
        print(
            f"\ninterrupted at iteration {t}; continue from the last checkpoint with: "
            f"xpdl train --resume {session.folder}",
            file=sys.stderr,
        )
        return
    session.run.discard()
    print(
        f"\ninterrupted at iteration {t}, before the first checkpoint; nothing was kept ({session.folder} removed)"
        if session.run.created
        else f"\ninterrupted at iteration {t}, before the first checkpoint; nothing was kept",
        file=sys.stderr,
    )


def _write_failure(session: Session, exc: RunFolderError) -> str:
    """The message for a run file that could not be written; a new run without a checkpoint is removed."""
    if session.run.holds_checkpoint():
        return (
            f"{exc}; the last checkpoint is intact: continue with xpdl train --resume {session.folder} "
            "once the problem is fixed"
        )
    session.run.discard()
    return f"{exc}; nothing of the run was kept"


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def describe_net(net: FullyConnectedNet) -> str:
    """E.g. ``64-256-256-10, batch norm, dropout keep 0.8, float32``, from the net's actual config.

    Normalization and dropout act on hidden layers only, so a net without any has neither.
    """
    config = net.config()
    hidden = config["hidden_dims"]
    parts = ["-".join(str(d) for d in [config["input_dim"], *hidden, config["num_classes"]])]
    norm = config.get("normalization")
    if hidden and norm:
        parts.append({"batchnorm": "batch norm", "layernorm": "layer norm"}.get(norm, str(norm)))
    if hidden and config["dropout"]:
        parts.append(f"dropout keep {config['dropout']:g}")
    if config["reg"]:
        parts.append(f"reg {config['reg']:g}")
    parts.append(config["dtype"])
    return ", ".join(parts)


def batch_used(trainer: Trainer) -> int:
    """Samples per step: ``min(batch_size, training images)``."""
    return min(trainer.batch_size, int(trainer.X_train.shape[0]))


def header(session: Session) -> str:
    """Two lines saying what is trained, on what, and where it is saved."""
    s, tr, data = session.settings, session.trainer, session.data
    n_train, n_val, n_test = (len(data[k]) for k in ("y_train", "y_val", "y_test"))
    verb = (
        f"resuming {session.folder} at epoch {tr.t / tr.iterations_per_epoch:.4g}"
        if session.resumed
        else f"run {session.folder}"
    )
    batch = batch_used(tr)
    batch_text = (
        f"batch {batch}"
        if batch == tr.batch_size
        else f"batch {batch} (all {n_train} training images; --batch-size {tr.batch_size})"
    )
    return (
        f"{verb}: {s['data']} ({n_train} train / {n_val} val / {n_test} test) on {session.backend.describe()}\n"
        f"net {describe_net(tr.model)}; {s['update_rule']} lr {s['lr']:g} decay {s['lr_decay']:g}, "
        f"{batch_text}, {plural(s['epochs'], 'epoch')} x {plural(tr.iterations_per_epoch, 'iteration')}"
    )


def summary(session: Session, iterations: int, seconds: float) -> str:
    """The final line: best validation accuracy, test accuracy, wall time, samples per second, device."""
    tr, data = session.trainer, session.data
    test_acc = float(np.mean(tr.model.predict(data["X_test"]) == data["y_test"])) if len(data["y_test"]) else 0.0
    doc = session.recorder.history(tr)
    rate = iterations * batch_used(tr) / seconds if seconds > 0 else 0.0
    return (
        f"best val acc {tr.best_val_acc:.4f} (epoch {doc['best_epoch']:.3g}), test acc {test_acc:.4f}; "
        f"{plural(iterations, 'iteration')} in {seconds:.1f} s ({rate:,.0f} samples/s) on "
        f"{session.backend.describe()}; saved in {session.folder}/"
    )


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
    if pre.get("mean_image") is None or pre.get("scale") is None or pre.get("dataset") is None:
        raise UsageError(f"{ckpt['path']}: holds no preprocessing statistics (dataset, mean image, scale)")
    name = args.data or pre["dataset"]
    data_dir = args.data_dir or ckpt["settings"].get("data_dir") or DEFAULTS["data_dir"]
    raw = read_raw(name, Path(data_dir), args.download)
    features = math.prod(raw["X_test"].shape[1:])
    if features != ckpt["config"]["input_dim"]:
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


# ---------------------------------------------------------------- info
LIBRARIES = ("numpy", "array-api-compat", "array-api-strict", "numba", "tqdm", "matplotlib", "optuna", "mpi4py")
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
        lines.append(
            f"  cupy:{i}  {name}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free), "
            f"compute capability {props['major']}.{props['minor']}"
        )
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
    problem = _env_backend_line()
    mem = host_memory_gib()
    print("devices:")
    print(f"  cpu     {cpu_name()}, {os.cpu_count()} cores" + (f", {mem:.1f} GiB" if mem else ""))
    if not status.get("cupy"):
        print("\n".join(gpu_lines()))
    print(f"training steps: {describe_paths()}")
    versions = library_versions()
    print("libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return 2 if problem else 0


def _env_backend_line() -> str:
    """Print which backend ``XPDL_BACKEND`` selects; returns the problem (printed to stderr) when it names none."""
    text = os.environ.get(ENV_VARIABLE)
    try:
        name = default_backend_name()
    except ValueError as exc:
        print(f"xpdl info: error: {exc}", file=sys.stderr)
        return str(exc)
    where = f"{ENV_VARIABLE}={text}" if text and text.strip() else f"{ENV_VARIABLE} not set"
    print(f"  default           {name} ({where})")
    return ""


# ---------------------------------------------------------------- main
COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "info": cmd_info, "tune": tune.cmd_tune}


def main(argv: list[str] | None = None) -> int:
    """Run the tool with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    A bad option exits through argparse (SystemExit 2, one line on stderr).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "train":
        args.argv = argv[argv.index("train") + 1 :]  # the options a launcher passes on to its ranks
    return run_command(args.command, lambda: COMMANDS[args.command](args), quiet=getattr(args, "quiet", False))


def train_main(argv: list[str], epoch_callback: Callable[[Trainer], None] | None = None) -> int:
    """``xpdl train`` in-process: parse ``argv`` (the options, without the word ``train``), train, return the exit code.

    It writes the run folder exactly as ``xpdl train``. ``epoch_callback(trainer)``
    is called after every epoch's accuracy check (once that epoch's files are
    written); an exception it raises propagates to the caller after the run folder
    has been finalized (``history.json`` and ``curves.png`` written, the lock released).
    Option errors return 2 (argparse's one-line message on stderr); ``--help`` returns 0.
    """
    try:
        args = build_train_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = list(argv)
    try:
        return run_command("train", lambda: cmd_train(args, epoch_callback), quiet=args.quiet)
    except CallbackFailed as exc:
        raise exc.error from None


def run_command(command: str, run: Callable[[], int], quiet: bool = False) -> int:
    """Run one command; user errors become one line on stderr and exit code 2 (see the module docstring)."""
    try:
        with _quiet_backend_notes(quiet):
            return run()
    except (UsageError, DatasetError, CheckpointError, RunFolderError) as exc:
        print(f"xpdl {command}: error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"xpdl {command}: training diverged: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nxpdl {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # whatever read the output stopped reading (xpdl evaluate RUN | head): no traceback
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter's final flush must not fail again
        return 141


@contextlib.contextmanager
def _quiet_backend_notes(quiet: bool) -> Iterator[None]:
    """Under ``--quiet``, silence the backend's one-line note (``XPDL_QUIET=1``) for the command's duration."""
    if not quiet:
        yield
        return
    before = os.environ.get("XPDL_QUIET")
    os.environ["XPDL_QUIET"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("XPDL_QUIET", None)
        else:
            os.environ["XPDL_QUIET"] = before


if __name__ == "__main__":
    sys.exit(main())
