"""``xpdl tune``: hyperparameter search with Optuna, in parallel worker processes and across machines.

::

    xpdl tune [xpdl train options, fixed] --search lr=1e-4..1e-2:log --search hidden-dims=256/512,256 \\
        --trials 50 [--workers W] [--sampler tpe|random] [--pruner median|asha|none] \\
        [--storage URL] [--study NAME] [--seed S] [--out DIR] [--quiet]
    xpdl tune --resume DIR [--trials N] [--workers W]    # continue; N = trials in total
    xpdl tune --join URL --study NAME [--workers W]     # another machine works on the same study

The study is created once, before any worker starts, and stores its settings.
Each of the W workers is a separate process (``python -m xpdl tune --worker``,
:mod:`xpdl.tune.worker`) whose BLAS uses cores / W threads; the process that
started them prints a line per finished trial, and at the end writes
``DIR/summary.json`` and ``DIR/tune.png`` and prints the best trials.
:func:`tune` does the same from Python. Optuna is an extra
(``pip install "xpdl[tune]"``); this module imports it only when a study runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from xpdl.tune.space import fixed_options, given_fixed, parse_space
from xpdl.version import __version__

INSTALL_HINT = 'Optuna is not installed; install it with pip install "xpdl[tune]" (or pip install optuna)'
STUDY_FILE = "tune.json"
DEFAULT_TRIALS = 20
#: Seconds a worker gets to finish its run folder after Ctrl-C before it is killed.
STOP_SECONDS = 30.0


class TuneError(Exception):
    """A mistake in how ``xpdl tune`` was called; printed as one line, exit code 2."""


def start(args: argparse.Namespace) -> int:
    fixed = given_fixed(args)
    check_before_workers(fixed)
    out, spec, name = new_study(
        args.search or [],
        fixed,
        trials=args.trials,
        storage=args.storage,
        study=args.study,
        out=args.out,
        sampler=args.sampler or "tpe",
        pruner=args.pruner or "median",
        seed=args.seed or 0,
    )
    return drive(out, spec, name, args.workers, args.quiet)


def check_before_workers(fixed: Mapping[str, Any]) -> None:
    """What every trial would refuse, refused before the study or a worker exists: the backend and the dataset.

    Raises:
        TuneError: the message of ``xpdl train`` for the same mistake.
    """
    from xpdl.data import DatasetError
    from xpdl.training.options import DEFAULTS, UsageError
    from xpdl.training.run import check_backend_before_start, read_raw

    try:
        check_backend_before_start(fixed.get("backend"))
        data = fixed.get("data", DEFAULTS["data"])
        read_raw(data, Path(fixed.get("data-dir", DEFAULTS["data_dir"])), bool(fixed.get("download", False)))
    except (UsageError, DatasetError) as exc:  # the one-line message a trial would print
        raise TuneError(str(exc)) from None


def resume(args: argparse.Namespace) -> int:
    from xpdl.tune import study as ts

    given = [
        f"--{k}"
        for k in ("search", "sampler", "pruner", "seed", "storage", "study", "out", "join")
        if getattr(args, k) is not None
    ] + [f"--{n}" for n in given_fixed(args)]
    if given:
        raise TuneError(
            f"--resume continues the study with its saved settings; only --trials, --workers and "
            f"--quiet may be given, got {', '.join(given)}"
        )
    out, spec, name = read_study_file(args.resume)
    if not ts.is_database_url(spec):  # a journal: nobody else works on it, so its file lock is stale
        Path(spec + ".lock").unlink(missing_ok=True)
        checked_journal(spec, "--resume " + str(args.resume))
    study = open_study(spec, name)
    if args.trials is not None:
        ts.set_budget(study, args.trials)
    if ts.is_database_url(spec):
        ts.fail_stale(study)
    else:  # a journal: nobody else works on it, so a running trial's worker is gone
        dead = ts.recover(study, "its worker was gone when the study was resumed")
        if dead and not args.quiet:
            print(
                f"trials {', '.join(map(str, dead))} were left running by workers that are gone: "
                "marked FAIL and queued again"
            )
    return drive(out, spec, name, args.workers, args.quiet)


def join(args: argparse.Namespace) -> int:
    from xpdl.tune import study as ts

    if not args.study:
        raise TuneError("--join needs --study NAME, the study to work on")
    given = [
        f"--{k}" for k in ("search", "sampler", "pruner", "seed", "storage", "trials") if getattr(args, k) is not None
    ] + [f"--{n}" for n in given_fixed(args)]
    if given:
        raise TuneError(
            f"--join works with the study's saved settings; only --workers, --out and --quiet "
            f"may be given, got {', '.join(given)}"
        )
    if not ts.is_database_url(args.join):
        checked_journal(args.join, "--join", locked=True)
    study = open_study(args.join, args.study)
    ts.fail_stale(study)
    out = Path(args.out or Path("runs") / f"tune-{args.study}-{time.strftime('%Y%m%d-%H%M%S')}")
    write_study_file(out, args.join, args.study)
    return drive(out, args.join, args.study, args.workers, args.quiet, joined=True)


# ---------------------------------------------------------------- study folders
def new_study(
    search: Iterable[str] | Mapping[str, Any],
    fixed: Mapping[str, Any],
    *,
    trials: int | None,
    storage: str | None,
    study: str | None,
    out: str | os.PathLike[str] | None,
    sampler: str,
    pruner: str,
    seed: int,
) -> tuple[Path, str, str]:
    """Check the settings, create the study folder and the study; returns (folder, storage spec, study name).

    Raises:
        TuneError, SearchSpaceError: a bad setting, a folder that holds a study already,
            or a study name taken in the storage.
    """
    from optuna.exceptions import DuplicatedStudyError

    from xpdl.tune import study as ts

    space = parse_space(search, fixed)
    trials = DEFAULT_TRIALS if trials is None else trials
    if sampler not in ts.SAMPLERS or pruner not in ts.PRUNERS:
        raise TuneError(f"sampler, pruner: expected one of {ts.SAMPLERS} and {ts.PRUNERS}, got {sampler!r}, {pruner!r}")
    folder = Path(out) if out is not None else Path("runs") / f"tune-{time.strftime('%Y%m%d-%H%M%S')}"
    if (folder / STUDY_FILE).exists():
        raise TuneError(
            f"--out {folder}: already holds a study ({STUDY_FILE}); continue it with "
            f"xpdl tune --resume {folder}, or choose another folder"
        )
    if trials < 1:
        raise TuneError(f"--trials: expected a positive integer, got {trials}")
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TuneError(f"--out {folder}: cannot create the study folder: {exc.strerror or exc}") from None
    name = study or folder.resolve().name
    spec = storage or str((folder / ts.JOURNAL_FILE).resolve())
    config = {
        "fixed": fixed,
        "search": [str(p) for p in space],
        "sampler": sampler,
        "pruner": pruner,
        "seed": int(seed),
        "trials": int(trials),
        "xpdl_version": __version__,
    }
    try:
        ts.create_study(ts.open_storage(spec), name, config)
    except DuplicatedStudyError:
        _remove_if_empty(folder, created)
        raise TuneError(
            f"--study {name}: a study of that name exists in {_safe_url(spec)}; work on it with "
            f"--join {_safe_url(spec)} --study {name}, or choose another name"
        ) from None
    except Exception as exc:  # a database that cannot be reached, a driver or dialect that is missing
        _remove_if_empty(folder, created)
        raise TuneError(f"--storage {_safe_url(spec)}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    write_study_file(folder, spec, name)
    return folder, spec, name


def _remove_if_empty(folder: Path, created: list[Path]) -> None:
    """Remove the folders this command created for ``folder`` (deepest first), where nothing was written into them."""
    for path in created:
        with contextlib.suppress(OSError):
            path.rmdir()


def write_study_file(folder: Path, spec: str, name: str) -> None:
    """Write ``DIR/tune.json``: where the study is (storage spec, study name)."""
    from xpdl.runs.history import write_json

    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / STUDY_FILE, {"storage": spec, "study": name})


#: A ``tune.json`` is a few hundred bytes; anything beyond this is not one.
MAX_STUDY_FILE_BYTES = 1 << 20


def read_study_file(folder: str | os.PathLike[str]) -> tuple[Path, str, str]:
    """(folder, storage spec, study name) from ``DIR/tune.json``; TuneError in one line if it is not one."""
    path = Path(folder) / STUDY_FILE
    try:
        if path.stat().st_size > MAX_STUDY_FILE_BYTES:
            raise ValueError(f"larger than {MAX_STUDY_FILE_BYTES} bytes")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:200]
        raise TuneError(f"--resume {folder}: no readable {path} ({reason}); not a folder made by xpdl tune?") from None
    if not (
        isinstance(doc, dict)
        and isinstance(doc.get("storage"), str)
        and isinstance(doc.get("study"), str)
        and doc["storage"]
        and doc["study"]
    ):
        raise TuneError(
            f"--resume {folder}: {path} is not a study file: expected a JSON object with the strings "
            '"storage" and "study", got ' + _shape(doc)
        )
    return Path(folder), doc["storage"], doc["study"]


def _shape(doc: Any) -> str:
    """What a JSON document is, in a few words (``a list``, ``an object with keys storage, study``)."""
    if isinstance(doc, dict):
        return f"an object with keys {', '.join(map(str, list(doc)[:10])) or '(none)'}" + (
            f" ({', '.join(f'{k}: {type(v).__name__}' for k, v in list(doc.items())[:4])})" if doc else ""
        )
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(doc), "a number")


def checked_journal(spec: str, option: str, locked: bool = False) -> None:
    """Check the journal ``spec`` before anything is written to it (:func:`xpdl.tune.journal.check_journal`).

    A cut-off last record is repaired (with a backup, said on stderr); a missing or
    damaged journal is a TuneError and nothing is created or changed. ``locked``: hold
    the journal's file lock meanwhile (other machines may be writing to it).
    """
    from xpdl.tune.journal import JournalDamaged, check_journal

    if not Path(spec).is_file():
        raise TuneError(
            f"{option}: {spec}: no such journal file" + (" (it is a folder)" if Path(spec).is_dir() else "")
        )
    lock = None
    if locked:
        from optuna.storages.journal import JournalFileSymlinkLock

        lock = JournalFileSymlinkLock(spec)
        lock.acquire()
    try:
        note = check_journal(spec)
    except JournalDamaged as exc:
        raise TuneError(f"{option}: {exc}") from None
    except OSError as exc:
        raise TuneError(f"{option}: {spec}: cannot check the journal: {exc}") from None
    finally:
        if lock is not None:
            lock.release()
    if note:
        print(f"xpdl tune: warning: {note}", file=sys.stderr)


def open_study(spec: str, name: str) -> Any:
    """The study ``name`` in storage ``spec``, checked to hold ``xpdl tune`` settings."""
    from xpdl.tune import study as ts

    try:
        study = ts.load_study(ts.open_storage(spec), name)
        ts.study_config(study)
    except (KeyError, ValueError) as exc:
        raise TuneError(str(exc).strip("'\"")) from None
    except Exception as exc:  # a database that cannot be reached, a driver that is missing
        raise TuneError(f"storage {_safe_url(spec)}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    return study


def _safe_url(spec: str) -> str:
    """``spec`` with any password replaced by ``***``."""
    head, sep, tail = spec.partition("://")
    if sep and "@" in tail:
        cred, _, host = tail.rpartition("@")
        user = cred.split(":", 1)[0]
        return f"{head}://{user}:***@{host}" if ":" in cred else spec
    return spec


# ---------------------------------------------------------------- workers
def worker_environment(count: int) -> dict[str, str]:
    """This process's environment for one of ``count`` workers: cores / count BLAS threads."""
    from xpdl.parallel.launch import thread_environment

    env = {**os.environ, **thread_environment(count, os.cpu_count() or 1)}
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def start_workers(out: Path, spec: str, name: str, count: int, seeds: list[int]) -> list[subprocess.Popen]:
    """Start ``count`` worker processes, cores / count BLAS threads each; their output goes to ``DIR/logs/``."""
    env = worker_environment(count)
    logs = out / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        for k in range(count):  # every log can be written before any worker starts
            with open(logs / f"worker-{k}.log", "ab"):
                pass
    except OSError as exc:
        raise TuneError(
            f"{exc.filename or logs}: cannot write the workers' logs: {exc.strerror or exc}; "
            f"nothing was started, continue with xpdl tune --resume {out} once fixed"
        ) from None
    procs: list[subprocess.Popen] = []
    try:
        with _stop_signals_blocked():
            for k in range(count):
                with open(logs / f"worker-{k}.log", "ab") as log:
                    procs.append(
                        subprocess.Popen(
                            worker_command(out, spec, name, seeds[k]),
                            stdin=subprocess.DEVNULL,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            env=env,
                        )
                    )
    except BaseException:  # Ctrl-C (or a failed start) while starting them: the started ones are stopped
        stop_workers(procs)
        raise
    return procs


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Block SIGINT, SIGTERM and SIGHUP within, so processes started here begin with them blocked: one that
    comes while a worker imports (where a KeyboardInterrupt may turn into another error or be dropped)
    waits until the worker's handler is in place. One that came meanwhile is raised on leaving."""
    sigmask = getattr(signal, "pthread_sigmask", None)
    blocked = sigmask(signal.SIG_BLOCK, (signal.SIGINT, *STOP_SIGNALS)) if sigmask else None
    try:
        yield
    finally:
        if sigmask is not None:
            sigmask(signal.SIG_SETMASK, blocked)


