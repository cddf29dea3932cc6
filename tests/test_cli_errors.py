"""Honest mistakes on the command line: one line on stderr, exit 2, nothing created and nothing lost.

Exit 1 stays reserved for a diverged run and 130 for Ctrl-C. Most cases run the
tool in-process (``cli.main``); the lock race and the backend note need real processes.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

import xpdl
from xpdl.cli.train import train_main
from xpdl.data.datasets import load_raw
from xpdl.runs import checkpoint
from xpdl.runs.folder import LOCK_FILE, RunFolder
from xpdl.runs.net_checkpoint import load_checkpoint
from xpdl.training import run as training_run

SMALL = ["--hidden-dims", "8", "--epochs", "2", "--backend", "numpy", "--quiet"]
REPO = Path(xpdl.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("XPDL_QUIET", "1")
    monkeypatch.delenv("XPDL_BACKEND", raising=False)
    monkeypatch.chdir(tmp_path)


def one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and "error: " in err and "Traceback" not in err, err
    for word in words:
        assert word in err, err


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------ --out
def test_out_under_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, _, err = run_cli(capsys, "train", *SMALL, "--out", "afile/run")
    one_line_error(code, err, "--out afile/run", "cannot create the run folder", "Not a directory")
    assert listing(tmp_path) == ["afile"]


@pytest.mark.parametrize("code_", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_out_that_cannot_be_created(tmp_path, capsys, monkeypatch, code_):
    def refuse(self, *args, **kwargs):
        raise OSError(code_, os.strerror(code_), str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    code, _, err = run_cli(capsys, "train", *SMALL, "--out", "ro/run")
    one_line_error(code, err, "--out ro/run", os.strerror(code_))
    assert listing(tmp_path) == []


def test_out_in_a_read_only_folder_that_exists(tmp_path, capsys, monkeypatch):
    (tmp_path / "ro").mkdir()
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(LOCK_FILE):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr("xpdl.runs.folder.os.open", read_only)
    code, _, err = run_cli(capsys, "train", *SMALL, "--out", "ro")
    one_line_error(code, err, "--out ro", "Read-only file system")
    assert listing(tmp_path) == ["ro"]


def test_a_full_disk_before_the_first_checkpoint_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    def full(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "atomic_write", full)
    code, _, err = run_cli(capsys, "train", *SMALL, "--out", "run")
    one_line_error(code, err, "best.npz: cannot write: No space left on device", "nothing of the run was kept")
    assert listing(tmp_path) == []


def test_a_full_disk_later_keeps_the_last_checkpoint_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    real = checkpoint.atomic_write
    saves = []

    def fills_up(path, write):
        saves.append(Path(path).name)
        if saves.count("checkpoint.npz") == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, write)

    monkeypatch.setattr(checkpoint, "atomic_write", fills_up)
    code, _, err = run_cli(capsys, "train", *SMALL, "--out", "run")
    one_line_error(code, err, "checkpoint.npz: cannot write: No space left on device", "--resume run")
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz")["counters"]["epoch"] == 1
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    monkeypatch.undo()  # also undoes the chdir
    monkeypatch.setenv("XPDL_QUIET", "1")
    assert run_cli(capsys, "train", "--resume", str(tmp_path / "run"))[0] == 0


def test_a_real_full_disk(tmp_path, capsys):
    """ENOSPC from a 64 KB tmpfs (needs root and mount; the injected tests above cover other machines)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("mounting a tiny tmpfs needs root and the mount command")
    try:
        code, _, err = run_cli(capsys, "train", *SMALL, "--hidden-dims", "256,256", "--out", str(mnt / "run"))
        one_line_error(code, err, "No space left on device")
        assert listing(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_second_process_cannot_take_a_folder_in_use(tmp_path, capsys):
    with RunFolder.create("busy"):
        code, _, err = run_cli(capsys, "train", *SMALL, "--out", "busy")
        one_line_error(code, err, "--out busy", "another xpdl process is writing this run folder")
        assert listing(tmp_path) == ["busy", f"busy/{LOCK_FILE}"]
    assert listing(tmp_path) == ["busy"]
    assert run_cli(capsys, "train", *SMALL, "--out", "busy")[0] == 0
    assert not (tmp_path / "busy" / LOCK_FILE).exists()


def test_two_runs_started_together_on_one_folder_cannot_both_win(tmp_path):
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "XPDL_QUIET": "1", "PYTHONPATH": path}
    argv = [sys.executable, "-m", "xpdl", "train", *SMALL, "--out", "same"]
    procs = [
        subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    (err,) = [err for code, err in results if code == 2]
    assert "another xpdl process" in err or "already holds a run" in err


# ------------------------------------------------------------------ data
def test_data_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "data").write_text("x")
    code, _, err = run_cli(capsys, "train", *SMALL, "--data", "mnist", "--data-dir", "data", "--download")
    one_line_error(code, err, "--data-dir data: exists and is not a folder")
    assert listing(tmp_path) == ["data"]


