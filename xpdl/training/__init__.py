"""Training as a function: a typed description of a run (:class:`TrainingRun`) and the function that runs it.

``options`` declares the settings once (defaults, checks, the option parsers that
``xpdl train`` and ``xpdl tune`` share); ``run`` builds the data, the net, the
Trainer and the run folder from a :class:`TrainingRun` and trains.
"""

from xpdl.training.options import DEFAULTS, UsageError
from xpdl.training.run import TrainingRun, train

__all__ = ["DEFAULTS", "TrainingRun", "UsageError", "train"]
