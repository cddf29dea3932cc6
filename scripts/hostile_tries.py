"""Hostile tries against xpdl tune, --nproc, the plots, run folders and the environment, each with its expected outcome.

Run from the repository root (xpdl need not be installed)::

    python scripts/hostile_tries.py            # all tries; prints one line per try and the count handled
    python scripts/hostile_tries.py -k tune    # only the tries whose name contains "tune"

A try is handled when the command ends as expected: the exit code, an error of one
line without a traceback that names what it should, nothing left that should not be,
within its time limit. Tries that need something this machine lacks (root for a tiny
tmpfs, mpiexec, Optuna) are reported as skipped and not counted. Exit code: 0 when
every try that ran was handled, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--hidden-dims", "8", "--backend", "numpy"]
SEARCH = ["--search", "lr=1e-3..1e-2"]


def env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    bin_dir = str(Path(sys.executable).parent)
    base = {k: v for k, v in os.environ.items() if k != "XPDL_BACKEND"}
    return {
        **base,
        "PYTHONPATH": path,
        "XPDL_QUIET": "1",
        "XPDL_FUSED": "0",
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        **extra,
    }


class Skip(Exception):
    """The try needs something this machine lacks."""


@dataclass
class Try:
    """One hostile action: ``argv`` of ``xpdl`` (or ``python`` code) in a fresh folder, and what must happen."""

    name: str
    argv: list[str] = field(default_factory=list)
    code: int = 2
    says: tuple[str, ...] = ()  # words the (one-line) error must hold
    setup: Callable[[Path], None] | None = None
    check: Callable[[Path, subprocess.CompletedProcess], str] | None = None  # "" when fine, else what is wrong
    python: str | None = None  # run this code instead of xpdl; it must print "ok"
    signal_after: tuple[Callable[[Path], bool], int] | None = None  # (ready?, signal) sent to the command alone
    extra_env: dict[str, str] = field(default_factory=dict)
    needs: tuple[str, ...] = ()  # "optuna", "mpi", "root", "no-cupy"
    timeout: float = 120.0


# ------------------------------------------------------------------ helpers for setups and checks
def nothing_left(*allowed: str) -> Callable[[Path, subprocess.CompletedProcess], str]:
    def check(tmp: Path, result: subprocess.CompletedProcess) -> str:
        left = sorted(
            str(p.relative_to(tmp)) for p in tmp.rglob("*") if not str(p.relative_to(tmp)).startswith(allowed)
        )
        left = [p for p in left if not any(p.startswith(a) for a in allowed)] if allowed else left
        return f"left behind: {left}" if left else ""

    return check


def train_run(folder: str, *extra: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        run_xpdl(tmp, "train", *TINY, "--epochs", "1", "--quiet", "--out", folder, *extra, must_pass=True)

    return setup


def run_xpdl(tmp: Path, *argv: str, must_pass: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "xpdl", *argv], cwd=tmp, env=env(), capture_output=True, text=True, timeout=timeout
    )
    if must_pass and result.returncode != 0:
        raise RuntimeError(f"setup failed: xpdl {' '.join(argv)}: {result.stderr.strip()[-300:]}")
    return result


def study(folder: str = "s", completed: int = 2) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        run_xpdl(
            tmp,
            "tune",
            *TINY,
            "--epochs",
            "1",
            *SEARCH,
            "--trials",
            "3",
            "--workers",
            "0",
            "--out",
            folder,
            must_pass=True,
        )
        import optuna

        sys.path.insert(0, str(REPO))
        from xpdl.tune.study import open_storage

        spec = json.loads((tmp / folder / "tune.json").read_text())
        st = optuna.load_study(study_name=spec["study"], storage=open_storage(spec["storage"]))
        dist = optuna.distributions.FloatDistribution(1e-3, 1e-2)
        for k in range(completed):
            st.add_trial(
                optuna.trial.create_trial(params={"lr": 2e-3 + k * 1e-3}, distributions={"lr": dist}, value=0.5)
            )

    return setup


def then(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for step in steps:
            step(tmp)

    return setup


def write(path: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        p = tmp / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)

    return setup


def mkdir(path: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / path).mkdir(parents=True, exist_ok=True)


def tiny_tmpfs(path: str, size: str = "8k", ro: bool = False) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / path).mkdir(parents=True, exist_ok=True)
        opts = f"size={size}" + (",ro" if ro else "")
        if (
            os.geteuid() != 0
            or subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(tmp / path)]).returncode
        ):
            raise Skip("mounting a tmpfs needs root and mount")
        MOUNTS.append(tmp / path)

    return setup


MOUNTS: list[Path] = []
HELD: list[int] = []


def hold_lock(path: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        fd = os.open(tmp / path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        HELD.append(fd)

    return setup


def cut_journal(folder: str = "s", drop: int = 7) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        j = tmp / folder / "journal.log"
        j.write_bytes(j.read_bytes()[:-drop])

    return setup


def journal_readable(folder: str = "s") -> Callable[[Path, subprocess.CompletedProcess], str]:
    def check(tmp: Path, result: subprocess.CompletedProcess) -> str:
        code = (
            "import json, optuna, sys; from xpdl.tune.study import open_storage; "
            f"d = json.load(open('{folder}/tune.json')); "
            "s = optuna.load_study(study_name=d['study'], storage=open_storage(d['storage'])); print(len(s.trials))"
        )
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp, env=env(), capture_output=True, text=True)
        if r.returncode != 0:
            return f"journal unreadable: {r.stderr.strip().splitlines()[-1:]}"
        if not list((tmp / folder).glob("journal.log.damaged-*")):
            return "no backup of the damaged journal"
        return ""

    return check


def unchanged(path: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        SNAPSHOTS[path] = (tmp / path).read_bytes()

    return setup


SNAPSHOTS: dict[str, bytes] = {}


def same_as_before(path: str) -> Callable[[Path, subprocess.CompletedProcess], str]:
    return lambda tmp, r: "" if (tmp / path).read_bytes() == SNAPSHOTS[path] else f"{path} was changed"


def no_process_in(tmp: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (
                    Path(os.readlink(entry / "cwd")) == tmp
                    and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
                ):
                    left.append(entry.name)
            except OSError:
                continue
        if not left:
            return ""
        time.sleep(0.3)
    return f"processes left: {left}"


def resumable(tmp: Path, result: subprocess.CompletedProcess) -> str:
    problem = no_process_in(tmp)
    if problem:
        return problem
    fd = os.open(tmp / "run" / ".xpdl.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return "the run folder is still locked"
    finally:
        os.close(fd)
    return "" if (tmp / "run" / "checkpoint.npz").exists() else "no checkpoint kept"


def trials_not_running(tmp: Path) -> str:
    code = (
        "import json, optuna; from xpdl.tune.study import open_storage; d = json.load(open('t/tune.json')); "
        "s = optuna.load_study(study_name=d['study'], storage=open_storage(d['storage'])); "
        "print(sum(t.state.name == 'RUNNING' for t in s.trials))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp, env=env(), capture_output=True, text=True)
    return "" if r.stdout.strip() == "0" else f"trials left RUNNING: {r.stdout.strip()} {r.stderr.strip()[-200:]}"


def first_checkpoint(tmp: Path) -> bool:
    return (tmp / "run" / "checkpoint.npz").exists() or any((tmp / "t" / "trials").glob("*/checkpoint.npz"))


def py(code: str) -> str:
    return f"import sys, time\nsys.path.insert(0, {str(REPO)!r})\n{code}\nprint('ok')\n"


# ------------------------------------------------------------------ the tries
#: The Python tries: each must print ok (see :func:`py`).
SNIPPETS = [
    """\