def test_data_dir_that_cannot_be_written_with_download(tmp_path, capsys, monkeypatch):
    def read_only(name, data_dir, download):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(Path(data_dir) / name))

    monkeypatch.setattr(training_run, "load_raw", read_only)
    code, _, err = run_cli(capsys, "train", *SMALL, "--data", "mnist", "--data-dir", "ro", "--download")
    one_line_error(code, err, "--data-dir ro: cannot download into it: Permission denied")
    assert listing(tmp_path) == []


def small_digits(n: int):
    def load(name, data_dir, download):
        raw = load_raw("digits")
        return {**raw, "X_train": raw["X_train"][:n], "y_train": raw["y_train"][:n]}

    return load


def test_num_val_as_large_as_the_training_set(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", *SMALL, "--num-val", "1437")
    one_line_error(code, err, "--num-val 1437: expected fewer than the 1437 training images of digits")
    assert listing(tmp_path) == []


def test_a_small_dataset_gets_a_validation_split_that_fits(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(training_run, "load_raw", small_digits(40))
    assert run_cli(capsys, "train", *SMALL, "--out", "run", "--batch-size", "10")[0] == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["iterations_per_epoch"] == 3  # 30 training images after the 10 held out


def test_num_val_is_saved_and_resumed(tmp_path, capsys):
    assert run_cli(capsys, "train", *SMALL, "--epochs", "1", "--num-val", "500", "--out", "run")[0] == 0
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz")["settings"]["num_val"] == 500
    code, out, _ = run_cli(capsys, "train", "--resume", "run", "--epochs", "2")
    assert code == 0 and "(937 train / 500 val / 360 test)" in out
    assert json.loads((tmp_path / "run" / "history.json").read_text())["epochs_done"] == 2


def test_evaluate_on_data_with_another_feature_count(tmp_path, capsys, monkeypatch):
    assert run_cli(capsys, "train", *SMALL, "--epochs", "1", "--out", "run")[0] == 0

    def mnist_like(name, data_dir, download):
        return {
            "X_test": np.zeros((3, 28, 28), np.uint8),
            "y_test": np.zeros(3, np.int64),
            "classes": tuple("0123456789"),
        }

    monkeypatch.setattr(training_run, "load_raw", mnist_like)
    code, _, err = run_cli(capsys, "evaluate", "run", "--data", "mnist")
    one_line_error(code, err, "--data mnist: has 784 features per sample, the model expects 64")


# ------------------------------------------------------------------ options and settings
@pytest.mark.parametrize("value", ["-1", str(2**128), "1e3"])
def test_seed_out_of_range(tmp_path, capsys, value):
    code, _, err = run_cli(capsys, "train", *SMALL, "--seed", value)
    one_line_error(code, err, "--seed", repr(value))
    assert listing(tmp_path) == []


def test_the_largest_seed_trains(tmp_path, capsys):
    assert run_cli(capsys, "train", *SMALL, "--epochs", "1", "--seed", str(2**128 - 1), "--out", "r")[0] == 0


@pytest.mark.parametrize("command", [["train", *SMALL[:-3]], ["evaluate", "somewhere"], ["info"]])
def test_a_bad_xpdl_backend_variable_is_named(tmp_path, capsys, monkeypatch, command):
    if command[0] == "evaluate":
        assert run_cli(capsys, "train", *SMALL, "--epochs", "1", "--out", "somewhere")[0] == 0
    monkeypatch.setenv("XPDL_BACKEND", "garbage")
    code, _, err = run_cli(capsys, *command)
    assert code == 2 and "XPDL_BACKEND" in err and "'garbage'" in err and "--backend" not in err, err
    assert err.count("\n") == 1


def test_xpdl_backend_is_honoured_and_shown(capsys, monkeypatch):
    monkeypatch.setenv("XPDL_BACKEND", "numpy")
    code, out, _ = run_cli(capsys, "info")
    assert code == 0 and "default           numpy (XPDL_BACKEND=numpy)" in out
    code, out, _ = run_cli(capsys, "train", "--hidden-dims", "8", "--epochs", "1", "--out", "r")
    assert code == 0 and " on numpy (CPU" in out.splitlines()[0]


def test_a_setting_the_trainer_refuses_is_one_line(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError("batch_size: batch norm needs at least 2 samples per batch, got 1")

    monkeypatch.setattr(training_run, "Trainer", refuse)
    code, _, err = run_cli(capsys, "train", *SMALL, "--batch-size", "1")
    one_line_error(code, err, "batch_size: batch norm needs at least 2")
    assert listing(tmp_path) == []


def test_argparse_errors_are_one_line(capsys):
    code, _, err = run_cli(capsys, "train", "--epochs", "zero")
    one_line_error(code, err, "argument --epochs", "'zero'")


# ------------------------------------------------------------------ Ctrl-C and divergence
def interrupt_at(monkeypatch, t: int) -> None:
    real = training_run.Progress.__call__

    def call(self, trainer):
        if trainer.t == t:
            raise KeyboardInterrupt
        real(self, trainer)

    monkeypatch.setattr(training_run.Progress, "__call__", call)


def test_ctrl_c_before_the_first_checkpoint_keeps_nothing_and_gives_no_resume_advice(tmp_path, capsys, monkeypatch):
    interrupt_at(monkeypatch, 3)
    code, _, err = run_cli(capsys, "train", *SMALL, "--out", "run")
    assert code == 130 and "--resume" not in err and "before the first checkpoint" in err
    assert listing(tmp_path) == []


def test_ctrl_c_after_a_checkpoint_says_resume_and_resume_works(tmp_path, capsys, monkeypatch):
    interrupt_at(monkeypatch, 20)  # 17 iterations per epoch
    code, _, err = run_cli(capsys, "train", *SMALL, "--out", "run")
    assert code == 130 and "xpdl train --resume run" in err
    monkeypatch.undo()  # also undoes the chdir
    monkeypatch.setenv("XPDL_QUIET", "1")
    assert run_cli(capsys, "train", "--resume", str(tmp_path / "run"))[0] == 0


def test_a_diverged_run_keeps_its_history_and_curves_and_prints_no_warnings(tmp_path, capsys):
    code, _, err = run_cli(
        capsys,
        "train",
        *SMALL,
        "--update-rule",
        "sgd",
        "--lr",
        "1e8",
        "--no-batchnorm",
        "--dropout",
        "0",
        "--out",
        "run",
    )
    assert code == 1 and err.count("\n") == 1 and err.startswith("xpdl train: training diverged: loss became nan")
    assert "Warning" not in err
    assert {"history.json", "curves.png"} <= set(listing(tmp_path / "run"))
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["loss_history"] and history["val_acc_history"]


# ------------------------------------------------------------------ what is printed
def test_header_describes_the_net_it_trains(capsys):
    code, out, _ = run_cli(
        capsys,
        "train",
        "--hidden-dims",
        "none",
        "--epochs",
        "1",
        "--backend",
        "numpy",
        "--out",
        "r",
        "--batch-size",
        "5000",
    )
    lines = out.splitlines()
    assert code == 0 and lines[1].startswith("net 64-10, float32; adam")
    assert "batch 1137 (all 1137 training images; --batch-size 5000), 1 epoch x 1 iteration" in lines[1]
    assert "1 iteration in " in lines[-1]


def test_samples_per_second_count_the_batch_actually_used(tmp_path, capsys, monkeypatch):
    real = training_run.train_with_progress

    def two_seconds(*args, **kwargs):
        real(*args, **kwargs)
        return 2.0

    monkeypatch.setattr(training_run, "train_with_progress", two_seconds)
    code, out, _ = run_cli(
        capsys, "train", *SMALL[:-1], "--hidden-dims", "none", "--epochs", "1", "--batch-size", "5000", "--out", "r"
    )
    assert code == 0 and "1 iteration in 2.0 s (568 samples/s)" in out  # 1137 / 2 s


def test_quiet_prints_no_backend_note(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("XPDL_QUIET", "XPDL_BACKEND")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-m", "xpdl", "train", "--hidden-dims", "8", "--epochs", "1", "--quiet", "--out", "r"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert len(result.stdout.splitlines()) == 1


# ------------------------------------------------------------------ train_main
def test_train_main_calls_back_every_epoch(tmp_path, capsys):
    epochs = []
    assert train_main([*SMALL, "--out", "run"], epoch_callback=lambda tr: epochs.append(tr.epoch)) == 0
    assert epochs == [1, 2]


def test_train_main_propagates_a_callback_error_after_finalizing_the_run(tmp_path, capsys):
    class Pruned(Exception):
        pass

    def prune(trainer):
        raise Pruned(f"epoch {trainer.epoch}")

    with pytest.raises(Pruned, match="epoch 1"):
        train_main([*SMALL, "--out", "run"], epoch_callback=prune)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["epochs_done"] == 1 and (tmp_path / "run" / "curves.png").is_file()
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_train_main_returns_2_for_a_bad_option(capsys):
    assert train_main(["--epochs", "0"]) == 2
    assert "argument --epochs" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--nproc", "100000"],
        ["tune", "--search", "lr=1e-4..1e-2:log", "--workers", "100000", "--trials", "100000"],
    ],
)
def test_a_process_count_beyond_the_machine_is_refused_before_anything_starts(tmp_path, capsys, argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "expected 1 to" in err and "processes on this" in err and "got 100000" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--storage", "garbage://x"], "--storage garbage://x: NoSuchModuleError"),
        (
            ["--storage", "postgresql+psycopg2://u:secret@127.0.0.1:1/db"],
            "--storage postgresql+psycopg2://u:***@127.0.0.1:1/db",
        ),
        (["--trials", "0"], "--trials: expected a positive integer, got 0"),
    ],
)
def test_a_tune_storage_that_cannot_open_is_one_line_and_leaves_nothing(tmp_path, capsys, argv, match):
    pytest.importorskip("optuna", reason="optuna is not installed: xpdl tune is not available")
    code, out, err = run_cli(capsys, "tune", "--search", "lr=1e-4..1e-2:log", *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and match in err, err
    assert "secret" not in err
    assert list(tmp_path.iterdir()) == []
