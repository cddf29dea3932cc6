"""Backend selection: names, ``XPDL_BACKEND``, the ``auto`` choice, and the backend an array belongs to.

Names accepted by :func:`get_backend`:

- ``"auto"``: CuPy when it imports *and* a CUDA device runs a small operation,
  otherwise NumPy, with one message on stderr that says why.
- ``"numpy"``: NumPy on the CPU.
- ``"cupy"`` or ``"cupy:N"``: CuPy on CUDA device N (default 0). Raises
  :class:`BackendUnavailable` with the reason and the install command if it
  cannot work here.
- ``"array_api_strict"``: the Array API standard's strict reference namespace
  (NumPy underneath, CPU). Code that runs on it uses only the standard.

The default name comes from the ``XPDL_BACKEND`` environment variable, else ``"auto"``.
"""

from __future__ import annotations

import os
from typing import Any

import array_api_compat
import numpy as np

from xpdl.backends.base import Backend, BackendUnavailable, announce, namespace_key

BACKEND_NAMES = ("auto", "numpy", "cupy", "cupy:N", "array_api_strict")
CUDA_INSTALL_HINT = 'pip install "xpdl[cuda12]" (CUDA 12) or "xpdl[cuda13]" (CUDA 13)'


def numpy_backend() -> Backend:
    """NumPy on the CPU, with the compiled CPU kernels."""
    from xpdl.backends.numpy_backend import NumpyBackend

    return NumpyBackend()


def strict_backend() -> Backend:
    """The Array API strict reference namespace on its CPU device."""
    try:
        import array_api_strict
    except ImportError as exc:
        raise BackendUnavailable(
            "backend 'array_api_strict' needs the array-api-strict package: pip install \"xpdl[test]\""
        ) from exc
    return Backend(
        "array_api_strict", array_api_strict, array_api_strict.Device("CPU_DEVICE"), "array_api_strict asked for"
    )


def cupy_backend(device_id: int = 0) -> Backend:
    """CuPy on CUDA device ``device_id``; raises :class:`BackendUnavailable` saying why not."""
    cupy = _import_cupy()
    why = cuda_problem(cupy, device_id)
    if why:
        raise BackendUnavailable(f"backend 'cupy:{device_id}' cannot run here: {why}")
    from xpdl.backends.cupy_backend import CupyBackend

    return CupyBackend(cupy, device_id)


def _import_cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailable(f"CuPy is not installed ({exc}); install it with {CUDA_INSTALL_HINT}") from exc
    except Exception as exc:  # a broken CUDA library raises all sorts of errors at import
        raise BackendUnavailable(f"CuPy failed to import: {type(exc).__name__}: {exc}") from exc
    return cupy


def cuda_problem(cupy: Any, device_id: int = 0) -> str:
    """Why CUDA device ``device_id`` cannot run a small CuPy operation; ``""`` when it can."""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"the CUDA driver or runtime failed: {type(exc).__name__}: {exc}"
    if count == 0:
        return "no CUDA device is visible"
    if not 0 <= device_id < count:
        return f"device {device_id} asked for, but only devices 0..{count - 1} exist"
    try:
        with cupy.cuda.Device(device_id):
            value = int((cupy.arange(4, dtype=cupy.int32) * 2).sum())
    except Exception as exc:
        return f"a test operation on CUDA device {device_id} failed: {type(exc).__name__}: {exc}"
    if value != 12:
        return f"a test operation on CUDA device {device_id} returned {value}, expected 12"
    return ""


def probe_cupy(device_id: int = 0) -> str:
    """Why CuPy on ``device_id`` is not usable here; ``""`` when it is."""
    try:
        cupy = _import_cupy()
    except BackendUnavailable as exc:
        return str(exc)
    return cuda_problem(cupy, device_id)


_CACHE: dict[str, Backend] = {}


ENV_VARIABLE = "XPDL_BACKEND"


