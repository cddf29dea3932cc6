"""The newer surfaces as sturdy as ``xpdl train``: tune, ``--nproc``, the plots and the command line.

Each section is one class of failure: an output error is one line (exit 2) naming
the path; a malformed file read back is refused in one line; a journal cut off
mid-record is repaired (its original backed up) or refused before anything is
written; SIGTERM and SIGHUP stop the whole job like Ctrl-C; what can be checked is
checked before ranks or workers start; a failed command leaves no file; a small
input never asks for unbounded work; and what a newcomer sees is true.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

import xpdl
from xpdl.parallel import launch

REPO = Path(xpdl.__file__).resolve().parents[1]
TINY = ["--hidden-dims", "8", "--backend", "numpy"]


def _mpi_problem() -> str:
    try:
        import mpi4py  # noqa: F401
    except ImportError as exc:
        return f"mpi4py is not installed ({exc})"
    try:
        launch.find_mpiexec()
    except launch.LaunchError as exc:
        return str(exc)
    return ""


MPI_WHY = _mpi_problem()
needs_mpi = pytest.mark.skipif(bool(MPI_WHY), reason=f"needs mpi4py and mpiexec: {MPI_WHY}")
needs_optuna = pytest.mark.skipif(
    __import__("importlib").util.find_spec("optuna") is None, reason="optuna is not installed"
)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("XPDL_QUIET", "1")
    monkeypatch.setenv("XPDL_FUSED", "0")
    monkeypatch.delenv("XPDL_BACKEND", raising=False)
    monkeypatch.chdir(tmp_path)


def environment() -> dict[str, str]:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "XPDL_QUIET": "1",
        "XPDL_FUSED": "0",
        "PYTHONPATH": path,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def xpdl_run(*argv: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xpdl", *argv],
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def xpdl_start(*argv: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "xpdl", *argv],
        cwd=cwd,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "error: " in err and "Traceback" not in err, err
    for word in words:
        assert word in err, err


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def wait_for(predicate, what: str, proc: subprocess.Popen | None = None, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the command ended ({proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text`` (zombies excluded)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A small finished run folder."""
    folder = tmp_path_factory.mktemp("trained") / "run"
    result = xpdl_run("train", *TINY, "--epochs", "1", "--quiet", "--out", str(folder), cwd=folder.parent)
    assert result.returncode == 0, result.stderr
    return folder


