"""``xpdl tune``: the command line of the hyperparameter search (:mod:`xpdl.tune`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from xpdl.training.options import nonnegative_int
from xpdl.tune.driver import DEFAULT_TRIALS, INSTALL_HINT, TuneError, join, resume, start
from xpdl.tune.space import NOT_TUNABLE, SearchSpaceError


# ---------------------------------------------------------------- the parser
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``xpdl tune`` (after ``train``, whose options it takes as fixed values)."""
    p = subparsers.add_parser(
        "tune",
        help="hyperparameter search over xpdl train options (Optuna; parallel workers, many machines)",
        description="Search xpdl train options with Optuna. Options of xpdl train given here are fixed for "
        "every trial; --search NAME=LOW..HIGH[:log] or NAME=A/B/C searches one (NAME: the option "
        "without dashes). Each trial is an xpdl train run under DIR/trials/.",
    )
    s = p.add_argument_group("search")
    s.add_argument(
        "--search",
        action="append",
        metavar="NAME=SPEC",
        help="a searched option: NAME=LOW..HIGH, NAME=LOW..HIGH:log or NAME=A/B/C (repeatable)",
    )
    s.add_argument(
        "--trials",
        type=nonnegative_int,
        metavar="N",
        help=f"trials in total, finished or running (default {DEFAULT_TRIALS}; with --resume: the new total)",
    )
    s.add_argument(
        "--workers",
        type=nonnegative_int,
        metavar="W",
        help="worker processes on this machine (default: the cores, at most the trials left; "
        "0: only create or update the study)",
    )
    s.add_argument("--sampler", choices=("tpe", "random"), help="Optuna sampler (default tpe, with constant_liar)")
    s.add_argument("--pruner", choices=("median", "asha", "none"), help="stops poor trials early (default median)")
    s.add_argument(
        "--seed",
        type=nonnegative_int,
        metavar="S",
        help="trial N trains with seed S + N; also seeds the samplers (default 0)",
    )
    w = p.add_argument_group("study")
    w.add_argument(
        "--storage",
        metavar="URL",
        help="an SQLAlchemy URL (postgresql+psycopg2://user:pw@host/db) or a journal file (default DIR/journal.log)",
    )
    w.add_argument("--study", metavar="NAME", help="study name (default: the name of DIR)")
    w.add_argument("--out", metavar="DIR", help="folder for the study (default runs/tune-<timestamp>)")
    w.add_argument("--resume", metavar="DIR", help="continue the study of folder DIR")
    w.add_argument("--join", metavar="URL", help="work on the existing study --study NAME in storage URL")
    w.add_argument("--quiet", action="store_true", help="print only the final table")
    w.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    w.add_argument("--worker-seed", type=nonnegative_int, default=0, help=argparse.SUPPRESS)
    fixed = p.add_argument_group("xpdl train options (fixed for every trial; see xpdl train --help)")
    for action in subparsers.choices["train"]._actions:
        if action.option_strings and action.dest not in NOT_TUNABLE:
            fixed._add_action(action)
    return p


# ---------------------------------------------------------------- the command
def cmd_tune(args: argparse.Namespace) -> int:
    """``xpdl tune``: start, resume or join a study, or (``--worker``) be one of its workers."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        print(f"xpdl tune: error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    try:
        if getattr(args, "workers", None):
            from xpdl.parallel.launch import LaunchError, check_process_count

            try:
                check_process_count(args.workers, "--workers")
            except LaunchError as exc:
                raise TuneError(str(exc)) from None
        if args.worker:
            from xpdl.tune.worker import run_worker

            return run_worker(args.storage, args.study, args.out, args.worker_seed)
        if args.resume:
            return resume(args)
        if args.join:
            return join(args)
        return start(args)
    except (TuneError, SearchSpaceError) as exc:
        print(f"xpdl tune: error: {exc}", file=sys.stderr)
        return 2
