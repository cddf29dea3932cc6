"""``xpdl tune``: search specs, real worker processes on a journal file, kill -9 and Ctrl-C recovery, PostgreSQL.

Every study trains tiny nets (one hidden layer of 16) for a few epochs on the
embedded digits dataset, with the reference step (``XPDL_FUSED=0``: no numba
compilation in each new worker process).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import xpdl
from xpdl import cli
from xpdl.tune.space import SearchSpaceError, option_argv, parse_search, parse_space, train_parser

optuna = pytest.importorskip("optuna", reason="optuna is not installed (pip install 'xpdl[tune]')")
from optuna.trial import TrialState  # noqa: E402

REPO = Path(xpdl.__file__).resolve().parents[1]
TINY = ["--hidden-dims", "16", "--backend", "numpy"]
NO_CHECKPOINTS = ["--checkpoint-every", "100000"]  # only after the last iteration: no fsync every epoch
SEARCH = ["--search", "lr=1e-5..1e-1:log", "--search", "batch-size=32/64"]


@pytest.fixture(autouse=True)
def fast_quiet_env(monkeypatch):
    monkeypatch.setenv("XPDL_QUIET", "1")
    monkeypatch.setenv("XPDL_FUSED", "0")
    monkeypatch.delenv("XPDL_BACKEND", raising=False)


def xpdl_cmd(*argv: str) -> list[str]:
    return [sys.executable, "-m", "xpdl", *argv]


def run_xpdl(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        xpdl_cmd(*argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def main_in_process(*argv: str) -> subprocess.CompletedProcess:
    """``xpdl argv`` run by :func:`xpdl.cli.main` in this process (its workers are still processes)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def start_xpdl(*argv: str) -> subprocess.Popen:
    """``xpdl argv`` in a new session (its workers share its process group)."""
    return subprocess.Popen(
        xpdl_cmd(*argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )


def journal_trials(folder: Path) -> list:
    from xpdl.tune.driver import read_study_file
    from xpdl.tune.study import open_storage

    _, spec, name = read_study_file(folder)
    return optuna.load_study(study_name=name, storage=open_storage(spec)).get_trials(deepcopy=False)


def progress_lines(stdout: str) -> list[str]:
    return [ln for ln in stdout.splitlines() if re.match(r"trial +\d+ ", ln)]


def states(trials) -> list[str]:
    return [t.state.name for t in trials]


def wait_for(predicate, what: str, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# ------------------------------------------------------------------ search specs
def test_search_types_come_from_the_train_parser():
    lr = parse_search("lr=1e-4..1e-2:log")
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-4, 1e-2, True)
    batch = parse_search("batch-size=16..256")
    assert (batch.kind, batch.low, batch.high, batch.log) == ("int", 16, 256, False)
    dims = parse_search("hidden-dims=256,256/512,256/1024")
    assert dims.kind == "choice" and dims.choices == ("256,256", "512,256", "1024")
    assert parse_search("update-rule=adam/sgd_momentum").choices == ("adam", "sgd_momentum")


def test_searched_values_become_train_arguments_the_train_parser_reads_back():
    parser = train_parser()
    cases = {"lr": 0.00123456789, "batch-size": 48, "hidden-dims": "512,256", "batchnorm": "off", "dropout": 0.5}
    argv = [a for name, value in cases.items() for a in option_argv(name, value)]
    args = parser.parse_args(argv)
    assert (args.lr, args.batch_size, args.hidden_dims, args.batchnorm, args.dropout) == (
        0.00123456789,
        48,
        [512, 256],
        False,
        0.5,
    )


@pytest.mark.parametrize(
    "spec, words",
    [
        ("learning-rate=1e-4..1e-2", "not an xpdl train option"),
        ("lr=1e-2..1e-4", "LOW < HIGH"),
        ("reg=0..1e-2:log", "log range needs LOW > 0"),
        ("dropout=0.5..1.5", "keep probability"),
        ("batch-size=16..0.5", "positive integer"),
        ("hidden-dims=16..64", "range needs a numeric option"),
        ("update-rule=adam/adagrad", "expected one of"),
        ("lr=1e-4..1e-2:ln", "LOW..HIGH:log"),
        ("out=a/b", "not a hyperparameter"),
    ],
)
def test_a_bad_search_spec_is_a_one_line_error(spec, words):
    with pytest.raises(SearchSpaceError, match=words) as info:
        parse_search(spec)
    assert "\n" not in str(info.value) and spec.split("=")[0] in str(info.value)


def test_an_option_both_fixed_and_searched_is_refused():
    with pytest.raises(SearchSpaceError, match="either fixed or searched"):
        parse_space(["lr=1e-4..1e-2"], {"lr": 0.1})


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--search", "lr=1e-2..1e-4"], "--search lr: expected LOW < HIGH"),
        (["--lr", "0.1", "--search", "lr=1e-4..1e-2"], "either fixed or searched"),
        (["--search", "nope=1..2"], "not an xpdl train option"),
        (["--resume", "somewhere", "--search", "lr=1e-4..1e-2"], "only --trials, --workers and --quiet"),
        (["--join", "postgresql://h/db"], "--join needs --study"),
    ],
)
def test_tune_usage_errors_exit_2_with_one_line(argv, words, capsys, tmp_path):
    code = cli.main(["tune", *argv, "--out", str(tmp_path / "t")] if "--resume" not in argv else ["tune", *argv])
    out, err = capsys.readouterr()
    assert code == 2 and words in err and err.count("\n") == 1 and err.startswith("xpdl tune: error:")
    assert not (tmp_path / "t" / "tune.json").exists()