# ------------------------------------------------------------------ the command line a newcomer sees
def test_help_and_a_bare_xpdl_list_tune(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "{train,evaluate,info,tune}" in out.splitlines()[0]
    code, _, err = run_cli(capsys)
    assert code == 2 and "tune" in err


def test_a_typo_in_an_option_names_the_subcommands_help(capsys):
    code, _, err = run_cli(capsys, "train", "--epochs", "1", "--hiden-dims", "8")
    one_line_error(code, err, "--hiden-dims", "see xpdl train --help")
    code, _, err = run_cli(capsys, "evaluate", "RUN", "--plt")
    one_line_error(code, err, "--plt", "see xpdl evaluate --help")


def test_an_abbreviated_option_is_refused(capsys):
    code, _, err = run_cli(capsys, "train", "--epoch", "2", *TINY)
    one_line_error(code, err, "--epoch", "see xpdl train --help")
    assert not Path("runs").exists()


# ------------------------------------------------------------------ an output error is one line, exit 2
def test_evaluate_plot_where_confusion_png_is_a_folder(trained, tmp_path, capsys):
    (tmp_path / "out" / "confusion.png").mkdir(parents=True)
    code, _, err = run_cli(capsys, "evaluate", str(trained), "--out", "out")
    one_line_error(code, err, "confusion.png", "Is a directory")
    assert listing(tmp_path / "out") == ["confusion.png"]


@pytest.mark.parametrize("code_", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_evaluate_plot_that_cannot_be_written(trained, tmp_path, capsys, monkeypatch, code_):
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(code_, os.strerror(code_), kwargs.get("dir"))

    (tmp_path / "out").mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code, _, err = run_cli(capsys, "evaluate", str(trained), "--out", "out")
    one_line_error(code, err, "confusion.png", os.strerror(code_))
    assert listing(tmp_path / "out") == []


def test_evaluate_plot_into_new_folders_that_fails_leaves_no_folder(trained, tmp_path, capsys, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code, _, err = run_cli(capsys, "evaluate", str(trained), "--out", "new/deeper")
    one_line_error(code, err, "new/deeper/confusion.png", "No space left on device")
    assert listing(tmp_path) == []


def test_evaluate_plot_on_a_real_full_disk(trained, tmp_path, capsys):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mnt)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("mounting a tiny tmpfs needs root and the mount command")
    try:
        code, _, err = run_cli(capsys, "evaluate", str(trained), "--out", str(mnt))
        one_line_error(code, err, "confusion.png", "No space left on device")
        assert listing(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@needs_optuna
def test_tune_whose_logs_folder_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "logs").write_text("in the way")
    code, _, err = run_cli(
        capsys,
        "tune",
        *TINY,
        "--epochs",
        "1",
        "--search",
        "lr=1e-3..1e-2",
        "--trials",
        "1",
        "--workers",
        "1",
        "--out",
        "t",
    )
    one_line_error(code, err, "logs")


@needs_optuna
def test_tune_whose_summary_cannot_be_written_is_one_line(tmp_path, capsys):
    (tmp_path / "t" / "summary.json").mkdir(parents=True)
    code, _, err = run_cli(
        capsys,
        "tune",
        *TINY,
        "--epochs",
        "1",
        "--search",
        "lr=1e-3..1e-2",
        "--trials",
        "1",
        "--workers",
        "0",
        "--out",
        "t",
    )
    one_line_error(code, err, "summary.json", "Is a directory")
    assert not list((tmp_path / "t").glob(".*.tmp"))


# ------------------------------------------------------------------ a malformed file read back is refused
def make_study(tmp_path: Path, trials: int = 2, completed: int = 2) -> Path:
    """A study folder made by ``xpdl tune --workers 0`` with ``completed`` trials added directly."""
    import optuna

    from xpdl.tune.driver import read_study_file
    from xpdl.tune.study import open_storage

    folder = tmp_path / "study"
    result = xpdl_run(
        "tune", *TINY, "--epochs", "1", "--search", "lr=1e-3..1e-2", "--trials", str(trials), "--workers", "0",
        "--out", str(folder), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    _, spec, name = read_study_file(folder)
    study = optuna.load_study(study_name=name, storage=open_storage(spec))
    dist = optuna.distributions.FloatDistribution(1e-3, 1e-2)
    for k in range(completed):
        study.add_trial(
            optuna.trial.create_trial(params={"lr": 2e-3 + k * 1e-3}, distributions={"lr": dist}, value=0.5)
        )
    return folder


def journal_trials(folder: Path) -> int:
    import optuna

    from xpdl.tune.driver import read_study_file
    from xpdl.tune.study import open_storage

    _, spec, name = read_study_file(folder)
    return len(optuna.load_study(study_name=name, storage=open_storage(spec)).get_trials())


@needs_optuna
@pytest.mark.parametrize(
    "content",
    ["[1, 2]", '{"storage": 5, "study": []}', '{"storage": "x"}', "not json", '"a string"', "{" * 100000],
)
def test_a_malformed_tune_json_is_refused_in_one_line(tmp_path, capsys, content):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "tune.json").write_text(content)
    code, _, err = run_cli(capsys, "tune", "--resume", "s", "--workers", "0")
    one_line_error(code, err, "tune.json")
    assert listing(tmp_path / "s") == ["tune.json"]


@needs_optuna
@pytest.mark.parametrize("content", [b"garbage\n", b"\x00\xff\xfe\n", b'{"op_code": 0}\n[1]\n', b"[]\n"])
def test_a_malformed_journal_is_refused_in_one_line_and_left_as_it_was(tmp_path, capsys, content):
    folder = make_study(tmp_path)
    journal = folder / "journal.log"
    journal.write_bytes(journal.read_bytes() + content + journal.read_bytes())
    before = journal.read_bytes()
    code, _, err = run_cli(capsys, "tune", "--resume", str(folder), "--workers", "0")
    one_line_error(code, err, "journal.log")
    assert journal.read_bytes() == before


def test_a_malformed_history_json_is_refused_in_one_line(trained, tmp_path, capsys):
    import shutil

    from xpdl import plots
    from xpdl.runs.folder import RunFolderError

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for content in ("[]", '{"loss_history": 3}', "nan", "{" * 100000):
        (run / "history.json").write_text(content)
        for draw in (plots.history, lambda r: plots.compare([r])):
            with pytest.raises((ValueError, OSError, RunFolderError)) as info:
                draw(run)
            assert "history.json" in str(info.value) or "source" in str(info.value)
            assert "\n" not in str(info.value)


# ------------------------------------------------------------------ a journal cut off mid-record
@needs_optuna
def test_a_journal_cut_off_mid_record_is_repaired_on_resume_and_the_original_kept(tmp_path, capsys):
    folder = make_study(tmp_path, trials=2, completed=2)
    journal = folder / "journal.log"
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-7])  # a crash during the last write
    readable = journal_trials(folder)  # still readable: Optuna stops at the partial line
    assert readable >= 1
    code, out, err = run_cli(capsys, "tune", "--resume", str(folder), "--trials", "3", "--workers", "0")
    assert code == 0, err
    assert "journal.log" in err and "backup" in err.lower()
    backups = list(folder.glob("journal.log.*"))
    assert [p.read_bytes() for p in backups if p.suffix != ".lock"] == [whole[:-7]]
    assert journal.read_bytes().endswith(b"\n")
    assert journal_trials(folder) == readable  # readable, and every complete record is kept
    code, _, err = run_cli(capsys, "tune", "--resume", str(folder), "--workers", "0")
    assert code == 0, err


