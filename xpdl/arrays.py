"""Array-namespace helpers shared by the xp-written modules (no NumPy or CuPy named here).

``namespace(x=..., w=...)`` returns the Array API namespace of its keyword arrays
and refuses arrays from two libraries or two devices with an error that names
the arguments.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
from array_api_compat import device, is_array_api_obj

__all__ = ["check_mode", "device", "is_array_api_obj", "namespace"]


def namespace(**arrays: Any) -> Any:
    """The namespace shared by the keyword ``arrays`` (``None`` values are skipped).

    Raises:
        TypeError: an argument is not an array, or two come from different libraries.
        ValueError: two arrays live on different devices.
    """
    named = [(k, a) for k, a in arrays.items() if a is not None]
    for k, a in named:
        if not is_array_api_obj(a):
            raise TypeError(f"{k}: expected an array (NumPy, CuPy or Array API), got {type(a).__name__}")
    try:
        xp = array_api_compat.array_namespace(*(a for _, a in named))
    except TypeError as exc:
        kinds = ", ".join(f"{k}: {type(a).__module__}.{type(a).__name__}" for k, a in named)
        raise TypeError(f"arrays from different libraries in one call ({kinds})") from exc
    first_name, first = named[0]
    first_dev = device(first)
    for k, a in named[1:]:
        if device(a) != first_dev:
            raise ValueError(
                f"{k} is on device {device(a)!r} but {first_name} is on {first_dev!r}: move them to one device first"
            )
    return xp


def check_mode(mode: Any, where: str) -> str:
    """``mode`` if it is ``'train'`` or ``'test'``; otherwise a ValueError naming ``where``."""
    if mode not in ("train", "test"):
        raise ValueError(f"{where}['mode']: expected 'train' or 'test', got {mode!r}")
    return mode
