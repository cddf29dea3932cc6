"""Resuming runs: killed with SIGKILL at any moment, or stopped and extended, a run ends bit-identical.

"Final parameters" are compared two ways: ``checkpoint.npz`` (the trainer at the
end of the last epoch: current weights, update-rule state, RNG state, counters)
and ``best.npz`` (the weights of the best validation accuracy). Every array of
both files must be equal bit for bit to an uninterrupted run's, and so must the
loss, accuracy and learning-rate histories (wall times naturally differ).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import xpdl
from xpdl import cli
from xpdl.runs.net_checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

EPOCHS = 6
# 35 iterations per epoch; a checkpoint every 4 iterations falls mid-epoch as well as on epoch ends
SETTINGS = ["--hidden-dims", "24,24", "--batch-size", "32", "--backend", "numpy", "--checkpoint-every", "4"]
REPO = Path(xpdl.__file__).resolve().parents[1]
COMPARED_HISTORY = (
    "loss_history",
    "train_acc_history",
    "val_acc_history",
    "lr_history",
    "check_iterations",
    "iterations_done",
    "epochs_done",
    "best_val_acc",
    "best_epoch",
)


@pytest.fixture(autouse=True)
def quiet_backend_notes(monkeypatch):
    monkeypatch.setenv("XPDL_QUIET", "1")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of the test settings."""
    folder = tmp_path_factory.mktemp("resume") / "whole"
    assert cli.main(["train", *SETTINGS, "--epochs", str(EPOCHS), "--out", str(folder), "--quiet"]) == 0
    return folder


def xpdl_process(*argv: str, cwd: Path) -> subprocess.Popen:
    """``python -m xpdl argv`` in a subprocess, stdout piped (so progress comes as one line per epoch)."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "XPDL_QUIET": "1", "PYTHONPATH": path}
    return subprocess.Popen(
        [sys.executable, "-m", "xpdl", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and check it really was killed mid-run (not finished already)."""
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)  # reads and closes the pipes
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {err}"


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended early: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.005)


def resume(folder: Path) -> None:
    proc = xpdl_process("train", "--resume", str(folder), cwd=folder.parent)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.startswith(f"resuming {folder} at epoch ")


def assert_same_run(folder: Path, reference: Path) -> None:
    """Every array of checkpoint.npz and best.npz bit-identical; histories and trainer counters equal."""
    for name in ("checkpoint.npz", "best.npz"):
        ours, theirs = load_checkpoint(folder / name), load_checkpoint(reference / name)
        for group in ("model", "best"):
            assert set(ours.get(group, {})) == set(theirs.get(group, {}))
            for k, v in theirs.get(group, {}).items():
                assert np.array_equal(ours[group][k], v), f"{name} {group}/{k} differs"
        for p, config in theirs.get("updater", {}).items():
            for k, v in config.items():
                assert np.array_equal(ours["updater"][p][k], v), f"{name} updater {p}/{k} differs"
        assert ours.get("rng") == theirs.get("rng"), f"{name} rng state differs"
        if "counters" in theirs:
            for key in ("t", "epoch", "best_val_acc"):
                assert ours["counters"][key] == theirs["counters"][key]
            for key in ("loss_history", "train_acc_history", "val_acc_history", "lr_history"):
                assert ours["history"][key] == theirs["history"][key], f"{name} {key} differs"
    ours, theirs = (json.loads((f / "history.json").read_text()) for f in (folder, reference))
    for key in COMPARED_HISTORY:
        assert ours[key] == theirs[key], f"history.json {key} differs"
    assert (folder / "curves.png").is_file()
    assert not list(folder.glob(".*.tmp"))


def test_killed_after_two_epochs_and_resumed_matches(reference, tmp_path):
    folder = tmp_path / "killed"
    proc = xpdl_process("train", *SETTINGS, "--epochs", str(EPOCHS), "--out", str(folder), cwd=tmp_path)
    lines = []
    while len(lines) < 2:  # the header's two lines, then one line per epoch
        lines.append(proc.stdout.readline())
    while not proc.stdout.readline().startswith("epoch 2/"):
        assert proc.poll() is None
    kill(proc)
    saved_t = load_checkpoint(folder / "checkpoint.npz")["counters"]["t"]
    assert 2 * 35 - 4 <= saved_t < EPOCHS * 35
    resume(folder)
    assert_same_run(folder, reference)


def test_killed_twice_at_arbitrary_moments_and_resumed_matches(reference, tmp_path):
    folder = tmp_path / "killed-twice"
    proc = xpdl_process("train", *SETTINGS, "--epochs", str(EPOCHS), "--out", str(folder), cwd=tmp_path)
    wait_for_file(folder / "checkpoint.npz", proc)
    time.sleep(0.13)  # not aligned with anything: the kill may land in a step or in a save
    kill(proc)
    first_t = load_checkpoint(folder / "checkpoint.npz")["counters"]["t"]
    proc = xpdl_process("train", "--resume", str(folder), cwd=tmp_path)
    proc.stdout.readline()  # "resuming ..." once the checkpoint is loaded
    deadline = time.monotonic() + 60
    while load_checkpoint(folder / "checkpoint.npz")["counters"]["t"] <= first_t:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    kill(proc)
    assert load_checkpoint(folder / "checkpoint.npz")["counters"]["t"] < EPOCHS * 35
    resume(folder)
    assert_same_run(folder, reference)


def test_stopped_and_extended_matches(reference, tmp_path, capsys):
    folder = tmp_path / "extended"
    assert cli.main(["train", *SETTINGS, "--epochs", "2", "--out", str(folder), "--quiet"]) == 0
    assert cli.main(["train", "--resume", str(folder), "--epochs", "4", "--quiet"]) == 0
    assert cli.main(["train", "--resume", str(folder / "checkpoint.npz"), "--epochs", str(EPOCHS)]) == 0
    out = capsys.readouterr().out
    assert f"epoch 5/{EPOCHS}" in out and "epoch 4/" not in out  # only the new epochs are trained
    assert_same_run(folder, reference)


def test_resume_on_another_backend_continues(reference, tmp_path):
    folder = tmp_path / "moved"
    assert cli.main(["train", *SETTINGS, "--epochs", "1", "--out", str(folder), "--quiet"]) == 0
    assert (
        cli.main(["train", "--resume", str(folder), "--epochs", "2", "--backend", "array_api_strict", "--quiet"]) == 0
    )
    history = json.loads((folder / "history.json").read_text())
    assert history["epochs_done"] == 2 and history["settings"]["backend"] == "array_api_strict"
    ours = load_checkpoint(folder / "checkpoint.npz")
    theirs = json.loads((reference / "history.json").read_text())
    np.testing.assert_allclose(ours["history"]["loss_history"], theirs["loss_history"][:70], rtol=1e-4)
