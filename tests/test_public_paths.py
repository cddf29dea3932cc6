"""The names users import keep their paths; a checkpoint written before the layout change loads and resumes."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

import xpdl

RELEASE_RUN = Path(__file__).parent / "data" / "release-0.1.0-run"  # written by xpdl 0.1.0 before the move

PUBLIC = {
    "xpdl.layers": [
        "affine_forward",
        "affine_backward",
        "relu_forward",
        "relu_backward",
        "affine_relu_forward",
        "affine_relu_backward",
        "softmax_loss",
    ],
    "xpdl.dropout_layers": [
        "dropout_forward",
        "dropout_backward",
        "affine_relu_dropout_forward",
        "affine_relu_dropout_backward",
    ],
    "xpdl.bn_layers": [
        "batchnorm_forward",
        "batchnorm_backward",
        "batchnorm_backward_alt",
        "affine_bn_relu_forward",
        "affine_bn_relu_backward",
        "layernorm_forward",
        "layernorm_backward",
    ],
    "xpdl.updater": ["sgd", "sgd_momentum", "rmsprop", "adam", "adamw", "UpdateRule"],
    "xpdl.fc_net": ["FullyConnectedNet"],
    "xpdl.trainer": ["Trainer"],
    "xpdl.gradient_check": ["eval_numerical_gradient", "eval_numerical_gradient_array", "rel_error"],
    "xpdl.rng": ["Generator"],
    "xpdl": [
        "FullyConnectedNet",
        "Trainer",
        "get_backend",
        "Backend",
        "BackendUnavailable",
        "available_backends",
        "Generator",
        "TrainingRun",
        "train",
        "load_dataset",
        "__version__",
    ],
    "xpdl.plots": ["history", "weights", "confusion", "compare"],
    "xpdl.tune": ["tune", "TuneError", "SearchSpaceError"],
    "xpdl.backends": ["get_backend", "Backend", "BackendUnavailable", "backend_of", "to_numpy"],
    "xpdl.data": ["load_dataset", "load_raw", "prepare", "DATASETS", "DatasetError"],
    "xpdl.runs": [
        "load_checkpoint",
        "build_model",
        "save_checkpoint",
        "save_model",
        "restore_trainer",
        "CheckpointError",
        "CheckpointSpec",
        "SPEC",
    ],
    "xpdl.training": ["TrainingRun", "train", "DEFAULTS", "UsageError"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_import(module):
    mod = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(mod, name)]
    assert missing == []


def test_top_level_names_are_the_same_objects():
    from xpdl.fc_net import FullyConnectedNet
    from xpdl.runs.net_checkpoint import load_checkpoint
    from xpdl.trainer import Trainer

    assert xpdl.FullyConnectedNet is FullyConnectedNet and xpdl.Trainer is Trainer
    assert xpdl.runs.load_checkpoint is load_checkpoint


def test_checkpoints_written_before_the_layout_change_load():
    from xpdl.runs import build_model, load_checkpoint

    for name in ("best.npz", "checkpoint.npz"):
        ckpt = load_checkpoint(RELEASE_RUN / name)
        net = build_model(ckpt, backend="numpy")
        assert net.config()["hidden_dims"] == [12]
        X = np.zeros((3, 64), np.float32)
        assert net.predict(X).shape == (3,)


def test_a_run_written_before_the_layout_change_resumes_and_evaluates(tmp_path, capsys):
    run = tmp_path / "old"
    shutil.copytree(RELEASE_RUN, run)
    code, out, err = run_cli(capsys, "train", "--resume", str(run), "--epochs", "3", "--backend", "numpy", "--quiet")
    assert code == 0, err
    assert "best val acc" in out
    code, out, err = run_cli(capsys, "evaluate", str(run), "--backend", "numpy")
    assert code == 0 and "test accuracy on digits" in out