def test_without_optuna_tune_says_how_to_install_it_and_import_xpdl_never_imports_optuna():
    code = (
        "import sys; import xpdl, xpdl.cli, xpdl.tune, xpdl.tune.space; "
        "assert 'optuna' not in sys.modules, 'optuna imported'; sys.modules['optuna'] = None; "
        "sys.exit(xpdl.cli.main(['tune', '--search', 'lr=1e-3..1e-2']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and 'pip install "xpdl[tune]"' in proc.stderr


# ------------------------------------------------------------------ a study on the journal file
@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """An 8-trial study with 2 worker processes, then resumed to 10 trials: (folder, first output, resume output)."""
    folder = tmp_path_factory.mktemp("tune") / "study"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XPDL_QUIET", "1")
        mp.setenv("XPDL_FUSED", "0")
        first = main_in_process(
            "tune",
            *TINY,
            *NO_CHECKPOINTS,
            "--epochs",
            "4",
            *SEARCH,
            "--sampler",
            "random",
            "--trials",
            "8",
            "--workers",
            "2",
            "--seed",
            "3",
            "--out",
            str(folder),
        )
        second = main_in_process("tune", "--resume", str(folder), "--trials", "10", "--workers", "2")
    return folder, first, second


def test_a_study_with_two_workers_completes_its_trials(finished_study):
    folder, first, _ = finished_study
    assert first.returncode == 0, first.stderr
    lines = progress_lines(first.stdout)
    assert len(lines) == 8 and all(("COMPLETE" in ln) or ("PRUNED" in ln) for ln in lines)
    assert "2 workers x 1 BLAS threads" in first.stdout or os.cpu_count() != 2
    workers = {t.user_attrs["worker"] for t in journal_trials(folder)}
    assert len(workers) == 4  # two workers in the first run, two in the resumed one


def test_each_trial_is_a_run_folder_xpdl_evaluate_reads(finished_study, capsys):
    folder, _, _ = finished_study
    summary = json.loads((folder / "summary.json").read_text())
    best = summary["best"]
    run = folder / best["run"]
    assert sorted(p.name for p in run.iterdir()) == [
        "best.npz",
        "checkpoint.npz",
        "curves.png",
        "history.json",
        "weights.png",
    ]
    history = json.loads((run / "history.json").read_text())
    assert history["best_val_acc"] == best["value"]
    assert history["settings"]["seed"] == 3 + best["number"] and history["settings"]["hidden_dims"] == [16]
    assert history["settings"]["lr"] == best["params"]["lr"]
    assert str(history["settings"]["batch_size"]) == best["params"]["batch-size"]
    assert cli.main(["evaluate", str(run), "--backend", "numpy"]) == 0
    assert "test accuracy on digits" in capsys.readouterr().out


def test_summary_and_plot_describe_every_trial(finished_study):
    folder, first, second = finished_study
    summary = json.loads((folder / "summary.json").read_text())
    trials = summary["trials"]
    assert [t["number"] for t in trials] == list(range(10))
    assert {t["state"] for t in trials} <= {"COMPLETE", "PRUNED"}
    assert all(t["run"] == f"trials/trial-{t['number']:04d}" and (folder / t["run"]).is_dir() for t in trials)
    assert summary["best"]["value"] == max(t["value"] for t in trials if t["state"] == "COMPLETE")
    assert (folder / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best 5 (validation accuracy)" in first.stdout and "10 trials" in second.stdout


def test_resume_raises_the_budget_and_runs_only_the_new_trials(finished_study):
    folder, _, second = finished_study
    assert second.returncode == 0, second.stderr
    assert "8 of 10 trials done" in second.stdout
    new = [ln.split()[1] for ln in progress_lines(second.stdout)]
    assert sorted(new, key=int) == ["8", "9"]


def test_the_median_pruner_stops_poor_trials(tmp_path):
    from xpdl.tune import tune

    study = tune(
        {"lr": "1e-6..1e-1:log"},
        trials=8,
        workers=1,
        sampler="random",
        pruner="median",
        seed=0,
        out=tmp_path / "p",
        epochs=5,
        hidden_dims=[16],
        backend="numpy",
        checkpoint_every=100000,
    )
    trials = study.get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(trials) == 8 and pruned and all(t.state != TrialState.FAIL for t in trials)
    for t in pruned:  # stopped early, with a finished run folder
        history = json.loads((tmp_path / "p" / t.user_attrs["run"] / "history.json").read_text())
        assert history["epochs_done"] == max(t.intermediate_values) < 5
        assert (tmp_path / "p" / t.user_attrs["run"] / "curves.png").exists()
    log = (tmp_path / "p" / "logs" / "worker-0.log").read_text()
    for t in pruned:  # each trial ends with a result line in its worker's log, pruned ones too
        assert re.search(rf"^trial {t.number}: pruned after epoch {max(t.intermediate_values)} ", log, re.M), log


def test_kill_9_of_every_process_then_resume_leaves_no_trial_running(tmp_path):
    folder = tmp_path / "k"
    proc = start_xpdl(
        "tune",
        *TINY,
        *NO_CHECKPOINTS,
        "--epochs",
        "60",
        "--search",
        "lr=1e-3..1e-2:log",
        "--trials",
        "3",
        "--workers",
        "2",
        "--pruner",
        "none",
        "--out",
        str(folder),
    )
    try:

        def two_running() -> bool:
            ready = (folder / "journal.log").exists() and (folder / "tune.json").exists()
            return ready and states(journal_trials(folder)).count("RUNNING") == 2

        wait_for(two_running, "two running trials")
        time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    killed = [t for t in journal_trials(folder) if t.state == TrialState.RUNNING]
    assert killed  # usually both; one may have finished in the moment before the kill
    resumed = run_xpdl("tune", "--resume", str(folder), "--workers", "2")
    assert resumed.returncode == 0, resumed.stderr
    trials = journal_trials(folder)
    assert "RUNNING" not in states(trials) and "WAITING" not in states(trials)
    assert states(trials).count("COMPLETE") == 3
    by_number = {t.number: t for t in trials}
    for t in killed:
        failed = by_number[t.number]
        assert failed.state == TrialState.FAIL and "worker was gone" in failed.user_attrs["error"]
        retry = next(r for r in trials if r.system_attrs.get("failed_trial") == t.number)
        assert retry.state == TrialState.COMPLETE and retry.params == failed.params
    summary = json.loads((folder / "summary.json").read_text())
    assert sorted(s["state"] for s in summary["trials"]) == ["COMPLETE"] * 3 + ["FAIL"] * len(killed)


def test_ctrl_c_stops_every_worker_and_says_how_to_resume(tmp_path):
    folder = tmp_path / "c"
    proc = start_xpdl(
        "tune",
        *TINY,
        "--epochs",
        "200",
        "--search",
        "lr=1e-3..1e-2:log",
        "--trials",
        "4",
        "--workers",
        "2",
        "--pruner",
        "none",
        "--out",
        str(folder),
    )
    # two workers start (imports, the study, the first epoch) slowly on a loaded machine: 40 s was not always enough
    wait_for(lambda: any((folder / "trials").glob("*/checkpoint.npz")), "a trial's first epoch", timeout=120)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the parent and its workers
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"continue with: xpdl tune --resume {folder}" in err
    trials = journal_trials(folder)
    logs = "".join(p.read_text() for p in (folder / "logs").glob("worker-*.log"))
    seen = [(t.number, t.state.name, t.user_attrs, t.system_attrs) for t in trials]
    assert "RUNNING" not in states(trials), (seen, logs)
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert interrupted and all(
        any(w.system_attrs.get("failed_trial") == t.number for w in trials) for t in interrupted
    ), (seen, logs)
    assert "interrupted at iteration" in logs  # each run stopped as xpdl train does on Ctrl-C


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0])
def test_ctrl_c_at_any_moment_stops_cleanly_and_loses_no_trial(tmp_path, delay):
    """Ctrl-C while the workers import, open the study, start a trial or train: every worker stops
    (none is reported as failed, no traceback), no trial is left running, each interrupted trial is
    queued again."""
    folder = tmp_path / "c"
    proc = start_xpdl(
        "tune", *TINY, "--epochs", "200", "--search", "lr=1e-3..1e-2:log", "--trials", "4", "--workers", "2",
        "--pruner", "none", "--out", str(folder),
    )  # fmt: skip
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    # 130, or ended by SIGINT itself (how Python reports a Ctrl-C that came while it was loading code)
    assert proc.returncode in (130, -signal.SIGINT), err
    assert "exited with code" not in err, err
    if not (folder / "tune.json").exists():  # stopped before the study was made
        return
    logs = "".join(p.read_text() for p in (folder / "logs").glob("worker-*.log"))
    # the only tracebacks are Optuna's notes of the interrupted trials
    assert logs.count("Traceback") == logs.count("failed with parameters"), logs
    assert "Exception ignored" not in logs, logs
    trials = journal_trials(folder)
    seen = [(t.number, t.state.name, t.user_attrs, t.system_attrs) for t in trials]
    assert "RUNNING" not in states(trials), (seen, logs)
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert all(any(w.system_attrs.get("failed_trial") == t.number for w in trials) for t in interrupted), (seen, logs)
    assert not any("error" in t.user_attrs for t in trials), (seen, logs)