@needs_optuna
def test_join_of_a_journal_that_does_not_exist_creates_nothing(tmp_path, capsys):
    code, _, err = run_cli(capsys, "tune", "--join", "nosuch/journal.log", "--study", "s", "--workers", "0")
    one_line_error(code, err, "nosuch/journal.log")
    code, _, err = run_cli(capsys, "tune", "--join", "journal.log", "--study", "s", "--workers", "0")
    one_line_error(code, err, "journal.log")
    assert listing(tmp_path) == []


# ------------------------------------------------------------------ checked before ranks or workers start
@needs_mpi
def test_nproc_with_a_backend_that_cannot_run_is_refused_before_any_rank_starts(tmp_path):
    pytest.importorskip("numpy")
    if __import__("importlib").util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here")
    result = xpdl_run("train", "--nproc", "2", "--backend", "cupy", "--epochs", "1", "--out", "r", cwd=tmp_path)
    one_line_error(result.returncode, result.stderr, "--backend cupy")
    assert "MPI" not in result.stderr and listing(tmp_path) == []


@needs_mpi
@pytest.mark.parametrize(
    "argv, words",
    [
        (["--weight-decay", "0.1"], ["--weight-decay"]),
        (["--resume", "nosuch"], ["nosuch"]),
        (["--data", "mnist", "--data-dir", "nothing-here"], ["mnist"]),
    ],
)
def test_nproc_refuses_what_one_process_would_refuse_before_any_rank_starts(tmp_path, argv, words):
    result = xpdl_run("train", "--nproc", "2", *TINY, "--epochs", "1", *argv, cwd=tmp_path)
    one_line_error(result.returncode, result.stderr, *words)
    assert "MPI" not in result.stderr and listing(tmp_path) == []


@needs_optuna
def test_tune_with_a_backend_that_cannot_run_is_refused_before_any_worker_starts(tmp_path, capsys):
    if __import__("importlib").util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here")
    code, _, err = run_cli(capsys, "tune", "--backend", "cupy", "--search", "lr=1e-3..1e-2", "--out", "t")
    one_line_error(code, err, "--backend cupy")
    assert listing(tmp_path) == []


# ------------------------------------------------------------------ small inputs, bounded work
def test_confusion_with_a_huge_label_is_refused_quickly():
    from xpdl import plots

    start = time.perf_counter()
    with pytest.raises(ValueError, match=str(plots.MAX_CLASSES)):
        plots.confusion([0, 10**8], [0, 0])
    assert time.perf_counter() - start < 5


def test_confusion_of_many_classes_draws_a_bounded_number_of_labels():
    from xpdl import plots

    c = 300
    y = np.arange(c)
    start = time.perf_counter()
    fig = plots.confusion(y, y)
    ax = fig.axes[0]
    assert len(ax.get_xticks()) <= plots.MAX_TICKS and len(ax.get_yticks()) <= plots.MAX_TICKS
    assert len(ax.texts) <= plots.MAX_CELL_TEXTS
    assert time.perf_counter() - start < 20


def test_a_search_with_too_many_choices_is_refused_with_the_limit():
    from xpdl.tune.space import MAX_CHOICES, SearchSpaceError, parse_search

    spec = "batch-size=" + "/".join(str(k) for k in range(1, 20_001))
    with pytest.raises(SearchSpaceError, match=str(MAX_CHOICES)):
        parse_search(spec)


def test_tune_png_draws_a_bounded_number_of_choice_labels(tmp_path):
    from xpdl.tune.report import MAX_TICKS, plot_study
    from xpdl.tune.space import MAX_CHOICES, parse_search

    spec = "batch-size=" + "/".join(str(k) for k in range(1, MAX_CHOICES + 1))
    param = parse_search(spec)
    start = time.perf_counter()
    labels = []
    import xpdl.tune.report as report

    real = report._param_panel

    def spy(ax, points, p):
        real(ax, points, p)
        labels.append(len([t for t in ax.get_xticklabels() if t.get_text()]))

    report._param_panel = spy
    try:
        plot_study([], [param], tmp_path / "tune.png")
    finally:
        report._param_panel = real
    assert labels and labels[0] <= MAX_TICKS
    assert time.perf_counter() - start < 30