def worker_command(out: Path, spec: str, name: str, seed: int) -> list[str]:
    """The command line of one worker process."""
    return [
        sys.executable,
        "-m",
        "xpdl",
        "tune",
        "--worker",
        "--storage",
        spec,
        "--study",
        name,
        "--out",
        str(out.resolve()),
        "--worker-seed",
        str(seed),
    ]


def stop_workers(procs: list[subprocess.Popen], seconds: float = STOP_SECONDS) -> None:
    """Send SIGINT to every worker, wait up to ``seconds`` for them to finish their runs, then kill the rest."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + seconds
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def drive(out: Path, spec: str, name: str, workers: int | None, quiet: bool, joined: bool = False) -> int:
    """Run the workers on the study until its budget is used up; print progress; write summary and plot.

    Returns:
        0, 1 if a worker failed, 130 after Ctrl-C (saying how to resume).
    """
    from xpdl.tune import report as tr
    from xpdl.tune import study as ts

    study = open_study(spec, name)
    config = ts.study_config(study)
    trials = study.get_trials(deepcopy=False)
    left = config["trials"] - len(ts.counted(trials)) + sum(t.state.name == "WAITING" for t in trials)
    count = min(os.cpu_count() or 1, max(left, 1)) if workers is None else min(workers, max(left, 0))
    if count and isinstance(config.get("fixed"), dict):  # on this machine: a --join or --resume may run elsewhere
        check_before_workers(config["fixed"])
    seen = {t.number for t in trials if t.state in ts.FINISHED}
    done = sum(t.state in ts.FINISHED for t in ts.counted(trials))
    if not quiet:
        print(
            f"study {name} in {_safe_url(spec)}: {done} of {config['trials']} trials done; {count} workers "
            f"x {max(1, (os.cpu_count() or 1) // max(count, 1))} BLAS threads; trial runs in {out / 'trials'}"
        )
    base = secrets.randbelow(2**30) if joined else config["seed"] * 1_000_003 + len(trials) * 101
    procs = start_workers(out, spec, name, count, [(base + k) % 2**31 for k in range(count)]) if count else []
    interrupted = False
    old_handlers = _stop_signals_as_interrupt()
    try:
        while True:
            running = any(p.poll() is None for p in procs)
            seen |= _print_new(study, seen, quiet)
            if not running:
                break
            time.sleep(0.3)
    except KeyboardInterrupt:
        interrupted = True
        # a second Ctrl-C, kill or hang-up must not cut the stopping short (workers would outlive the command)
        ignored = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, *STOP_SIGNALS)}
        with contextlib.suppress(OSError):
            print(f"\ninterrupted: stopping {len(procs)} workers", file=sys.stderr)
        stop_workers(procs)
        for sig, handler in ignored.items():
            signal.signal(sig, handler)
    finally:
        for sig, handler in (old_handlers or {}).items():
            signal.signal(sig, handler)
    ours = {ts.worker_name(p.pid) for p in procs}
    ts.recover(study, "its worker process died", lambda t: t.user_attrs.get("worker") in ours)
    _print_new(study, seen, quiet)
    finished = ts.visible(study.get_trials(deepcopy=False))
    tr.write_summary(out, finished)
    tr.plot_study(finished, parse_space(config["search"], config["fixed"]), out / tr.PLOT_FILE)
    print(tr.best_table(finished))
    print(f"summary in {out / tr.SUMMARY_FILE}, plot in {out / tr.PLOT_FILE}")
    if count == 0 and not quiet:
        print(
            f"no workers started; work on the study with: xpdl tune --resume {out}, or from other machines: "
            f"xpdl tune --join {_safe_url(spec)} --study {name}"
        )
    # after Ctrl-C a worker that ended by SIGINT stopped as asked: Python ends a process that way after a
    # KeyboardInterrupt left code it ran from a string, even one the worker then handled (its trial is
    # failed and queued again by then)
    stopped = (0, 130, -signal.SIGINT) if interrupted else (0, 130)
    failed = [(k, p) for k, p in enumerate(procs) if p.returncode not in stopped]
    for k, proc in failed:
        print(
            f"worker {k} (pid {proc.pid}) exited with code {proc.returncode}; see {out / 'logs'}/worker-{k}.log",
            file=sys.stderr,
        )
    if interrupted or failed:
        print(f"continue with: xpdl tune --resume {out}", file=sys.stderr)
    return 130 if interrupted else 1 if failed else 0


#: Signals treated like Ctrl-C while workers run: kill (SIGTERM) and a closed terminal (SIGHUP).
STOP_SIGNALS = (signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()))


def _stop_signals_as_interrupt() -> dict[int, Any] | None:
    """Treat SIGTERM and SIGHUP like Ctrl-C while workers run (so they are stopped too); the old handlers."""

    def interrupt(signum: int, frame: Any) -> None:
        if signum != signal.SIGTERM:
            detach_from_terminal()
        raise KeyboardInterrupt

    try:
        return {sig: signal.signal(sig, interrupt) for sig in STOP_SIGNALS}
    except ValueError:  # not the main thread: leave signals alone
        return None


def detach_from_terminal() -> None:
    """After a hang-up: print to nowhere instead of to the closed terminal (writes to it fail with EIO)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        with contextlib.suppress(Exception):
            if stream.isatty():
                setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 - it lives as long as the process