from xpdl import plots
try:
    plots.confusion([0, 10**8], [0, 0])
except ValueError as e:
    assert '1000' in str(e)
else:
    raise SystemExit('drawn')
""",
    """\
import numpy as np
from xpdl import plots
fig = plots.confusion(np.arange(300), np.arange(300))
assert len(fig.axes[0].get_xticks()) <= 40
""",
    """\
import json, os, tempfile
from xpdl import plots
d = tempfile.mkdtemp(dir='.')
open(d + '/history.json', 'w').write('[]')
try:
    plots.history(d)
except Exception as e:
    assert 'history.json' in str(e), e
else:
    raise SystemExit('drawn')
""",
    """\
import os
from xpdl import plots
os.mkdir('x.png')
try:
    plots.save(plots.new_figure(2, 2), 'x.png')
except OSError as e:
    assert 'x.png' in str(e) and 'Is a directory' in str(e), e
assert os.listdir('.') == ['x.png'], os.listdir('.')
""",
    """\
from xpdl.tune.report import plot_study
from xpdl.tune.space import parse_search
p = parse_search('batch-size=' + '/'.join(map(str, range(1, 1001))))
t = time.perf_counter()
plot_study([], [p], 'tune.png')
assert time.perf_counter() - t < 30
""",
    """\