def test_a_stop_signal_dropped_where_it_landed_stops_the_worker_at_the_next_check():
    """A KeyboardInterrupt raised in a weak-reference callback is printed and dropped by Python: the
    worker still knows a stop was asked for, and stops at its next safe point."""
    script = r"""
import gc, os, signal, sys, weakref
from xpdl.tune.worker import STOP
STOP.install()
STOP.armed = True

class Thing:
    pass

thing = Thing()
ref = weakref.ref(thing, lambda r: os.kill(os.getpid(), signal.SIGINT))
del thing
gc.collect()
print("went on", STOP.requested, STOP.armed, flush=True)
try:
    STOP.check()
except KeyboardInterrupt:
    print("stopped at the check", flush=True)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert "went on True False" in proc.stdout, proc.stdout + proc.stderr
    assert "stopped at the check" in proc.stdout, proc.stdout + proc.stderr


def test_an_error_that_a_stop_signal_turned_into_still_queues_the_trial_again(tmp_path):
    """Optuna's journal lock, interrupted while it releases, raises FileNotFoundError instead of the
    KeyboardInterrupt: after a stop signal the worker counts any error as the interrupt."""
    folder = tmp_path / "s"
    made = run_xpdl("tune", *TINY, "--search", "lr=1e-3..1e-2:log", "--trials", "2", "--workers", "0",
                    "--out", str(folder))  # fmt: skip
    assert made.returncode == 0, made.stderr
    study_file = json.loads((folder / "tune.json").read_text())
    script = r"""