def _print_new(study: Any, seen: set[int], quiet: bool) -> set[int]:
    from xpdl.tune import report as tr
    from xpdl.tune import study as ts

    new = [t for t in ts.visible(study.get_trials(deepcopy=False, states=ts.FINISHED)) if t.number not in seen]
    for trial in sorted(new, key=lambda t: t.datetime_complete or t.datetime_start):
        if not quiet:
            print(tr.progress_line(trial), flush=True)
    return {t.number for t in new}


# ---------------------------------------------------------------- Python
def tune(
    space: Iterable[str] | Mapping[str, Any],
    trials: int = DEFAULT_TRIALS,
    workers: int | None = None,
    storage: str | None = None,
    *,
    study: str | None = None,
    out: str | os.PathLike[str] | None = None,
    sampler: str = "tpe",
    pruner: str = "median",
    seed: int = 0,
    quiet: bool = True,
    **fixed: Any,
) -> Any:
    """Run a new study, as ``xpdl tune`` does, and return it (an ``optuna.Study``).

    Args:
        space: ``{"lr": "1e-4..1e-2:log", "hidden_dims": ["256,256", "512"]}`` or
            ``["lr=1e-4..1e-2:log", ...]``: the ``--search`` specs.
        trials, workers, storage, study, out, sampler, pruner, seed, quiet: as the
            options of ``xpdl tune`` (``workers=None``: the cores, at most ``trials``).
        **fixed: ``xpdl train`` options fixed for every trial, e.g. ``epochs=10``,
            ``hidden_dims=[64]``, ``batchnorm=False``, ``backend="numpy"``.

    Raises:
        ImportError: Optuna is not installed.
        TuneError, SearchSpaceError: a bad setting (the message names it).
        RuntimeError: a worker process failed (its log is named).
    """
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    fixed = fixed_options(fixed)
    check_before_workers(fixed)
    folder, spec, name = new_study(
        space,
        fixed,
        trials=trials,
        storage=storage,
        study=study,
        out=out,
        sampler=sampler,
        pruner=pruner,
        seed=seed,
    )
    code = drive(folder, spec, name, workers, quiet)
    if code == 130:
        raise KeyboardInterrupt
    if code != 0:
        raise RuntimeError(
            f"xpdl tune: a worker failed; see {folder / 'logs'}; continue with xpdl tune --resume {folder}"
        )
    return open_study(spec, name)
