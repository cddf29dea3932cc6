"""``xpdl train --model conv`` / ``three-layer-conv``: run folders, filter pictures, evaluate, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

from xpdl import cli
from xpdl.cnn import ConvNet
from xpdl.runs.net_checkpoint import build_model, load_checkpoint
from xpdl.training.options import MODEL_DEFAULTS

SMALL_CONV = ["--model", "conv", "--conv-dims", "4,6", "--hidden-dims", "16", "--epochs", "2", "--backend", "numpy"]


@pytest.fixture(autouse=True)
def quiet_backend_notes(monkeypatch):
    monkeypatch.setenv("XPDL_QUIET", "1")
    monkeypatch.delenv("XPDL_BACKEND", raising=False)


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cliconv") / "run"
    assert cli.main(["train", *SMALL_CONV, "--out", str(folder), "--quiet"]) == 0
    return folder


def test_conv_run_folder_config_and_filter_picture(conv_run):
    assert (conv_run / "weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ck = load_checkpoint(conv_run / "checkpoint.npz")
    cfg = ck["config"]
    assert cfg["model"] == "conv" and cfg["input_dim"] == [1, 8, 8] and cfg["conv_dims"] == [4, 6]
    assert cfg["channels_last"] is True and cfg["weight_scale"] == "he"
    assert cfg["normalization"] == MODEL_DEFAULTS["conv"]["normalization"]
    settings = json.loads((conv_run / "history.json").read_text())["settings"]
    assert settings["model"] == "conv" and settings["filter_size"] == 3
    net = build_model(ck, "numpy")
    assert isinstance(net, ConvNet) and tuple(net.params["W1"].shape) == (4, 1, 3, 3)


def test_header_describes_the_conv_net(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "train", *SMALL_CONV[:-4], "--epochs", "1", "--backend", "numpy",
                           "--out", str(tmp_path / "h"))  # fmt: skip
    assert code == 0
    assert "net 1x8x8-conv3x3:4-conv3x3:6-16-10, spatial batch norm" in out


def test_evaluate_a_conv_run_on_two_backends(conv_run, capsys):
    code, out, _ = run_cli(capsys, "evaluate", str(conv_run), "--backend", "numpy")
    assert code == 0 and "test accuracy on digits" in out
    code, other, _ = run_cli(capsys, "evaluate", str(conv_run), "--backend", "array_api_strict")
    assert code == 0
    pick = lambda text: [line for line in text.splitlines() if line.startswith("test accuracy")]
    assert pick(out) == pick(other)


def test_conv_run_resumes_exactly(tmp_path, capsys):
    opts = ["train", *SMALL_CONV[:-4], "--backend", "numpy", "--dropout", "0.7", "--quiet"]
    assert run_cli(capsys, *opts, "--epochs", "2", "--out", str(tmp_path / "whole"))[0] == 0
    assert run_cli(capsys, *opts, "--epochs", "1", "--out", str(tmp_path / "part"))[0] == 0
    assert run_cli(capsys, "train", "--resume", str(tmp_path / "part"), "--epochs", "2", "--quiet")[0] == 0
    whole, part = (load_checkpoint(tmp_path / n / "checkpoint.npz") for n in ("whole", "part"))
    for group in ("model", "best"):
        for k, v in whole[group].items():
            assert np.array_equal(part[group][k], v), (group, k)


def test_three_layer_conv_model(tmp_path, capsys):
    code, _, _ = run_cli(capsys, "train", "--model", "three-layer-conv", "--conv-dims", "6", "--hidden-dims", "20",
                         "--epochs", "1", "--backend", "numpy", "--quiet", "--out", str(tmp_path / "t"))  # fmt: skip
    assert code == 0
    ck = load_checkpoint(tmp_path / "t" / "best.npz")
    assert ck["config"]["filter_size"] == 7 and ck["config"]["conv_dims"] == [6]
    shapes = {k: v.shape for k, v in ck["model"].items()}
    assert shapes == {"W1": (6, 1, 7, 7), "b1": (6,), "W2": (96, 20), "b2": (20,), "W3": (20, 10), "b3": (10,)}


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--model", "conv", "--conv-dims", "0"], ["--conv-dims", "positive integers"]),
        (["--model", "conv", "--conv-dims", "4,4,4,4"], ["conv_dims", "divisible by 16"]),
        (["--model", "conv", "--filter-size", "4"], ["filter_size", "odd"]),
        (["--model", "three-layer-conv", "--conv-dims", "4,4"], ["three-layer-conv has one conv layer"]),
        (["--model", "conv", "--normalization", "layernorm"], ["--normalization layernorm: only fully-connected"]),
        (["--normalization", "groupnorm"], ["--normalization groupnorm: only conv nets"]),
        (["--weight-scale", "he"], ["weight_scale"]),
        (["--model", "mlp"], ["--model", "invalid choice"]),
    ],
)
def test_bad_conv_options_are_one_line_errors(tmp_path, capsys, argv, words):
    code, _, err = run_cli(capsys, "train", *argv, "--epochs", "1", "--backend", "numpy", "--out", str(tmp_path / "x"))
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and all(w in err for w in words), err


def test_conv_defaults_reach_98_5_percent_test_accuracy_on_digits(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "train", "--model", "conv", "--backend", "numpy", "--quiet",
                           "--out", str(tmp_path / "d"))  # fmt: skip
    assert code == 0
    test_acc = float(out.split("test acc ")[1].split(";")[0])
    assert test_acc >= 0.985, out


def _mpi_problem() -> str:
    from xpdl.parallel import launch

    try:
        import mpi4py  # noqa: F401

        launch.find_mpiexec()
    except (ImportError, launch.LaunchError) as exc:
        return str(exc)
    return ""


@pytest.mark.skipif(bool(_mpi_problem()), reason=f"needs mpi4py and mpiexec: {_mpi_problem()}")
def test_nproc_2_conv_run_matches_one_process(tmp_path):
    """Synchronized spatial batch norm and the ranks' rows of dropout: two ranks train the one-process net."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    opts = ["train", "--model", "conv", "--conv-dims", "4,6", "--hidden-dims", "16", "--epochs", "1",
            "--dtype", "float64", "--backend", "numpy", "--quiet"]  # fmt: skip
    env = {**__import__("os").environ, "PYTHONPATH": str(repo), "XPDL_QUIET": "1"}
    for name, extra in (("two", ["--nproc", "2"]), ("one", [])):
        cmd = [sys.executable, "-m", "xpdl", *opts, *extra, "--out", str(tmp_path / name)]
        subprocess.run(cmd, check=True, env=env, timeout=300, capture_output=True)
    two, one = (json.loads((tmp_path / n / "history.json").read_text())["loss_history"] for n in ("two", "one"))
    np.testing.assert_allclose(two, one, rtol=1e-12)