import os, signal, sys, time
from xpdl.tune import worker

def train(run, epoch_callback=None):
    try:
        os.kill(os.getpid(), signal.SIGINT)  # the KeyboardInterrupt lands in the trial's training ...
        time.sleep(5)
    except BaseException:  # ... where a cleanup turns it into another error, as Optuna's lock release does
        raise FileNotFoundError(2, "No such file or directory", "journal.log.lock.rename") from None
    raise AssertionError("no KeyboardInterrupt came")

worker.train = train
print("exit", worker.run_worker(sys.argv[1], sys.argv[2], sys.argv[3], 0))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script, study_file["storage"], study_file["study"], str(folder)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=folder,
    )  # fmt: skip
    assert "exit 130" in proc.stdout, proc.stdout + proc.stderr
    trials = journal_trials(folder)
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"], [(t.number, t.state.name) for t in trials]
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].params == trials[0].params


# ------------------------------------------------------------------ PostgreSQL: several machines
def postgres_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl (Debian: /usr/lib/postgresql/VERSION/bin), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on a unix socket in a temporary folder; its SQLAlchemy URL."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary)")
    bindir = postgres_binaries()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin or on PATH; "
            "install the postgresql package"
        )
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="xpdl-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the PostgreSQL server as")
        os.chown(base, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = base / "data"
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "xpdl", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"listen_addresses = ''\nunix_socket_directories = '{base}'\nport = 5432\nfsync = off\n")
    subprocess.run(
        [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "start"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield f"postgresql+psycopg2://xpdl@/postgres?host={base}&port=5432"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(base, ignore_errors=True)


def test_two_join_processes_share_one_study_on_postgresql(postgres_url, tmp_path):
    made = main_in_process(
        "tune",
        *TINY,
        *NO_CHECKPOINTS,
        "--epochs",
        "8",
        *SEARCH,
        "--trials",
        "6",
        "--workers",
        "0",
        "--storage",
        postgres_url,
        "--study",
        "shared",
        "--out",
        str(tmp_path / "a"),
    )
    assert made.returncode == 0, made.stderr
    assert "--join postgresql+psycopg2://xpdl" in made.stdout and "--study shared" in made.stdout
    machines = [
        start_xpdl(
            "tune", "--join", postgres_url, "--study", "shared", "--workers", "1", "--out", str(tmp_path / f"m{k}")
        )
        for k in range(2)
    ]
    for proc in machines:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials()
    assert len(trials) == 6 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    runs = [sorted(p.name for p in (tmp_path / f"m{k}" / "trials").glob("trial-*")) for k in range(2)]
    assert sorted(runs[0] + runs[1]) == [f"trial-{t.number:04d}" for t in trials]
    assert all(runs), f"one machine ran no trial: {runs}"
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    summary = json.loads((tmp_path / "m0" / "summary.json").read_text())
    assert len(summary["trials"]) == 6


def test_the_tune_parser_takes_every_tunable_train_option():
    tune_parser = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[
        "tune"
    ]
    tune_options = {o for a in tune_parser._actions for o in a.option_strings}
    train_options = {o for a in train_parser()._actions for o in a.option_strings}
    assert train_options - tune_options == {"--nproc"}  # a trial is one process
    assert {"--lr", "--hidden-dims", "--no-batchnorm", "--epochs", "--backend"} <= tune_options
