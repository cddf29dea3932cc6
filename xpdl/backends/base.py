"""The :class:`Backend` base class: one array library on one device, and the reference math of a step.

A :class:`Backend` bundles an array namespace ``xp`` (array-api-compat's wrapper of
NumPy or CuPy, or ``array_api_strict``), the device its arrays live on, and the few
host/device operations the rest of xpdl needs. The math modules never ask which
backend they run on: they derive ``xp`` from their array arguments.

Backends are chosen by name in :mod:`xpdl.backends.registry`, which lists the names.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import array_api_compat
import numpy as np

from xpdl.bn_layers import (
    NORMALIZATIONS,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
    spatial_groupnorm_backward,
    spatial_groupnorm_forward,
)
from xpdl.conv_layers import conv_backward_fast, conv_forward_fast, max_pool_backward_fast, max_pool_forward_fast
from xpdl.dropout_layers import dropout_backward, dropout_forward
from xpdl.host import dtype_name, to_numpy
from xpdl.layers import (
    affine_backward,
    affine_forward,
    affine_param_grads,
    relu_backward,
    relu_forward,
    softmax_loss,
)
from xpdl.rng import host_philox_uint32

_ANNOUNCED: set[str] = set()


def announce(message: str) -> None:
    """Print ``message`` to stderr once per process (silenced by ``XPDL_QUIET=1``)."""
    if message in _ANNOUNCED or os.environ.get("XPDL_QUIET") == "1":
        return
    _ANNOUNCED.add(message)
    print(f"xpdl: {message}", file=sys.stderr)


class BackendUnavailable(RuntimeError):
    """A backend was asked for by name but cannot run on this machine."""


class Backend:
    """One array library on one device; its methods are the reference math of a training step.

    This base class runs every namespace (``array_api_strict`` runs exactly these
    methods): host/device copies, Philox random words, the hidden layer's
    forward/backward composed from the functional layers, the L2 term and the
    update rules' reference steps. :class:`xpdl.backends.numpy_backend.NumpyBackend` and
    :class:`xpdl.backends.cupy_backend.CupyBackend` override the hot methods with compiled
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
        if namespace_key(ns) != namespace_key(self.xp):
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
        """uint32 Philox4x64-10 words of ``shape`` on this device (:func:`xpdl.rng.host_philox_uint32`, copied)."""
        return self.asarray(host_philox_uint32(key, counter, shape))

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

    def conv_block_forward(self, x: Any, params: dict, block: Any, buffers: dict | None = None) -> tuple[Any, Any]:
        """``pool(relu(norm(conv(x, W, b))))`` of conv block ``block`` (train or test mode, as its norm_param says).

        Inputs:
            x: (N, C, H, W); params: the net's parameters (``W{i}`` (F, C, HH, WW), ``b{i}``,
            ``gamma{i}``, ``beta{i}`` (F,)); block: a :class:`xpdl.cnn.ConvBlock` (index,
            normalization and its param dict, conv_param, pool_param, groups); buffers: a dict
            this method may keep workspaces in between calls (None: fresh arrays).

        Returns:
            h: (N, F, H', W'); cache for :meth:`conv_block_backward`.
        """
        i = block.index
        a, conv_cache = conv_forward_fast(x, params[f"W{i}"], params[f"b{i}"], block.conv_param)
        norm_cache = None
        if block.normalization == "batchnorm":
            a, norm_cache = spatial_batchnorm_forward(a, params[f"gamma{i}"], params[f"beta{i}"], block.norm_param)
        elif block.normalization == "groupnorm":
            gamma, beta = params[f"gamma{i}"], params[f"beta{i}"]
            a, norm_cache = spatial_groupnorm_forward(a, gamma, beta, block.groups, block.norm_param)
        h, relu_cache = relu_forward(a)
        pool_cache = None
        if block.pool_param is not None:
            h, pool_cache = max_pool_forward_fast(h, block.pool_param)
        return h, (block, conv_cache, norm_cache, relu_cache, pool_cache)

    def conv_block_backward(
        self, dh: Any, cache: Any, input_grad: bool = True, buffers: dict | None = None
    ) -> tuple[Any, dict]:
        """Backward of :meth:`conv_block_forward`: ``dx`` (N, C, H, W) (None if not ``input_grad``) and the grads.

        The grads dict has ``W{i}``, ``b{i}`` and, with a normalization, ``gamma{i}``, ``beta{i}``.
        The bias before a batch norm, or a group norm of one channel per group, which cancels it,
        gets an exactly zero gradient (as in :meth:`hidden_backward`).
        """
        block, conv_cache, norm_cache, relu_cache, pool_cache = cache
        i = block.index
        if pool_cache is not None:
            dh = max_pool_backward_fast(dh, pool_cache)
        da = relu_backward(dh, relu_cache)
        grads = {}
        if block.normalization == "batchnorm":
            da, grads[f"gamma{i}"], grads[f"beta{i}"] = spatial_batchnorm_backward(da, norm_cache)
        elif block.normalization == "groupnorm":
            da, grads[f"gamma{i}"], grads[f"beta{i}"] = spatial_groupnorm_backward(da, norm_cache)
        dx, grads[f"W{i}"], grads[f"b{i}"] = conv_backward_fast(da, conv_cache)
        if block.normalization == "batchnorm" or (
            block.normalization == "groupnorm" and block.groups == grads[f"b{i}"].shape[0]
        ):
            grads[f"b{i}"] = self.xp.zeros_like(grads[f"b{i}"])
        return (dx if input_grad else None), grads

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


def namespace_key(ns: Any) -> str:
    """``"numpy"``, ``"cupy"`` or ``"array_api_strict"`` for a namespace (its module name otherwise)."""
    name = getattr(ns, "__name__", "")
    for key in ("cupy", "array_api_strict", "numpy"):
        if key in name:
            return key
    return name