# ------------------------------------------------------------------ what a newcomer sees
@pytest.mark.parametrize("name", ["backend", "nproc", "data-dir", "out", "data", "download", "checkpoint-every"])
def test_search_refuses_what_is_not_a_hyperparameter_and_names_the_tunable_ones(name):
    from xpdl.tune.space import SearchSpaceError, parse_search

    with pytest.raises(SearchSpaceError) as info:
        parse_search(f"{name}=a/b")
    text = str(info.value)
    assert f"--search {name}" in text and "lr" in text and "hidden-dims" in text
    assert "backend" not in text.split("expected", 1)[1]


def test_the_keep_probability_is_printed_under_its_own_name():
    from xpdl.tune.report import format_params

    text = format_params({"dropout": 0.651, "lr": 0.01})
    assert "dropout=0.651" not in text and "keep" in text and "0.651" in text


def test_trainer_signature_lists_its_parameters():
    from xpdl.trainer import Trainer

    params = inspect.signature(Trainer.__init__).parameters
    assert not any(p.kind == p.VAR_KEYWORD for p in params.values())
    for name in ("update_rule", "updater_config", "lr_decay", "batch_size", "num_epochs", "seed", "comm"):
        assert name in params


def test_a_resumed_summary_agrees_with_the_epoch_lines(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", *TINY, "--epochs", "1", "--out", "r")
    assert code == 0, err
    code, out, err = run_cli(capsys, "train", "--resume", "r", "--epochs", "2")
    assert code == 0, err
    epoch_lines = [ln for ln in out.splitlines() if ln.startswith("epoch ")]
    last_seconds = epoch_lines[-1].split()[-2]
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    total = history["iterations_per_epoch"] * 2
    summary = out.splitlines()[-1]
    assert f"{total} iterations in {last_seconds} s" in summary, (epoch_lines, summary)


def test_one_process_records_its_rank_count(trained):
    history = json.loads((trained / "history.json").read_text())
    assert history["nproc"] == 1


@needs_mpi
def test_nproc_header_and_history_name_the_rank_count(tmp_path):
    result = xpdl_run("train", "--nproc", "2", *TINY, "--epochs", "1", "--out", "r", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 ranks" in result.stdout.splitlines()[0], result.stdout
    assert json.loads((tmp_path / "r" / "history.json").read_text())["nproc"] == 2


# ------------------------------------------------------------------ SIGTERM and SIGHUP stop the whole job
@needs_mpi
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_nproc_stops_every_rank_and_leaves_a_resumable_folder(tmp_path, sig):
    proc = xpdl_start("train", "--nproc", "2", *TINY, "--epochs", "500", "--out", "run", cwd=tmp_path)
    try:
        wait_for(lambda: (tmp_path / "run" / "checkpoint.npz").exists(), "the first checkpoint", proc)
        os.kill(proc.pid, sig)  # the command alone, as a service manager or a closed terminal does
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "xpdl train --resume run --nproc 2" in err
        wait_for(lambda: not [p for p in processes_mentioning("xpdl train") if _cwd(p) == tmp_path], "no rank left")
        from xpdl.runs.folder import RunFolder

        RunFolder.resume(tmp_path / "run")[0].release()  # the folder is not locked
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


@needs_optuna
@pytest.mark.parametrize(
    "sig, group", [(signal.SIGTERM, False), (signal.SIGHUP, False), (signal.SIGHUP, True), (signal.SIGTERM, True)]
)
def test_a_signal_to_tune_stops_every_worker_and_says_how_to_resume(tmp_path, sig, group):
    """To the command alone (kill PID), or to its whole process group (a closed terminal, kill -- -PGID)."""
    proc = xpdl_start(
        "tune", *TINY, "--epochs", "300", "--search", "lr=1e-3..1e-2", "--trials", "2", "--workers", "1",
        "--pruner", "none", "--out", "t", cwd=tmp_path,
    )  # fmt: skip
    try:
        wait_for(lambda: any((tmp_path / "t" / "trials").glob("*/checkpoint.npz")), "a trial's first epoch", proc)
        os.killpg(proc.pid, sig) if group else os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 130, err
        assert "continue with: xpdl tune --resume t" in err
        wait_for(lambda: not [p for p in processes_mentioning("--worker") if _cwd(p) == tmp_path], "no worker left")
        import optuna

        from xpdl.tune.driver import read_study_file
        from xpdl.tune.study import open_storage

        _, spec, name = read_study_file(tmp_path / "t")
        trials = optuna.load_study(study_name=name, storage=open_storage(spec)).get_trials()
        assert "RUNNING" not in [t.state.name for t in trials]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
