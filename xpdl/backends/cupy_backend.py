"""CuPy on one CUDA device: device copies, Philox words made on the device, and fused update kernels.

:class:`CupyBackend` overrides the reference methods of :class:`xpdl.backends.Backend`
where a CUDA kernel (:mod:`xpdl.backends.cuda_kernels`) does the same work in one pass:
random words for dropout (no host mask is copied each step) and each update
rule with a body in :data:`xpdl.backends.cuda_kernels.UPDATE_BODIES` (one in-place
kernel per parameter). The forward and backward passes are the reference ones,
run on the GPU. This module imports CuPy only through the object passed in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xpdl.backends import cuda_kernels
from xpdl.backends.base import Backend
from xpdl.host import to_numpy
from xpdl.rng import register_word_source


class CupyBackend(Backend):
    """CuPy on CUDA device ``device_id`` (built by :func:`xpdl.backends.cupy_backend`, which checks it works)."""

    is_gpu = True
    step_path = "cupy-fused-update"

    def __init__(self, cupy: Any, device_id: int) -> None:
        import array_api_compat.cupy

        super().__init__(
            f"cupy:{device_id}", array_api_compat.cupy, cupy.cuda.Device(device_id), f"cupy:{device_id} asked for"
        )
        self._cupy = cupy
        register_word_source(self.owns, self.philox_uint32)  # dropout draws CuPy arrays' words on the device

    def asarray(self, obj: Any, dtype: Any = None) -> Any:
        if dtype is not None:
            dtype = self.dtype(dtype)
        with self._cupy.cuda.Device(self.device.id):
            if not isinstance(obj, self._cupy.ndarray):
                obj = to_numpy(obj)
            return self._cupy.asarray(obj, dtype=dtype)

    def synchronize(self) -> None:
        self._cupy.cuda.Device(self.device.id).synchronize()

    def describe(self) -> str:
        props = self._cupy.cuda.runtime.getDeviceProperties(self.device.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"{self.name} ({name}, {props['totalGlobalMem'] / 2**30:.1f} GiB)"

    def philox_uint32(self, key: int, counter: int, shape: tuple[int, ...]) -> Any:
        with self._cupy.cuda.Device(self.device.id):
            return cuda_kernels.philox_uint32(key, counter, shape, self._cupy.empty(1, dtype=np.uint32))

    def update_kernel(self, rule_name: str) -> Any:
        if rule_name not in cuda_kernels.UPDATE_BODIES:
            return None
        return lambda w, g, state, s: cuda_kernels.fused_update(rule_name, w, g, state, s)
