"""Hyperparameter search on Optuna: ``xpdl tune`` and :func:`tune` from Python.

``space`` parses search specs against the training options, ``study`` opens
storages and builds samplers and pruners, ``worker`` runs trials as
:class:`xpdl.training.TrainingRun` s, ``report`` writes ``summary.json`` and
``tune.png``, ``driver`` creates a study and drives its worker processes.
Optuna is imported only when a study runs. Nothing here imports the command line.
"""

from xpdl.tune.driver import TuneError, tune
from xpdl.tune.space import SearchSpaceError

__all__ = ["SearchSpaceError", "TuneError", "tune"]
