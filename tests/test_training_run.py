"""Training is a function: a TrainingRun built in Python trains exactly as the same xpdl train options."""

from __future__ import annotations

import json

import pytest

from xpdl import cli as xpdl_cli
from xpdl.training import TrainingRun, train

SMALL = {"hidden_dims": [16], "epochs": 1, "backend": "numpy", "quiet": True}


def test_a_run_built_in_python_writes_the_same_folder_as_the_command_line(tmp_path, capsys):
    assert train(TrainingRun(**SMALL, out=str(tmp_path / "py"))) == 0
    code = xpdl_cli.main(
        [
            "train",
            "--hidden-dims",
            "16",
            "--epochs",
            "1",
            "--backend",
            "numpy",
            "--quiet",
            "--out",
            str(tmp_path / "cli"),
        ]
    )
    assert code == 0
    py, cli = (json.loads((tmp_path / name / "history.json").read_text()) for name in ("py", "cli"))
    assert py["loss_history"] == cli["loss_history"] and py["settings"] == cli["settings"]


def test_from_options_takes_dashes_or_underscores_and_names_an_unknown_setting():
    assert TrainingRun.from_options({"hidden-dims": [8], "lr_decay": 0.9}) == TrainingRun(hidden_dims=[8], lr_decay=0.9)
    with pytest.raises(ValueError, match="learning_rate: not a training setting; expected one of .*lr"):
        TrainingRun.from_options({"learning_rate": 0.1})


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [("lr", -1.0, "settings.lr"), ("hidden_dims", [0], "settings.hidden_dims"), ("data", "imagenet", "settings.data")],
)
def test_a_bad_setting_from_python_is_one_line_exit_2_and_no_folder(tmp_path, capsys, field, value, words):
    run = TrainingRun(**{**SMALL, field: value}, out=str(tmp_path / "bad"))
    assert train(run) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def test_train_leaves_the_callers_run_unchanged(tmp_path):
    run = TrainingRun(**SMALL, batchnorm=False, out=str(tmp_path / "r"))
    assert train(run) == 0
    assert run.normalization is None and run.batchnorm is False
