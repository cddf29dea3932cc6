"""The ``xpdl`` command line (also ``python -m xpdl``): a parser for ``train``, ``evaluate``, ``info`` and ``tune``.

One module per command (:mod:`xpdl.cli.train`, :mod:`xpdl.cli.evaluate`,
:mod:`xpdl.cli.info`, :mod:`xpdl.cli.tune`); the work itself lives below the
command line (:mod:`xpdl.training`, :mod:`xpdl.tune`, :mod:`xpdl.runs`).

Exit codes: 0 success, 1 training diverged (NaN or infinite loss), 2 a user
error (bad option, missing dataset, unreadable checkpoint, unavailable backend, a
run folder that cannot be created, locked or written), 130 interrupted. Every
error is one line on stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import sys

from xpdl.cli import evaluate, info, train
from xpdl.cli import tune as tune_command
from xpdl.training.options import ArgumentParser
from xpdl.training.run import run_command

__all__ = ["COMMANDS", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``xpdl`` argument parser with its subcommands."""
    parser = ArgumentParser(
        prog="xpdl",
        description="Train, evaluate, inspect and tune fully-connected nets (also: python -m xpdl).",
        epilog="Run 'xpdl COMMAND --help' for a command's options. Exit codes: 0 ok, 1 training diverged, "
        "2 bad arguments or missing data, 130 interrupted.",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{train,evaluate,info,tune}", parser_class=ArgumentParser
    )
    train.add_parser(sub)
    evaluate.add_parser(sub)
    info.add_parser(sub)
    tune_command.add_parser(sub)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


COMMANDS = {
    "train": train.cmd_train,
    "evaluate": evaluate.cmd_evaluate,
    "info": info.cmd_info,
    "tune": tune_command.cmd_tune,
}


def main(argv: list[str] | None = None) -> int:
    """Run the tool with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    A bad option exits through argparse (SystemExit 2, one line on stderr).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # reported by the subcommand's parser, which names its own --help
        command = _subparsers(parser).choices[args.command]
        command.error(f"unrecognized arguments: {' '.join(extras)}")
    if args.command == "train":
        args.argv = argv[argv.index("train") + 1 :]  # the options a launcher passes on to its ranks
    return run_command(args.command, lambda: COMMANDS[args.command](args), quiet=getattr(args, "quiet", False))
