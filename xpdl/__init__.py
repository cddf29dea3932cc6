"""xpdl: a small deep-learning package written once against an array namespace.

The same layers, batch norm, dropout, update rules, :class:`FullyConnectedNet`
and :class:`Trainer` run on NumPy (CPU), CuPy (CUDA GPU) or any Array API
namespace. :func:`get_backend` chooses one (``"auto"``: the GPU if one works,
else the CPU, saying why).
"""

from xpdl.backend import Backend, BackendUnavailable, available_backends, get_backend
from xpdl.backend import describe_paths as fast_paths_info
from xpdl.fc_net import FullyConnectedNet
from xpdl.rng import Generator
from xpdl.trainer import Trainer

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendUnavailable",
    "FullyConnectedNet",
    "Generator",
    "Trainer",
    "__version__",
    "available_backends",
    "fast_paths_info",
    "get_backend",
]
