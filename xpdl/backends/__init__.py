"""The device layer: the :class:`Backend` base class, its NumPy and CuPy subclasses, and selection by name.

``base`` holds the base class (the reference math of a training step),
``registry`` the names, ``XPDL_BACKEND`` and the ``auto`` choice; ``numpy_backend``
+ ``cpu_kernels`` and ``cupy_backend`` + ``cuda_kernels`` the accelerated
subclasses. Nothing here imports the model or the trainer.
"""

from xpdl.backends.base import Backend, BackendUnavailable, cpu_name
from xpdl.backends.registry import (
    BACKEND_NAMES,
    CUDA_INSTALL_HINT,
    ENV_VARIABLE,
    available_backends,
    backend_of,
    default_backend_name,
    describe_paths,
    get_backend,
    parse_backend_name,
    probe_cupy,
)
from xpdl.host import dtype_name, to_numpy

__all__ = [
    "BACKEND_NAMES",
    "CUDA_INSTALL_HINT",
    "ENV_VARIABLE",
    "Backend",
    "BackendUnavailable",
    "available_backends",
    "backend_of",
    "cpu_name",
    "default_backend_name",
    "describe_paths",
    "dtype_name",
    "get_backend",
    "parse_backend_name",
    "probe_cupy",
    "to_numpy",
]
