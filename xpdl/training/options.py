"""The options of a training run, declared once: ``xpdl train`` parses them, ``xpdl tune`` searches them.

:data:`DEFAULTS` holds each setting's default, :data:`SETTINGS_SCHEMA` checks the
settings a run saves (and a Python-built :class:`xpdl.training.TrainingRun`),
:func:`add_train_options` declares the options with their parsers and help, and
:func:`train_parser` is the parser of those options alone.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from xpdl.backends import parse_backend_name
from xpdl.data import DATASETS
from xpdl.runs import schema, spec_with_settings
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
    "model": "fc",
    "conv_dims": [32, 64],
    "filter_size": 3,
}

#: The nets ``--model`` names: a fully-connected net, :class:`xpdl.ConvNet`, cs231n's ThreeLayerConvNet.
MODEL_CHOICES = ("fc", "conv", "three-layer-conv")

#: Defaults that differ by ``--model`` (the others are :data:`DEFAULTS`'). The conv net's reach
#: 0.986 test accuracy on the shipped digits with seed 0 in about 10 s on two cores (seeds 0-3:
#: 0.978 to 0.986; the best-validation model of a 300-image validation split is what is tested).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "conv": {
        "hidden_dims": [256],
        "normalization": "batchnorm",
        "dropout": 0.5,
        "reg": 1e-3,
        "weight_scale": "he",
        "lr": 1e-3,
        "epochs": 20,
    },
    "three-layer-conv": {
        "hidden_dims": [100],
        "normalization": "none",
        "dropout": 0.0,
        "weight_scale": 1e-2,
        "conv_dims": [32],
        "filter_size": 7,
        "lr": 1e-3,
        "epochs": 10,
    },
}


#: Values of --normalization (``none``: no normalization layer; layernorm for fc nets, groupnorm for conv nets).
NORMALIZATION_CHOICES = ("none", "batchnorm", "layernorm", "groupnorm")


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
        "weight_scale": schema.Check(schema.AnyJSON(), lambda v: _weight_scale_problem(v)),
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
        "model": schema.Str(choices=MODEL_CHOICES),
        "conv_dims": schema.ListOf(schema.Int(min=1), min_len=1, max_len=100),
        "filter_size": schema.Int(min=1, max=99),
    }
)


#: Settings ``--resume`` may change; the others define the run and stay as saved.
RESUMABLE = ("epochs", "backend", "data_dir", "download", "checkpoint_every")


class UsageError(Exception):
    """A mistake in how the tool was called; printed without a traceback, exit code 2."""


def _weight_scale_problem(value: Any) -> str:
    if value == "he" or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    ):
        return ""
    return "a number > 0 or 'he'"


def _backend_problem(name: str) -> str:
    try:
        parse_backend_name(name)
    except ValueError:
        return "a backend name (auto, numpy, cupy, cupy:N, array_api_strict)"
    return ""


#: How run files are checked: the net's spec with these settings and the dataset names.
CHECKPOINT_SPEC = spec_with_settings(SETTINGS_SCHEMA, datasets=DATASETS)


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
    if not math.isfinite(value):
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


def weight_scale(text: str) -> float | str:
    """A finite float > 0, or ``he`` (He / Kaiming: ``sqrt(2 / fan_in)``)."""
    if text.strip().lower() == "he":
        return "he"
    return positive_float(text)


def conv_dims(text: str) -> list[int]:
    """Comma-separated positive filter counts of the conv blocks, e.g. ``32,64``."""
    dims = hidden_dims(text)
    if not dims:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 32,64, got {text!r}")
    return dims


def seed(text: str) -> int:
    """An int in ``[0, 2**128)`` (the net generator's key)."""
    value = _int_at_least(text, 0, "an integer in [0, 2**128 - 1]")
    if value >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**128 - 1], got {text!r}")
    return value


def backend_option(text: str) -> str:
    """A backend name checked by :func:`xpdl.backends.parse_backend_name`."""
    try:
        return parse_backend_name(text, source="--backend")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--backend: ")) from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``xpdl train: error: argument --seed: expected ..., got '-1'``.

    Abbreviated options are refused (``--epoch 2`` is not ``--epochs 2``), so a new option
    cannot change what an old command line means.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


TRAIN_DESCRIPTION = (
    "Train a fully-connected net; options left out keep the defaults shown (or, with --resume, "
    "the run's saved settings)."
)


def train_parser() -> argparse.ArgumentParser:
    """The parser of ``xpdl train``'s options alone (``prog`` ``xpdl train``)."""
    parser = ArgumentParser(prog="xpdl train", description=TRAIN_DESCRIPTION)
    add_train_options(parser)
    return parser


def add_train_options(p: argparse.ArgumentParser) -> None:
    """Declare the options of a training run on ``p`` (``xpdl train``'s parser; ``xpdl tune`` reuses them)."""
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
        "--model",
        choices=MODEL_CHOICES,
        help="fc: fully-connected; conv: {conv3x3 - [norm] - relu - 2x2 pool} per --conv-dims, then the "
        "--hidden-dims head (xpdl.ConvNet); three-layer-conv: cs231n's conv - relu - pool - affine - relu - affine "
        f"(default {d['model']})",
    )
    arch.add_argument(
        "--conv-dims",
        type=conv_dims,
        metavar="F1,F2,...",
        help=f"--model conv: filters of each conv block (default {','.join(map(str, d['conv_dims']))}); "
        "three-layer-conv: one number, its filters (default 32)",
    )
    arch.add_argument(
        "--filter-size",
        type=positive_int,
        metavar="K",
        help=f"conv nets: K x K filters, K odd (default {d['filter_size']}; three-layer-conv 7)",
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
        help="normalization after every hidden affine layer, or every conv layer of the conv nets "
        f"(default {d['normalization']})",
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
        type=weight_scale,
        metavar="S",
        help=f"std of the initial weights, or he: sqrt(2 / fan-in) (default {d['weight_scale']}; --model conv: he)",
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
