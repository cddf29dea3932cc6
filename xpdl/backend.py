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

import math
import os
import sys
from typing import Any

import array_api_compat
import numpy as np

from xpdl.bn_layers import NORMALIZATIONS
from xpdl.dropout_layers import dropout_backward, dropout_forward
from xpdl.layers import (
    affine_backward,
    affine_forward,
    affine_param_grads,
    relu_backward,
    relu_forward,
    softmax_loss,
)

BACKEND_NAMES = ("auto", "numpy", "cupy", "cupy:N", "array_api_strict")
CUDA_INSTALL_HINT = 'pip install "xpdl[cuda12]" (CUDA 12) or "xpdl[cuda13]" (CUDA 13)'


class BackendUnavailable(RuntimeError):
    """A backend was asked for by name but cannot run on this machine."""


class Backend:
    """One array library on one device; its methods are the reference math of a training step.

    This base class runs every namespace (``array_api_strict`` runs exactly these
    methods): host/device copies, Philox random words, the hidden layer's
    forward/backward composed from the functional layers, the L2 term and the
    update rules' reference steps. :class:`xpdl.numpy_backend.NumpyBackend` and
    :class:`xpdl.cupy_backend.CupyBackend` override the hot methods with compiled
    kernels that compute the same numbers (tested against these).

    Attributes:
        name: canonical name, e.g. ``"numpy"``, ``"cupy:0"``, ``"array_api_strict"``.
        xp: the array namespace (Array API standard functions).
        device: the device object arrays are created on (``xp``'s own type).
        reason: one line saying why this backend was chosen.
        is_gpu: True when arrays live on a CUDA device (reading a value waits for the device).
        step_path: the name of the training-step implementation it runs.
    """

    is_gpu = False
    step_path = "reference"

    def __init__(self, name: str, xp: Any, device: Any, reason: str = "") -> None:
        self.name, self.xp, self.device, self.reason = name, xp, device, reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # ---------------------------------------------------------------- host and device
    def asarray(self, obj: Any, dtype: Any = None) -> Any:
        """Copy host data (NumPy array, list, scalar) or an array of any backend to this device.

        ``dtype`` may be a name (``"float32"``) or a dtype of any namespace.
        """
        if dtype is not None:
            dtype = self.dtype(dtype)
        if not isinstance(obj, (int, float, list, tuple)):
            obj = to_numpy(obj)
        return self.xp.asarray(obj, dtype=dtype, device=self.device)

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

    def synchronize(self) -> None:
        """Wait until all work queued on the device is done (for timing); nothing to wait for on the CPU."""

    def owns(self, arr: Any) -> bool:
        """True when ``arr`` is an array of this backend's namespace and device."""
        try:
            ns = array_api_compat.array_namespace(arr)
        except TypeError:
            return False
        if _namespace_key(ns) != _namespace_key(self.xp):
            return False
        return array_api_compat.device(arr) == self.device

    def describe(self) -> str:
        """Human-readable device description, e.g. ``"numpy (CPU: AMD EPYC)"``."""
        return f"{self.name} (CPU: {cpu_name()})"

    def reference(self) -> Backend:
        """This backend without its compiled kernels: the reference math on the same namespace and device."""
        return Backend(self.name, self.xp, self.device, self.reason)

    def training_ops(self) -> Backend:
        """The backend a training step runs on: this one, or :meth:`reference` when ``XPDL_FUSED=0``."""
        return self.reference() if os.environ.get("XPDL_FUSED", "1") == "0" else self

    # ---------------------------------------------------------------- randomness
    def philox_uint32(self, key: int, counter: int, shape: tuple[int, ...]) -> Any:
        """uint32 Philox4x64-10 words of ``shape`` on this device: block j encrypts ``counter + 1 + j``.

        The stream layout is described in :mod:`xpdl.rng`; here NumPy's own Philox
        makes them on the host and they are copied.
        """
        n = math.prod(shape)
        blocks = -(-n // 8)
        raw = np.random.Philox(key=key, counter=counter).random_raw(blocks * 4)
        words = raw.astype("<u8", copy=False).view("<u4")[:n].reshape(shape)
        return self.asarray(words)

    # ---------------------------------------------------------------- a training step
    def hidden_forward(
        self, x: Any, params: dict, layer: Any, dropout_param: dict | None, buffers: dict | None = None
    ) -> tuple[Any, Any]:
        """Train-mode ``dropout(relu(norm(x @ W + b)))`` of hidden layer ``layer``.

        Inputs:
            x: (N, D) input; params: the net's parameters (``W{i}`` (D, H), ``b{i}``,
            ``gamma{i}``, ``beta{i}`` (H,)); layer: a :class:`xpdl.fc_net.HiddenLayer`
            (index, normalization and its param dict); dropout_param: the net's, or None;
            buffers: a dict this method may keep workspaces in between calls (None: fresh arrays).

        Returns:
            h: (N, H); cache for :meth:`hidden_backward`.
        """
        i = layer.index
        a, fc_cache = affine_forward(x, params[f"W{i}"], params[f"b{i}"])
        norm_cache = None
        if layer.normalization is not None:
            forward = NORMALIZATIONS[layer.normalization].forward
            a, norm_cache = forward(a, params[f"gamma{i}"], params[f"beta{i}"], layer.norm_param)
        h, relu_cache = relu_forward(a)
        drop_cache = None
        if dropout_param is not None:
            h, drop_cache = dropout_forward(h, dropout_param)
        return h, (layer, fc_cache, norm_cache, relu_cache, drop_cache)

    def hidden_backward(
        self, dh: Any, cache: Any, input_grad: bool = True, buffers: dict | None = None
    ) -> tuple[Any, dict]:
        """Backward of :meth:`hidden_forward`: ``dx`` (N, D) (None if not ``input_grad``) and the grads dict.

        The grads dict has ``W{i}`` (D, H), ``b{i}`` (H,) and, with a normalization,
        ``gamma{i}``, ``beta{i}`` (H,). A bias that the normalization cancels gets an
        exactly zero gradient (the computed sum is rounding noise that Adam and
        RMSProp would turn into a random walk).
        """
        layer, fc_cache, norm_cache, relu_cache, drop_cache = cache
        i = layer.index
        if drop_cache is not None:
            dh = dropout_backward(dh, drop_cache)
        da = relu_backward(dh, relu_cache)
        grads = {}
        if norm_cache is not None:
            norm = NORMALIZATIONS[layer.normalization]
            da, grads[f"gamma{i}"], grads[f"beta{i}"] = norm.backward(da, norm_cache)
        if input_grad:
            dx, grads[f"W{i}"], grads[f"b{i}"] = affine_backward(da, fc_cache)
        else:
            dx = None
            grads[f"W{i}"], grads[f"b{i}"] = affine_param_grads(da, fc_cache)
        if layer.normalization is not None and NORMALIZATIONS[layer.normalization].cancels_bias:
            grads[f"b{i}"] = self.xp.zeros_like(grads[f"b{i}"])
        return dx, grads

    def output_forward(self, x: Any, w: Any, b: Any, buffers: dict | None = None) -> tuple[Any, Any]:
        """Class scores ``x @ w + b`` (N, C) of the last affine layer, and its cache."""
        return affine_forward(x, w, b)

    def softmax_loss(self, scores: Any, y: Any) -> tuple[Any, Any]:
        """Mean softmax cross-entropy of ``scores`` (N, C) for labels ``y`` (N,) and its gradient (N, C).

        :func:`xpdl.layers.softmax_loss`; backends may compute it in place in ``scores``,
        which the caller no longer needs.
        """
        return softmax_loss(scores, y)

    def output_backward(
        self, dscores: Any, cache: Any, input_grad: bool = True, buffers: dict | None = None
    ) -> tuple[Any, Any, Any]:
        """Backward of :meth:`output_forward`: ``dx`` (None if not ``input_grad``), ``dw``, ``db``."""
        if input_grad:
            return affine_backward(dscores, cache)
        return (None, *affine_param_grads(dscores, cache))

    def add_l2(self, dw: Any, w: Any, reg: float) -> tuple[Any, Any]:
        """``dw + reg * w`` and ``sum(w**2)`` (a 0-d array): the L2 term's gradient and its loss sum."""
        return dw + reg * w, self.xp.sum(w * w)

    def update(self, rule: Any, w: Any, g: Any, config: dict) -> Any:
        """One step of update rule ``rule`` (an :class:`xpdl.updater.UpdateRule`) on ``w``; returns the new ``w``.

        ``config`` holds the rule's hyperparameters (defaults filled) and state, which
        is updated. Backends with a compiled kernel for the rule update ``w`` and the
        state in place and return ``w``; otherwise the rule's reference step runs.
        """
        state = rule.state(config, w)
        s = rule.scalars(config)
        kernel = self.update_kernel(rule.name)
        if kernel is not None:
            kernel(w, g, state, s)
            return w
        new_w, new_state = rule.reference(self.xp, w, g, state, s)
        config.update(zip(rule.state_keys, new_state))
        return new_w

    def update_kernel(self, rule_name: str) -> Any:
        """A function ``f(w, g, state, scalars)`` updating in place for rule ``rule_name``, or None."""
        return None


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


def _namespace_key(ns: Any) -> str:
    name = getattr(ns, "__name__", "")
    for key in ("cupy", "array_api_strict", "numpy"):
        if key in name:
            return key
    return name


def numpy_backend() -> Backend:
    """NumPy on the CPU, with the compiled CPU kernels."""
    from xpdl.numpy_backend import NumpyBackend

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
    from xpdl.cupy_backend import CupyBackend

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


def backend_of(arr: Any) -> Backend:
    """The backend whose namespace and device array ``arr`` belongs to."""
    if type(arr) is np.ndarray:
        return _CACHE.get("numpy") or get_backend("numpy")
    key = _namespace_key(array_api_compat.array_namespace(arr))
    if key == "cupy":
        return get_backend(f"cupy:{arr.device.id}")
    if key in ("numpy", "array_api_strict"):
        return get_backend(key)
    raise TypeError(f"arr: expected a NumPy, CuPy or array_api_strict array, got {type(arr).__name__}")


def describe_paths() -> str:
    """One line naming the training-step implementation of each kind of backend."""
    return "CPU: numpy-fused (numba); CuPy: cupy-fused-update; others: reference xp"


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
