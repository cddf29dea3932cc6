"""``xpdl train``: the options of a :class:`xpdl.training.TrainingRun`, parsed and run (or N ranks of it)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from xpdl.trainer import Trainer
from xpdl.training.options import TRAIN_DESCRIPTION, add_train_options, train_parser
from xpdl.training.run import TrainingRun, run_training
from xpdl.training.run import train as run_and_report


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``xpdl train``."""
    p = subparsers.add_parser(
        "train", help="train a fully-connected net and write a run folder", description=TRAIN_DESCRIPTION
    )
    add_train_options(p)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    """``xpdl train``: train (or resume) a run and print a summary; the run folder is locked meanwhile.

    ``--nproc N`` starts N ranks of this command under ``mpiexec`` (:mod:`xpdl.parallel.launch`) instead.
    """
    if args.nproc is not None:
        from xpdl.parallel import launch

        return launch.run(args.nproc, args.argv)
    return run_training(TrainingRun.from_namespace(args))


def train_main(argv: list[str], epoch_callback: Callable[[Trainer], None] | None = None) -> int:
    """``xpdl train`` in-process: parse ``argv`` (the options, without the word ``train``), train, return the exit code.

    Option errors return 2 (argparse's one-line message on stderr); ``--help`` returns 0.
    See :func:`xpdl.training.train` for ``epoch_callback``.
    """
    try:
        args = train_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    return run_and_report(TrainingRun.from_namespace(args), epoch_callback)
