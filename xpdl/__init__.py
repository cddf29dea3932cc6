"""xpdl: a small deep-learning package written once against an array namespace.

The same layers, batch norm, dropout, update rules, :class:`FullyConnectedNet`, :class:`ConvNet`
and :class:`Trainer` run on NumPy (CPU), CuPy (CUDA GPU) or any Array API
namespace. :func:`get_backend` chooses one (``"auto"``: the GPU if one works,
else the CPU, saying why).
"""

from xpdl.backends import Backend, BackendUnavailable, available_backends, get_backend
from xpdl.backends import describe_paths as fast_paths_info
from xpdl.cnn import ConvNet, ThreeLayerConvNet
from xpdl.fc_net import FullyConnectedNet
from xpdl.rng import Generator
from xpdl.trainer import Trainer
from xpdl.version import __version__


def __getattr__(name: str):  # the training function and the datasets load on first use, not on import xpdl
    if name in ("TrainingRun", "train"):
        from xpdl import training

        return getattr(training, name)
    if name == "load_dataset":
        from xpdl.data import load_dataset

        return load_dataset
    raise AttributeError(f"module 'xpdl' has no attribute {name!r}")


__all__ = [
    "Backend",
    "BackendUnavailable",
    "ConvNet",
    "FullyConnectedNet",
    "Generator",
    "ThreeLayerConvNet",
    "Trainer",
    "TrainingRun",
    "__version__",
    "available_backends",
    "fast_paths_info",
    "get_backend",
    "load_dataset",
    "train",
]
