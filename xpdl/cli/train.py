"""``xpdl train``: the options of a :class:`xpdl.training.TrainingRun`, parsed and run (or N ranks of it)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
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

        check_before_launch(TrainingRun.from_namespace(args))
        return launch.run(args.nproc, args.argv)
    return run_training(TrainingRun.from_namespace(args))


def check_before_launch(run: TrainingRun) -> None:
    """What every rank would refuse, refused once before any rank starts (UsageError, one line).

    The settings (new or resumed), the backend and the dataset are checked here; the run
    folder itself is taken by rank 0.
    """
    from xpdl.runs import RunFolder, load_checkpoint
    from xpdl.training.options import CHECKPOINT_SPEC, UsageError
    from xpdl.training.run import check_backend_before_start, new_settings, read_raw, resumed_settings

    run = dataclasses.replace(run)  # the settings fold options into it
    if run.resume:
        path = RunFolder.checkpoint_of(run.resume)
        if not path.is_file():
            raise UsageError(f"--resume {run.resume}: no {path.name} there (not a run folder, or nothing saved yet)")
        ckpt = load_checkpoint(path, CHECKPOINT_SPEC)
        settings = resumed_settings(ckpt["settings"], run)
        option = "--backend" if run.backend else "saved backend"
    else:
        settings = new_settings(run)
        option = "--backend" if run.backend else None
    check_backend_before_start(settings["backend"] if option else None, option or "--backend")
    read_raw(settings["data"], Path(settings["data_dir"]), bool(settings["download"]))


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
