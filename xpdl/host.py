"""Host copies and dtype names of arrays of any supported namespace (NumPy, CuPy, array_api_strict).

What the math, the plots and the gradient checks use to read results back to
NumPy; it imports no backend.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def dtype_name(dtype: Any) -> str:
    """The standard name (``"float32"``) of a dtype of any namespace."""
    text = str(dtype)
    for name in (
        "float64",
        "float32",
        "float16",
        "uint64",
        "uint32",
        "uint16",
        "uint8",
        "int64",
        "int32",
        "int16",
        "int8",
        "bool",
    ):
        if text.endswith(name) or text == f"<class 'numpy.{name}'>" or text.endswith(f"{name}'>"):
            return name
    try:
        return np.dtype(dtype).name
    except TypeError:
        raise TypeError(f"dtype: expected a dtype or dtype name, got {dtype!r}") from None


def to_numpy(arr: Any) -> np.ndarray:
    """A host NumPy copy (or view) of an array of any supported namespace."""
    if isinstance(arr, np.ndarray):
        return arr
    if hasattr(arr, "get") and type(arr).__module__.startswith("cupy"):
        return arr.get()
    if type(arr).__module__.startswith("array_api_strict"):
        import array_api_strict

        return np.asarray(array_api_strict.asarray(arr, device=array_api_strict.Device("CPU_DEVICE"))._array)
    return np.asarray(arr)