import inspect
from xpdl import Trainer
ps = inspect.signature(Trainer.__init__).parameters
assert 'batch_size' in ps and not any(p.kind == p.VAR_KEYWORD for p in ps.values())
""",
    """\
from xpdl.tune.report import format_params
assert 'dropout-keep=0.651' in format_params({'dropout': 0.651})
""",
]


TRIES = [
    # the command line and the environment
    Try("cli: bare xpdl lists tune", [], 2, ("tune",)),
    Try(
        "cli: --help usage lists tune",
        ["--help"],
        0,
        check=lambda t, r: "" if "tune}" in r.stdout.splitlines()[0] else r.stdout[:200],
    ),
    Try(
        "cli: abbreviated --epoch refused",
        ["train", "--epoch", "2", *TINY],
        2,
        ("--epoch", "see xpdl train --help"),
        check=nothing_left(),
    ),
    Try("cli: typo names the subcommand help", ["train", "--hiden-dims", "8"], 2, ("see xpdl train --help",)),
    Try("cli: typo in tune", ["tune", "--serch", "lr=1..2"], 2, ("see xpdl tune --help",)),
    Try(
        "env: XPDL_BACKEND=bogus",
        ["train", "--hidden-dims", "8", "--epochs", "1"],
        2,
        ("XPDL_BACKEND",),
        extra_env={"XPDL_BACKEND": "bogus"},
        check=nothing_left(),
    ),
    Try(
        "env: XPDL_BACKEND=cupy without CuPy",
        ["train", "--hidden-dims", "8", "--epochs", "1"],
        2,
        ("cupy",),
        extra_env={"XPDL_BACKEND": "cupy"},
        needs=("no-cupy",),
        check=nothing_left(),
    ),
    Try(
        "env: --backend cupy without CuPy",
        ["train", "--backend", "cupy", "--epochs", "1"],
        2,
        ("--backend cupy",),
        needs=("no-cupy",),
        check=nothing_left(),
    ),
    Try(
        "env: --data-dir is a file",
        ["train", *TINY, "--data", "mnist", "--data-dir", "f"],
        2,
        ("--data-dir f",),
        setup=write("f", "x"),
    ),
    Try(
        "env: missing dataset", ["train", *TINY, "--data", "mnist", "--data-dir", "d"], 2, ("mnist",), setup=mkdir("d")
    ),
    # run folders
    Try(
        "runs: --out under a file",
        ["train", *TINY, "--epochs", "1", "--out", "f/run"],
        2,
        ("f/run",),
        setup=write("f", "x"),
    ),
    Try(
        "runs: --out on a full disk",
        ["train", *TINY, "--hidden-dims", "256,256", "--epochs", "1", "--out", "m/run"],
        2,
        ("No space left",),
        setup=tiny_tmpfs("m", "64k"),
        check=nothing_left("m"),
    ),
    Try(
        "runs: --out on a read-only disk",
        ["train", *TINY, "--epochs", "1", "--out", "m/run"],
        2,
        ("Read-only",),
        setup=tiny_tmpfs("m", "64k", ro=True),
    ),
    Try(
        "runs: --resume of a folder in use",
        ["train", "--resume", "run", "--epochs", "2"],
        2,
        ("run",),
        setup=then(train_run("run"), hold_lock("run/.xpdl.lock")),
    ),
    Try(
        "runs: --resume of a cut checkpoint",
        ["train", "--resume", "run", "--epochs", "2"],
        2,
        ("checkpoint.npz",),
        setup=then(
            train_run("run"),
            lambda t: (t / "run/checkpoint.npz").write_bytes((t / "run/checkpoint.npz").read_bytes()[:500]),
        ),
    ),
    Try(
        "runs: evaluate, confusion.png is a folder",
        ["evaluate", "run", "--out", "o"],
        2,
        ("confusion.png", "Is a directory"),
        setup=then(train_run("run"), mkdir("o/confusion.png")),
    ),
    Try(
        "runs: evaluate --plot on a full disk",
        ["evaluate", "run", "--out", "m"],
        2,
        ("confusion.png", "No space left"),
        setup=then(train_run("run"), tiny_tmpfs("m", "8k")),
        check=nothing_left("run", "m"),
    ),
    Try(
        "runs: evaluate --plot on a read-only disk",
        ["evaluate", "run", "--out", "m"],
        2,
        ("confusion.png", "Read-only"),
        setup=then(train_run("run"), tiny_tmpfs("m", "8k", ro=True)),
    ),
    Try(
        "runs: evaluate --out NEW/DIR on a read-only disk leaves no folder",
        ["evaluate", "run", "--out", "m/new/dir"],
        2,
        ("Read-only",),
        setup=then(train_run("run"), tiny_tmpfs("m", "8k", ro=True)),
    ),
    Try(
        "runs: evaluate --out is a file",
        ["evaluate", "run", "--out", "f"],
        2,
        ("--out f",),
        setup=then(train_run("run"), write("f", "x")),
    ),
    Try(
        "runs: --resume over a history.json that is a list",
        ["train", "--resume", "run", "--epochs", "2"],
        0,
        setup=then(train_run("run"), write("run/history.json", "[]")),
        check=lambda t, r: (
            "" if json.loads((t / "run/history.json").read_text())["epochs_done"] == 2 else "history.json not rewritten"
        ),
    ),
    Try("env: xpdl info", ["info"], 0),
    Try("runs: evaluate of nothing", ["evaluate", "nosuch"], 2, ("nosuch",)),
    # --nproc
    Try(
        "nproc: --backend cupy without CuPy",
        ["train", "--nproc", "2", "--backend", "cupy", "--epochs", "1", "--out", "r"],
        2,
        ("--backend cupy",),
        needs=("mpi", "no-cupy"),
        check=nothing_left(),
    ),
    Try(
        "nproc: --resume of nothing",
        ["train", "--nproc", "2", "--resume", "nosuch"],
        2,
        ("nosuch",),
        needs=("mpi",),
        check=nothing_left(),
    ),
    Try(
        "nproc: --weight-decay without adamw",
        ["train", "--nproc", "2", *TINY, "--weight-decay", "0.1"],
        2,
        ("--weight-decay",),
        needs=("mpi",),
        check=nothing_left(),
    ),
    Try(
        "nproc: missing dataset",
        ["train", "--nproc", "2", *TINY, "--data", "mnist", "--data-dir", "d"],
        2,
        ("mnist",),
        needs=("mpi",),
        setup=mkdir("d"),
    ),
    Try("nproc: 0", ["train", "--nproc", "0"], 2, ("--nproc",)),
    Try("nproc: 1000", ["train", "--nproc", "1000", *TINY], 2, ("--nproc",), check=nothing_left()),
    Try(
        "nproc: header and history name the ranks",
        ["train", "--nproc", "2", *TINY, "--epochs", "1", "--out", "run"],
        0,
        needs=("mpi",),
        check=lambda t, r: (
            ""
            if "2 ranks" in r.stdout and json.loads((t / "run/history.json").read_text())["nproc"] == 2
            else r.stdout[:300]
        ),
    ),
    Try(
        "nproc: SIGTERM stops every rank",
        ["train", "--nproc", "2", *TINY, "--epochs", "500", "--out", "run"],
        130,
        ("--resume run --nproc 2",),
        needs=("mpi",),
        signal_after=(first_checkpoint, signal.SIGTERM),
        check=resumable,
    ),
    Try(
        "nproc: SIGHUP stops every rank",
        ["train", "--nproc", "2", *TINY, "--epochs", "500", "--out", "run"],
        130,
        ("--resume run --nproc 2",),
        needs=("mpi",),
        signal_after=(first_checkpoint, signal.SIGHUP),
        check=resumable,
    ),
    Try(
        "nproc: SIGINT stops every rank",
        ["train", "--nproc", "2", *TINY, "--epochs", "500", "--out", "run"],
        130,
        ("--resume run --nproc 2",),
        needs=("mpi",),
        signal_after=(first_checkpoint, signal.SIGINT),
        check=resumable,
    ),
    Try(
        "nproc: --out holds a run",
        ["train", "--nproc", "2", *TINY, "--epochs", "1", "--out", "run"],
        2,
        ("already holds a run",),
        needs=("mpi",),
        setup=train_run("run"),
    ),
    Try(
        "nproc: --resume changing a saved setting",
        ["train", "--nproc", "2", "--resume", "run", "--epochs", "3", "--lr", "0.1"],
        2,
        ("--lr",),
        needs=("mpi",),
        setup=train_run("run"),
    ),
    # tune
    Try(
        "tune: tune.json is a list",
        ["tune", "--resume", "s"],
        2,
        ("tune.json",),
        needs=("optuna",),
        setup=write("s/tune.json", "[1, 2]"),
    ),
    Try(
        "tune: tune.json with wrong types",
        ["tune", "--resume", "s"],
        2,
        ("tune.json",),
        needs=("optuna",),
        setup=write("s/tune.json", '{"storage": 5, "study": []}'),
    ),
    Try(
        "tune: tune.json deeply nested",
        ["tune", "--resume", "s"],
        2,
        ("tune.json",),
        needs=("optuna",),
        setup=write("s/tune.json", "[" * 100000 + "]" * 100000),
    ),
    Try("tune: tune.json missing", ["tune", "--resume", "s"], 2, ("tune.json",), needs=("optuna",), setup=mkdir("s")),
    Try(
        "tune: tune.json names a missing journal",
        ["tune", "--resume", "s", "--workers", "0"],
        2,
        ("no such journal",),
        needs=("optuna",),
        setup=write("s/tune.json", '{"storage": "gone.log", "study": "x"}'),
        check=lambda t, r: "journal created" if (t / "gone.log").exists() else "",
    ),
    Try(
        "tune: journal with a damaged record",
        ["tune", "--resume", "s", "--workers", "0"],
        2,
        ("journal.log", "line"),
        needs=("optuna",),
        setup=then(
            study(),
            lambda t: (t / "s/journal.log").write_bytes(b"garbage\n" + (t / "s/journal.log").read_bytes()),
            unchanged("s/journal.log"),
        ),
        check=same_as_before("s/journal.log"),
    ),
    Try(
        "tune: journal cut off, resume repairs it",
        ["tune", "--resume", "s", "--trials", "4", "--workers", "0"],
        0,
        needs=("optuna",),
        setup=then(study(), cut_journal()),
        check=journal_readable(),
    ),
    Try(
        "tune: journal cut off, join repairs it",
        ["tune", "--join", "s/journal.log", "--study", "s", "--workers", "0", "--out", "j"],
        0,
        needs=("optuna",),
        setup=then(study(), cut_journal()),
        check=journal_readable(),
    ),
    Try(
        "tune: --join of a missing journal",
        ["tune", "--join", "nosuch.log", "--study", "x", "--workers", "0"],
        2,
        ("nosuch.log",),
        needs=("optuna",),
        check=nothing_left(),
    ),
    Try(
        "tune: --join without --study",
        ["tune", "--join", "x.log"],
        2,
        ("--study",),
        needs=("optuna",),
        check=nothing_left(),
    ),
    Try(
        "tune: --search backend",
        ["tune", "--search", "backend=numpy/cupy"],
        2,
        ("not a hyperparameter", "lr"),
        needs=("optuna",),
        check=nothing_left(),
    ),
    Try(
        "tune: --search nproc",
        ["tune", "--search", "nproc=1/2"],
        2,
        ("not a hyperparameter",),
        needs=("optuna",),
        check=nothing_left(),
    ),
    Try(
        "tune: --search data-dir",
        ["tune", "--search", "data-dir=a/b"],
        2,
        ("not a hyperparameter",),
        needs=("optuna",),
        check=nothing_left(),
    ),
    Try(
        "tune: --search out",
        ["tune", "--search", "out=a/b"],
        2,
        ("not a hyperparameter",),
        needs=("optuna",),
        check=nothing_left(),
    ),
    Try(
        "tune: --search with 20,000 choices",
        ["tune", "--search", "batch-size=" + "/".join(map(str, range(1, 20001)))],
        2,
        ("at most 1000 choices",),
        needs=("optuna",),
        timeout=30,
        check=nothing_left(),
    ),
    Try("tune: --search lr=1..0", ["tune", "--search", "lr=1..0.5"], 2, ("LOW < HIGH",), needs=("optuna",)),
    Try(
        "tune: --nproc refused",
        ["tune", "--nproc", "2", *SEARCH],
        2,
        ("--nproc",),
        needs=("optuna",),
        check=nothing_left(),
    ),
    Try(
        "tune: --workers 1000",
        ["tune", *SEARCH, "--workers", "1000", "--out", "t"],
        2,
        ("--workers",),
        needs=("optuna",),
        check=nothing_left(),
    ),
    Try(
        "tune: --backend cupy without CuPy",
        ["tune", "--backend", "cupy", *SEARCH, "--out", "t"],
        2,
        ("--backend cupy",),
        needs=("optuna", "no-cupy"),
        check=nothing_left(),
    ),
    Try(
        "tune: logs is a file",
        ["tune", *TINY, "--epochs", "1", *SEARCH, "--trials", "1", "--workers", "1", "--out", "t"],
        2,
        ("logs",),
        needs=("optuna",),
        setup=write("t/logs", "x"),
    ),
    Try(
        "tune: summary.json is a folder",
        ["tune", *TINY, "--epochs", "1", *SEARCH, "--trials", "1", "--workers", "0", "--out", "t"],
        2,
        ("summary.json", "Is a directory"),
        needs=("optuna",),
        setup=mkdir("t/summary.json"),
    ),
    Try(
        "tune: tune.png is a folder",
        ["tune", *TINY, "--epochs", "1", *SEARCH, "--trials", "1", "--workers", "0", "--out", "t"],
        2,
        ("tune.png", "Is a directory"),
        needs=("optuna",),
        setup=mkdir("t/tune.png"),
    ),
    Try(
        "tune: --out on a full disk",
        ["tune", *TINY, "--epochs", "1", *SEARCH, "--trials", "1", "--workers", "0", "--out", "m/t"],
        2,
        ("m/t",),
        needs=("optuna",),
        setup=tiny_tmpfs("m", "4k"),
    ),
    Try(
        "tune: SIGTERM stops every worker",
        [
            "tune",
            *TINY,
            "--epochs",
            "300",
            *SEARCH,
            "--trials",
            "2",
            "--workers",
            "1",
            "--pruner",
            "none",
            "--out",
            "t",
        ],
        130,
        ("xpdl tune --resume t",),
        needs=("optuna",),
        signal_after=(first_checkpoint, signal.SIGTERM),
        check=lambda t, r: no_process_in(t),
    ),
    Try(
        "tune: SIGHUP stops every worker",
        [
            "tune",
            *TINY,
            "--epochs",
            "300",
            *SEARCH,
            "--trials",
            "2",
            "--workers",
            "1",
            "--pruner",
            "none",
            "--out",
            "t",
        ],
        130,
        ("xpdl tune --resume t",),
        needs=("optuna",),
        signal_after=(first_checkpoint, signal.SIGHUP),
        check=lambda t, r: no_process_in(t),
    ),
    Try(
        "tune: SIGHUP to the whole process group (a closed terminal)",
        [
            "tune",
            *TINY,
            "--epochs",
            "300",
            *SEARCH,
            "--trials",
            "2",
            "--workers",
            "1",
            "--pruner",
            "none",
            "--out",
            "t",
        ],
        130,
        ("xpdl tune --resume t",),
        needs=("optuna",),
        signal_after=(first_checkpoint, -signal.SIGHUP),
        check=lambda t, r: no_process_in(t) or trials_not_running(t),
    ),
    Try(
        "tune: SIGTERM to the whole process group",
        [
            "tune",
            *TINY,
            "--epochs",
            "300",
            *SEARCH,
            "--trials",
            "2",
            "--workers",
            "1",
            "--pruner",
            "none",
            "--out",
            "t",
        ],
        130,
        ("xpdl tune --resume t",),
        needs=("optuna",),
        signal_after=(first_checkpoint, -signal.SIGTERM),
        check=lambda t, r: no_process_in(t) or trials_not_running(t),
    ),
    # plots and Python
    Try(
        "plots: confusion with a label of 10**8",
        code=0,
        timeout=20,
        python=py(SNIPPETS[0]),
    ),
    Try(
        "plots: confusion of 300 classes is bounded",
        code=0,
        timeout=60,
        python=py(SNIPPETS[1]),
    ),
    Try(
        "plots: history of a list",
        code=0,
        timeout=30,
        python=py(SNIPPETS[2]),
    ),
    Try(
        "plots: save over a folder",
        code=0,
        timeout=30,
        python=py(SNIPPETS[3]),
    ),
    Try(
        "plots: tune.png of 1000 choices",
        code=0,
        timeout=60,
        python=py(SNIPPETS[4]),
    ),
    Try(
        "python: Trainer signature",
        code=0,
        timeout=30,
        python=py(SNIPPETS[5]),
    ),
    Try(
        "python: keep probability shown by name",
        code=0,
        timeout=30,
        python=py(SNIPPETS[6]),
    ),
]


# ------------------------------------------------------------------ running them
def missing(needs: tuple[str, ...]) -> str:
    for need in needs:
        if need == "optuna" and importlib.util.find_spec("optuna") is None:
            return "Optuna is not installed"
        if need == "mpi":
            sys.path.insert(0, str(REPO))
            from xpdl.parallel.launch import LaunchError, find_mpiexec

            if importlib.util.find_spec("mpi4py") is None:
                return "mpi4py is not installed"
            try:
                find_mpiexec()
            except LaunchError as exc:
                return str(exc)
        if need == "no-cupy" and importlib.util.find_spec("cupy") is not None:
            return "CuPy is installed here"
    return ""


def run_try(t: Try, tmp: Path) -> str:
    """ "" when the try was handled, else what went wrong."""
    if t.setup:
        t.setup(tmp)
    cmd = [sys.executable, "-c", t.python] if t.python else [sys.executable, "-m", "xpdl", *t.argv]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=tmp, env=env(**t.extra_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        if t.signal_after:
            ready, sig = t.signal_after
            while not ready(tmp):
                if proc.poll() is not None or time.monotonic() - start > t.timeout:
                    break
                time.sleep(0.1)
            if proc.poll() is None:  # a negative signal goes to the whole process group
                os.killpg(proc.pid, -sig) if sig < 0 else os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=max(t.timeout - (time.monotonic() - start), 5))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"still running after {t.timeout:.0f} s"
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if t.python:
        return "" if result.returncode == 0 and out.strip().endswith("ok") else (err.strip().splitlines() or ["?"])[-1]
    if result.returncode != t.code:
        return f"exit {result.returncode}, expected {t.code}: {err.strip()[-300:]}"
    if "Traceback" in err:
        return f"a traceback: {err.strip()[-300:]}"
    if t.code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        if len(lines) != 1:
            return f"{len(lines)} lines on stderr, expected one: {err.strip()[-300:]}"
    for word in t.says:
        if word not in err and word not in out:
            return f"the message does not say {word!r}: {err.strip()[-300:]}"
    return t.check(tmp, result) if t.check else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only the tries whose name contains this text")
    args = parser.parse_args()
    handled = failed = skipped = 0
    for t in TRIES:
        if args.k not in t.name:
            continue
        why = missing(t.needs)
        tmp = Path(tempfile.mkdtemp(prefix="xpdl-hostile-")).resolve()
        try:
            problem = f"skipped: {why}" if why else run_try(t, tmp)
        except Skip as exc:
            problem = f"skipped: {exc}"
        except Exception as exc:  # a setup that failed counts against the try
            problem = f"{type(exc).__name__}: {exc}"
        finally:
            for fd in HELD:
                os.close(fd)
            HELD.clear()
            for mnt in reversed(MOUNTS):
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
            MOUNTS.clear()
            with contextlib.suppress(OSError):
                subprocess.run(["rm", "-rf", str(tmp)], capture_output=True)
        if problem.startswith("skipped"):
            skipped += 1
            status = "SKIP"
        elif problem:
            failed += 1
            status = "FAIL"
        else:
            handled += 1
            status = "ok  "
        print(f"{status} {t.name}" + (f": {problem}" if problem else ""), flush=True)
    total = handled + failed
    print(f"\n{handled} of {total} hostile tries handled" + (f" ({skipped} skipped)" if skipped else ""))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