def default_backend_name() -> str:
    """The backend name ``XPDL_BACKEND`` asks for (checked), else ``"auto"``.

    Raises:
        ValueError: the variable holds no known backend name; the message names the variable.
    """
    text = os.environ.get(ENV_VARIABLE, "").strip()
    if not text:
        return "auto"
    return parse_backend_name(text, source=ENV_VARIABLE)


def parse_backend_name(name: Any, source: str = "backend") -> str:
    """The canonical form of a backend name (``"numpy"``, ``"cupy:1"``, ...); the one parser of names.

    ``source`` names where the name came from in the error (``"backend"``, ``"--backend"``,
    ``"XPDL_BACKEND"``).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: not one of :data:`BACKEND_NAMES` (``cupy:N`` with an integer N >= 0).
    """
    if not isinstance(name, str):
        raise TypeError(f"{source}: expected a backend name {BACKEND_NAMES} or a Backend, got {type(name).__name__}")
    key = name.strip().lower()
    if key in ("auto", "numpy", "cupy", "array_api_strict"):
        return key
    if key.startswith("cupy:"):
        digits = key.split(":", 1)[1]
        if digits.isdigit():
            return f"cupy:{int(digits)}"
    raise ValueError(f"{source}: expected one of {', '.join(BACKEND_NAMES)} (N an integer >= 0), got {name!r}")


def get_backend(name: str | Backend | None = None) -> Backend:
    """The :class:`Backend` for ``name`` (see the module docstring); cached per name.

    ``None`` reads ``XPDL_BACKEND``, defaulting to ``"auto"``. A Backend passes through.
    """
    if isinstance(name, Backend):
        return name
    key = default_backend_name() if name is None else parse_backend_name(name)
    if key not in _CACHE:
        _CACHE[key] = _make_backend(key)
    return _CACHE[key]


def _make_backend(key: str) -> Backend:
    if key == "numpy":
        return numpy_backend()
    if key == "array_api_strict":
        return strict_backend()
    if key == "auto":
        return _auto_backend()
    return cupy_backend(0 if key == "cupy" else int(key.split(":", 1)[1]))


def _auto_backend() -> Backend:
    why = probe_cupy(0)
    if not why:
        backend = cupy_backend(0)
        backend.reason = "auto: CuPy imports and CUDA device 0 works"
    else:
        backend = numpy_backend()
        backend.reason = f"auto: using NumPy on the CPU because {why}"
    announce(backend.reason)
    return backend


def backend_of(arr: Any) -> Backend:
    """The backend whose namespace and device array ``arr`` belongs to."""
    if type(arr) is np.ndarray:
        return _CACHE.get("numpy") or get_backend("numpy")
    key = namespace_key(array_api_compat.array_namespace(arr))
    if key == "cupy":
        return get_backend(f"cupy:{arr.device.id}")
    if key in ("numpy", "array_api_strict"):
        return get_backend(key)
    raise TypeError(f"arr: expected a NumPy, CuPy or array_api_strict array, got {type(arr).__name__}")


def describe_paths() -> str:
    """One line naming the training-step implementation of each kind of backend."""
    from xpdl.backends.numpy_backend import kernels_problem

    if kernels_problem():
        cpu = "reference xp (the C++ kernels were not built at install)"
    else:
        from xpdl.backends import cpu_kernels

        cpu = f"numpy-fused (C++ kernels, {cpu_kernels.instruction_set()})"
    return f"CPU: {cpu}; CuPy: cupy-fused-update; others: reference xp"


def available_backends() -> dict[str, str]:
    """Each backend name mapped to ``""`` when it works here, else the reason it does not."""
    out = {"numpy": ""}
    try:
        strict_backend()
        out["array_api_strict"] = ""
    except BackendUnavailable as exc:
        out["array_api_strict"] = str(exc)
    out["cupy"] = probe_cupy(0)
    return out
