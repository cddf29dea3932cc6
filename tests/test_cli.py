"""The ``xpdl`` command-line tool: train, evaluate, info, run folders, progress output and error messages."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

import xpdl
from xpdl import cli
from xpdl.backends import probe_cupy
from xpdl.cli.evaluate import confusion_matrix
from xpdl.data.datasets import apply_preprocessing, load_raw
from xpdl.progress import Progress, choose_mode, format_epoch_line
from xpdl.runs.net_checkpoint import build_model, load_checkpoint
from xpdl.training.options import DEFAULTS

SMALL = ["--hidden-dims", "16", "--epochs", "2", "--backend", "numpy"]
REPO = Path(xpdl.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def quiet_backend_notes(monkeypatch):
    monkeypatch.setenv("XPDL_QUIET", "1")
    monkeypatch.delenv("XPDL_BACKEND", raising=False)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """A finished 2-epoch run folder (hidden layer of 16, NumPy)."""
    folder = tmp_path_factory.mktemp("cli") / "run"
    assert cli.main(["train", *SMALL, "--out", str(folder), "--quiet"]) == 0
    return folder


# ------------------------------------------------------------------ train
def test_train_writes_a_run_folder(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "train", *SMALL, "--out", str(tmp_path / "r"))
    assert code == 0
    folder = tmp_path / "r"
    assert sorted(p.name for p in folder.iterdir()) == [
        "best.npz",
        "checkpoint.npz",
        "curves.png",
        "history.json",
        "weights.png",
    ]
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((folder / "history.json").read_text())
    ipe = history["iterations_per_epoch"]
    assert ipe == (1797 - 360 - 300) // 64
    assert len(history["loss_history"]) == len(history["loss_epochs"]) == 2 * ipe
    assert history["check_iterations"] == [1, ipe, 2 * ipe] and history["check_epochs"] == [1 / ipe, 1, 2]
    assert len(history["val_acc_history"]) == len(history["lr_history"]) == len(history["time_history"]) == 3
    assert history["settings"]["hidden_dims"] == [16] and history["settings"]["epochs"] == 2
    ck = load_checkpoint(folder / "checkpoint.npz")
    assert ck["counters"]["t"] == 2 * ipe and ck["preprocessing"]["dataset"] == "digits"
    assert load_checkpoint(folder / "best.npz")["info"]["best_val_acc"] == max(history["val_acc_history"])
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"run {folder}: digits (1137 train / 300 val / 360 test) on numpy")
    assert [line.split("  ")[0] for line in lines[2:4]] == ["epoch 1/2", "epoch 2/2"]
    assert lines[-1].startswith("best val acc ") and "samples/s" in lines[-1] and "numpy (CPU" in lines[-1]


def test_default_run_reaches_97_percent_validation_accuracy(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "train", "--backend", "numpy", "--out", str(tmp_path / "d"), "--quiet")
    assert code == 0
    history = json.loads((tmp_path / "d" / "history.json").read_text())
    assert history["settings"] == {**DEFAULTS, "backend": "numpy"}
    assert history["best_val_acc"] >= 0.97
    assert len(out.strip().splitlines()) == 1  # --quiet: the summary line only


def test_default_run_folder_is_timestamped_under_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_cli(capsys, "train", *SMALL, "--epochs", "1", "--quiet")[0] == 0
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name[:8].isdigit() and (folder / "checkpoint.npz").is_file()


def test_out_folder_holding_a_run_is_refused(small_run, capsys):
    code, _, err = run_cli(capsys, "train", *SMALL, "--out", str(small_run))
    assert code == 2 and "--out" in err and "--resume" in err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--hidden-dims", "25x"], ["--hidden-dims", "positive integers", "'25x'"]),
        (["--dropout", "1.5"], ["--dropout", "keep probability", "'1.5'"]),
        (["--epochs", "0"], ["--epochs", "positive integer", "'0'"]),
        (["--batch-size", "many"], ["--batch-size", "positive integer", "'many'"]),
        (["--lr", "-1"], ["--lr", "> 0", "'-1'"]),
        (["--reg", "nan"], ["--reg", "finite", "'nan'"]),
        (["--data", "imagenet"], ["--data", "invalid choice", "'imagenet'", "digits"]),
        (["--update-rule", "lion"], ["--update-rule", "'lion'", "adam"]),
        (["--backend", "tpu"], ["--backend", "numpy", "'tpu'"]),
        (["--dtype", "float16"], ["--dtype", "'float16'", "float32"]),
        (["--checkpoint-every", "-3"], ["--checkpoint-every", "positive integer"]),
    ],
)
def test_bad_train_arguments_name_the_option(capsys, argv, words):
    code, _, err = run_cli(capsys, "train", *argv)
    assert code == 2
    for word in words:
        assert word in err
    assert "Traceback" not in err


def test_missing_dataset_folder_is_a_clean_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "train", "--data", "cifar10", "--data-dir", str(tmp_path / "none"))
    assert code == 2
    assert "CIFAR-10 not found" in err and "--download" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # no empty run folder left behind


def test_unavailable_backend_is_a_clean_error(capsys):
    if not probe_cupy(0):
        pytest.skip("cupy works here")
    code, _, err = run_cli(capsys, "train", "--backend", "cupy")
    assert code == 2 and "--backend cupy" in err and "Traceback" not in err


# ------------------------------------------------------------------ resume options
def test_resume_refuses_to_change_the_runs_settings(small_run, capsys):
    code, _, err = run_cli(capsys, "train", "--resume", str(small_run), "--lr", "0.1", "--hidden-dims", "16")
    assert code == 2
    assert "--lr (saved 0.003, given 0.1)" in err and "--hidden-dims" not in err  # same value: fine


def test_resume_of_a_finished_run_says_so(small_run, capsys):
    code, out, _ = run_cli(capsys, "train", "--resume", str(small_run))
    assert code == 0 and "complete (2 epochs)" in out and "--epochs" in out


def test_resume_cannot_go_back_in_epochs(small_run, capsys):
    code, _, err = run_cli(capsys, "train", "--resume", str(small_run), "--epochs", "1")
    assert code == 2 and "--epochs 1" in err and "2 epochs already" in err


def test_resume_of_a_missing_run_is_a_clean_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path / "nope"))
    assert code == 2 and "no such run folder" in err


def test_resume_of_a_corrupted_checkpoint_is_a_clean_error(tmp_path, capsys):
    (tmp_path / "checkpoint.npz").write_bytes(b"PK\x03\x04garbage")
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path))
    assert code == 2 and "checkpoint.npz" in err and "corrupted" in err and "Traceback" not in err


# ------------------------------------------------------------------ evaluate
def evaluate_numbers(out: str) -> tuple[str, np.ndarray]:
    lines = out.strip().splitlines()
    acc_line = next(line for line in lines if line.startswith("test accuracy"))
    start = next(i for i, line in enumerate(lines) if line.startswith("true \\ pred"))
    matrix = np.array([[int(v) for v in line.split()[1:]] for line in lines[start + 1 : start + 11]])
    return acc_line, matrix


def test_evaluate_prints_accuracy_and_confusion_matrix(small_run, capsys):
    code, out, _ = run_cli(capsys, "evaluate", str(small_run), "--backend", "numpy")
    assert code == 0 and out.startswith(f"{small_run / 'best.npz'}: net 64-16-10")
    acc_line, matrix = evaluate_numbers(out)
    assert matrix.shape == (10, 10) and matrix.sum() == 360
    assert acc_line == f"test accuracy on digits: {np.trace(matrix) / 360:.4f} ({np.trace(matrix)} / 360)"
    ck = load_checkpoint(small_run / "best.npz")
    net = build_model(ck, "numpy")
    raw = load_raw("digits")
    X = apply_preprocessing(raw["X_test"], ck["preprocessing"]["mean_image"], scale=16.0)
    np.testing.assert_array_equal(matrix, confusion_matrix(raw["y_test"], net.predict(X), 10))


def test_evaluate_gives_the_same_numbers_on_another_backend(small_run, capsys):
    numbers = evaluate_numbers(run_cli(capsys, "evaluate", str(small_run), "--backend", "numpy")[1])
    other = evaluate_numbers(run_cli(capsys, "evaluate", str(small_run), "--backend", "array_api_strict")[1])
    assert numbers[0] == other[0] and np.array_equal(numbers[1], other[1])


def test_evaluate_a_checkpoint_file(small_run, capsys):
    code, out, _ = run_cli(capsys, "evaluate", str(small_run / "checkpoint.npz"), "--backend", "numpy")
    assert code == 0 and "test accuracy on digits" in out


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["{missing}"], ["no such run folder or checkpoint file"]),
        (["{run}", "--data", "mnist", "--data-dir", "{missing}"], ["MNIST", "not found"]),
        (["{run}", "--backend", "gpu"], ["--backend", "'gpu'"]),
    ],
)
def test_evaluate_errors_are_clean(small_run, tmp_path, capsys, argv, words):
    argv = [a.format(run=small_run, missing=tmp_path / "missing") for a in argv]
    code, _, err = run_cli(capsys, "evaluate", *argv)
    assert code == 2 and "Traceback" not in err
    for word in words:
        assert word.lower() in err.lower()


# ------------------------------------------------------------------ info
def test_info_lists_backends_devices_and_versions(capsys):
    code, out, _ = run_cli(capsys, "info")
    assert code == 0
    assert "numpy             works" in out and "array_api_strict" in out
    cupy_line = next(line for line in out.splitlines() if line.strip().startswith("cupy "))
    assert ("works" in cupy_line) == (probe_cupy(0) == "")
    assert "auto              picks" in out and "cores" in out
    assert f"numpy {np.__version__}" in out and "matplotlib" in out and "tqdm" in out


# ------------------------------------------------------------------ progress output
class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_mode_follows_the_terminal():
    assert choose_mode(quiet=True, stream=FakeTerminal()) == "quiet"
    assert choose_mode(quiet=False, stream=FakeTerminal()) == "bar"
    assert choose_mode(quiet=False, stream=io.StringIO()) == "lines"


def small_trainer(on_iteration):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((50, 4)), rng.integers(3, size=50)
    net = xpdl.FullyConnectedNet(input_dim=4, hidden_dims=[5], num_classes=3, seed=0, backend="numpy")
    data = {"X_train": X[:40], "y_train": y[:40], "X_val": X[40:], "y_val": y[40:]}
    return xpdl.Trainer(net, data, batch_size=10, num_epochs=2, verbose=False, on_iteration=on_iteration)


def test_progress_bar_shows_epoch_loss_and_accuracies():
    stream = FakeTerminal()
    progress = Progress("bar", stream)
    small_trainer(progress).train()
    progress.close()
    text = stream.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text and "4/4" in text
    assert "loss " in text and "train " in text and "val " in text


def test_progress_lines_one_per_epoch():
    stream = io.StringIO()
    tr = small_trainer(Progress("lines", stream))
    tr.train()
    lines = stream.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert lines[-1] == format_epoch_line(tr)
    assert f"val acc {tr.val_acc_history[-1]:.4f}" in lines[-1]


def test_python_dash_m_xpdl_runs_the_tool():
    result = subprocess.run(
        [sys.executable, "-m", "xpdl", "--help"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0 and "{train,evaluate,info,tune}" in result.stdout


# ------------------------------------------------------------------ normalization and AdamW
def test_layer_norm_and_adamw_runs_resume_exactly(tmp_path, capsys):
    """--normalization layernorm --update-rule adamw: 1 epoch + resume to 2 equals 2 epochs at once."""
    opts = [
        "train",
        "--hidden-dims",
        "16,12",
        "--backend",
        "numpy",
        "--normalization",
        "layernorm",
        "--update-rule",
        "adamw",
        "--weight-decay",
        "0.05",
        "--quiet",
    ]
    assert run_cli(capsys, *opts, "--epochs", "2", "--out", str(tmp_path / "whole"))[0] == 0
    assert run_cli(capsys, *opts, "--epochs", "1", "--out", str(tmp_path / "part"))[0] == 0
    assert run_cli(capsys, "train", "--resume", str(tmp_path / "part"), "--epochs", "2", "--quiet")[0] == 0
    whole, part = (load_checkpoint(tmp_path / n / "checkpoint.npz") for n in ("whole", "part"))
    assert whole["config"]["normalization"] == "layernorm" and whole["update_rule"] == "adamw"
    assert whole["updater"]["W1"]["weight_decay"] == 0.05
    for group in ("model", "best"):
        for k, v in whole[group].items():
            assert np.array_equal(part[group][k], v), (group, k)
    net = build_model(whole, "array_api_strict")
    assert net.normalization == "layernorm" and not net.bn_params


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--weight-decay", "0.1"], "--weight-decay: only --update-rule adamw decays weights, got --update-rule adam"),
        (["--batchnorm", "--normalization", "layernorm"], "--batchnorm contradicts --normalization layernorm"),
        (["--normalization", "groupnorm"], "--normalization groupnorm: only conv nets (--model conv) have it"),
    ],
)
def test_normalization_and_weight_decay_mistakes_are_one_line(tmp_path, capsys, argv, match):
    code, out, err = run_cli(capsys, "train", *SMALL, "--out", str(tmp_path / "r"), *argv)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_no_batchnorm_is_the_seed_spelling_of_normalization_none(tmp_path, capsys):
    assert run_cli(capsys, "train", *SMALL, "--no-batchnorm", "--out", str(tmp_path / "r"), "--quiet")[0] == 0
    assert load_checkpoint(tmp_path / "r" / "best.npz")["config"]["normalization"] is None


def test_a_closed_output_pipe_ends_quietly(small_run):
    """``xpdl evaluate RUN | head -1``: no BrokenPipeError traceback when the reader goes away."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "xpdl", "evaluate", str(small_run)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "XPDL_QUIET": "1"},
    )
    proc.stdout.close()  # the reader goes away before anything is printed
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err, err
