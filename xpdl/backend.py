"""Every backend decision lives here: which array library runs the math, on which device.

A :class:`Backend` bundles an array namespace ``xp`` (array-api-compat's wrapper of
NumPy or CuPy, or ``array_api_strict``), the device its arrays live on, and the few
host/device operations the rest of xpdl needs. The math modules never ask which
backend they run on: they derive ``xp`` from their array arguments.

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
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BACKEND_NAMES = ("auto", "numpy", "cupy", "cupy:N", "array_api_strict")
CUDA_INSTALL_HINT = 'pip install "xpdl[cuda12]" (CUDA 12) or "xpdl[cuda13]" (CUDA 13)'


class BackendUnavailable(RuntimeError):
    """A backend was asked for by name but cannot run on this machine."""


@dataclass(eq=False)
class Backend:
    """One array library on one device.

    Attributes:
        name: canonical name, e.g. ``"numpy"``, ``"cupy:0"``, ``"array_api_strict"``.
        xp: the array namespace (Array API standard functions).
        device: the device object arrays are created on (``xp``'s own type).
        reason: one line saying why this backend was chosen.
    """

    name: str
    xp: Any
    device: Any
    reason: str = ""
    _cupy: Any = field(default=None, repr=False)

    @property
    def is_gpu(self) -> bool:
        """True when arrays live on a CUDA device."""
        return self._cupy is not None

    def asarray(self, obj: Any, dtype: Any = None) -> Any:
        """Copy host data (NumPy array, list, scalar) or an array of any backend to this device.

        ``dtype`` may be a name (``"float32"``) or a dtype of any namespace.
        """
        if dtype is not None:
            dtype = self.dtype(dtype)
        if self._cupy is not None:
            with self._cupy.cuda.Device(self.device.id):
                if not isinstance(obj, self._cupy.ndarray):
                    obj = to_numpy(obj)
                return self._cupy.asarray(obj, dtype=dtype)
        if self.xp is not _numpy_xp():
            obj = to_numpy(obj) if not isinstance(obj, (int, float, list, tuple)) else obj
            return self.xp.asarray(obj, dtype=dtype, device=self.device)
        return np.asarray(to_numpy(obj), dtype=dtype)

    def to_numpy(self, arr: Any) -> np.ndarray:
        """Copy an array of this (or any) backend to a host NumPy array."""
        return to_numpy(arr)

    def dtype(self, dtype: Any) -> Any:
        """This namespace's dtype object for a name or another namespace's dtype."""
        name = dtype if isinstance(dtype, str) else dtype_name(dtype)
        try:
            return getattr(self.xp, name)
        except AttributeError:
            raise TypeError(f"dtype: expected a real floating or integer dtype name, got {dtype!r}") from None

    def zeros(self, shape: Any, dtype: Any) -> Any:
        """Zeros of ``shape`` and ``dtype`` on this device."""
        return self.xp.zeros(shape, dtype=self.dtype(dtype), device=self.device)

    def generator(self, seed: int | None = None) -> Any:
        """A seeded :class:`xpdl.rng.Generator`; its draws for this backend's arrays are made on the device.

        The same seed gives the same numbers on every backend.
        """
        from xpdl.rng import Generator

        return Generator(seed)

    def random_uint32(self, rng: Any, shape: tuple[int, ...]) -> Any:
        """Random uint32 words of ``shape`` drawn from ``rng`` directly on this backend's device."""
        return rng.random_uint32(shape, like=self.zeros((1,), "float32"))

    def synchronize(self) -> None:
        """Wait until all work queued on the device is done (for timing)."""
        if self._cupy is not None:
            self._cupy.cuda.Device(self.device.id).synchronize()

    def owns(self, arr: Any) -> bool:
        """True when ``arr`` is an array of this backend's namespace and device."""
        import array_api_compat

        try:
            ns = array_api_compat.array_namespace(arr)
        except TypeError:
            return False
        if _namespace_key(ns) != _namespace_key(self.xp):
            return False
        return array_api_compat.device(arr) == self.device

    def describe(self) -> str:
        """Human-readable device description, e.g. ``"cupy:0 (NVIDIA H200, 139.8 GiB)"``."""
        if self._cupy is not None:
            props = self._cupy.cuda.runtime.getDeviceProperties(self.device.id)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            gib = props["totalGlobalMem"] / 2**30
            return f"{self.name} ({name}, {gib:.1f} GiB)"
        return f"{self.name} (CPU: {cpu_name()})"


def dtype_name(dtype: Any) -> str:
    """The standard name (``"float32"``) of a dtype of any namespace."""
    text = str(dtype)
    for name in ("float64", "float32", "float16", "uint64", "uint32", "uint16", "uint8",
                 "int64", "int32", "int16", "int8", "bool"):
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


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def _numpy_xp() -> Any:
    import array_api_compat.numpy

    return array_api_compat.numpy


def _namespace_key(ns: Any) -> str:
    name = getattr(ns, "__name__", "")
    for key in ("cupy", "array_api_strict", "numpy"):
        if key in name:
            return key
    return name


def numpy_backend() -> Backend:
    """NumPy on the CPU."""
    return Backend("numpy", _numpy_xp(), "cpu", "numpy asked for")


def strict_backend() -> Backend:
    """The Array API strict reference namespace on its CPU device."""
    try:
        import array_api_strict
    except ImportError as exc:
        raise BackendUnavailable(
            "backend 'array_api_strict' needs the array-api-strict package: "
            'pip install "xpdl[test]"'
        ) from exc
    return Backend("array_api_strict", array_api_strict, array_api_strict.Device("CPU_DEVICE"),
                   "array_api_strict asked for")


def cupy_backend(device_id: int = 0) -> Backend:
    """CuPy on CUDA device ``device_id``; raises :class:`BackendUnavailable` saying why not."""
    cupy = _import_cupy()
    why = cuda_problem(cupy, device_id)
    if why:
        raise BackendUnavailable(f"backend 'cupy:{device_id}' cannot run here: {why}")
    import array_api_compat.cupy

    return Backend(f"cupy:{device_id}", array_api_compat.cupy, cupy.cuda.Device(device_id),
                   f"cupy:{device_id} asked for", _cupy=cupy)


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
_ANNOUNCED: set[str] = set()


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


def announce(message: str) -> None:
    """Print ``message`` to stderr once per process (silenced by ``XPDL_QUIET=1``)."""
    if message in _ANNOUNCED or os.environ.get("XPDL_QUIET") == "1":
        return
    _ANNOUNCED.add(message)
    print(f"xpdl: {message}", file=sys.stderr)


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
