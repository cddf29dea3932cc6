"""A fully-connected classifier: ``{affine - [norm] - relu - [dropout]} x (L - 1) - affine - softmax``.

``norm`` is batch norm, layer norm or nothing (:data:`xpdl.bn_layers.NORMALIZATIONS`).
Parameters live on the net's backend (NumPy, CuPy or any Array API namespace,
see :mod:`xpdl.backends.base`) in the net's dtype. Initial weights are drawn on the
host from the net's :class:`xpdl.rng.Generator` and copied, so the same ``seed``
gives the same net on every backend; dropout masks come from the same generator.

The net is described once: a list of :class:`HiddenLayer` (index, normalization
and its param dict) plus the output affine layer. Training passes go through the
backend's :meth:`~xpdl.backends.Backend.hidden_forward` / ``hidden_backward``,
whose reference versions compose the functional layers and whose NumPy versions
run compiled kernels; predictions use the reference versions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from xpdl.backends import Backend, get_backend
from xpdl.bn_layers import NORMALIZATIONS as NORMALIZATION_LAYERS
from xpdl.dropout_layers import check_keep_probability
from xpdl.host import dtype_name, to_numpy
from xpdl.rng import Generator

FLOAT_DTYPES = ("float32", "float64")
NORMALIZATIONS = (None, *NORMALIZATION_LAYERS)


@dataclass(eq=False)
class HiddenLayer:
    """Hidden layer ``index`` (1-based): ``affine - [normalization] - relu - [dropout]``.

    ``norm_param`` is the normalization's param dict (a ``bn_param`` with the running
    statistics, or an ``ln_param``); the parameters are ``W{index}``, ``b{index}``
    and, with a normalization, ``gamma{index}``, ``beta{index}`` in the net's ``params``.
    """

    index: int
    normalization: str | None
    norm_param: dict

    def param_names(self) -> tuple[str, ...]:
        i = self.index
        return (f"W{i}", f"b{i}", f"gamma{i}", f"beta{i}") if self.normalization else (f"W{i}", f"b{i}")


class FullyConnectedNet:
    """Fully-connected net with optional batch norm or layer norm, and dropout, on every hidden layer.

    Args (the first eight in the seed's order):
        input_dim: D, features per sample (inputs of shape (N, d_1, ..., d_k) are flattened).
        hidden_dims: widths of the L - 1 hidden layers.
        num_classes: C.
        dropout: keep probability p; 0 means no dropout (p = 1 keeps everything).
        use_batchnorm: batch norm after every hidden affine layer (the seed's spelling of
            ``normalization="batchnorm"``).
        reg: L2 regularization strength (loss += 0.5 * reg * sum(W**2) over all W).
        weight_scale: standard deviation of the initial weights.
        seed: seeds weights and dropout masks; None draws one from the OS.
        dtype: ``"float32"`` (default) or ``"float64"`` (gradient checks).
        backend: a name or :class:`xpdl.backends.Backend`; None uses the default selector.
        normalization: ``None``, ``"batchnorm"`` or ``"layernorm"``, after every hidden affine layer.

    Attributes:
        params: ``W1..WL`` (D_i, D_i+1), ``b1..bL`` (D_i+1,), ``gamma1..``/``beta1..`` (D_i+1,).
        bn_params: with batch norm, one dict per hidden layer (mode, eps, momentum, running_mean, running_var).
        ln_params: with layer norm, one dict per hidden layer (eps).
        hidden_layers: the :class:`HiddenLayer` list every path runs.
        dropout_param: ``{'mode', 'p', 'rng'}`` when dropout is on, else ``{}``.
        rng: the generator behind the initial weights and dropout masks.
    """

    def __init__(
        self,
        input_dim: int = 3 * 32 * 32,
        hidden_dims: list[int] | tuple[int, ...] = (100,),
        num_classes: int = 10,
        dropout: float = 0,
        use_batchnorm: bool = False,
        reg: float = 0.0,
        weight_scale: float = 1e-2,
        seed: int | None = None,
        dtype: str = "float32",
        backend: str | Backend | None = None,
        normalization: str | None = None,
    ) -> None:
        cfg = check_config(
            input_dim=input_dim,
            hidden_dims=hidden_dims,
            num_classes=num_classes,
            dropout=dropout,
            use_batchnorm=use_batchnorm,
            normalization=normalization,
            reg=reg,
            weight_scale=weight_scale,
            dtype=dtype,
        )
        input_dim, hidden_dims, num_classes = cfg["input_dim"], cfg["hidden_dims"], cfg["num_classes"]
        dropout, reg, weight_scale, dtype = cfg["dropout"], cfg["reg"], cfg["weight_scale"], cfg["dtype"]
        self.normalization = cfg["normalization"]
        self.input_dim, self.hidden_dims, self.num_classes = input_dim, hidden_dims, num_classes
        self.use_batchnorm = self.normalization == "batchnorm"
        self.use_dropout = dropout > 0
        self.reg = float(reg)
        self.weight_scale = float(weight_scale)
        self.num_layers = 1 + len(hidden_dims)
        self.dtype = dtype
        self.seed = seed
        self.backend = get_backend(backend)
        self.rng = Generator(seed)

        host = {}
        dims = [input_dim, *hidden_dims, num_classes]
        for i in range(self.num_layers):
            host[f"W{i + 1}"] = (weight_scale * self.rng.standard_normal((dims[i], dims[i + 1]))).astype(dtype)
            host[f"b{i + 1}"] = np.zeros(dims[i + 1], dtype=dtype)
            if self.normalization and i < len(hidden_dims):
                host[f"gamma{i + 1}"] = np.ones(dims[i + 1], dtype=dtype)
                host[f"beta{i + 1}"] = np.zeros(dims[i + 1], dtype=dtype)
        self.params = {k: self.backend.asarray(v) for k, v in host.items()}

        self.dropout_param: dict = {}
        if self.use_dropout:
            self.dropout_param = {"mode": "train", "p": dropout, "rng": self.rng}
        self.bn_params: list[dict] = []
        if self.use_batchnorm:
            self.bn_params = [
                {
                    "mode": "train",
                    "eps": 1e-5,
                    "momentum": 0.9,
                    "running_mean": self.backend.zeros(h, dtype),
                    "running_var": self.backend.zeros(h, dtype),
                }
                for h in hidden_dims
            ]
        self.ln_params: list[dict] = [{"eps": 1e-5} for _ in hidden_dims] if self.normalization == "layernorm" else []
        norm_params = self.bn_params or self.ln_params or [{} for _ in hidden_dims]
        self.hidden_layers = [HiddenLayer(i + 1, self.normalization, norm_params[i]) for i in range(len(hidden_dims))]

    @property
    def dropout(self) -> float:
        """The dropout keep probability every path uses (``dropout_param['p']``); 0 when dropout is off."""
        return float(self.dropout_param["p"]) if self.use_dropout else 0.0

    # ------------------------------------------------------------------ inputs
    def as_input(self, X: Any) -> Any:
        """``X`` (N, d_1, ..., d_k) as an (N, input_dim) array of the net's backend and dtype.

        Host data is cast to the net's dtype on the host, before it is copied to the device.
        """
        if isinstance(X, (list, tuple)):
            X = np.asarray(X)
        if not hasattr(X, "shape") or len(X.shape) < 1:
            raise TypeError(f"X: expected an array of shape (N, {self.input_dim}), got {type(X).__name__}")
        n = X.shape[0]
        features = math.prod(X.shape[1:])
        if features != self.input_dim:
            raise ValueError(
                f"X: expected {self.input_dim} features per sample (input_dim), "
                f"got shape {tuple(X.shape)} = {features} features"
            )
        if isinstance(X, (np.ndarray, np.generic)) and X.dtype != np.dtype(self.dtype):
            if not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_):
                raise TypeError(f"X: expected a numeric array, got dtype {X.dtype}")
            X = X.astype(self.dtype)
        X = self._to_device(X, "X")
        xp = self.backend.xp
        if not xp.isdtype(X.dtype, "real floating") or dtype_name(X.dtype) != self.dtype:
            X = xp.astype(X, self.backend.dtype(self.dtype))
        if len(X.shape) != 2:
            X = xp.reshape(X, (n, self.input_dim))
        return X

    def as_labels(self, y: Any, n: int, check_range: bool = True) -> Any:
        """``y`` (n,) integer labels in [0, num_classes) as an int64 array of the net's backend.

        The range of host labels is always checked (on the host); ``check_range=False``
        skips the check of labels already on the device, which would wait for a GPU.
        """
        if isinstance(y, (list, tuple)):
            y = np.asarray(y)
        if not hasattr(y, "shape") or not hasattr(y, "dtype"):
            raise TypeError(f"y: expected an integer array of shape ({n},), got {type(y).__name__}")
        if dtype_name(y.dtype) not in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
            raise TypeError(f"y: expected integer class labels, got dtype {dtype_name(y.dtype)}")
        if tuple(y.shape) != (n,):
            raise ValueError(f"y: expected shape ({n},) to match X's {n} samples, got {tuple(y.shape)}")
        on_host = isinstance(y, np.ndarray)
        if on_host:
            self._check_label_range(y, n)
        y = self._to_device(y, "y")
        if check_range and not on_host:
            self._check_label_range(y, n)
        xp = self.backend.xp
        if dtype_name(y.dtype) != "int64":
            y = xp.astype(y, xp.int64)
        return y

    def _check_label_range(self, y: Any, n: int) -> None:
        if not n:
            return
        xp = np if isinstance(y, np.ndarray) else self.backend.xp
        lo, hi = int(xp.min(y)), int(xp.max(y))
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(f"y: expected labels in [0, {self.num_classes}), got values in [{lo}, {hi}]")

    def _to_device(self, arr: Any, name: str) -> Any:
        """``arr`` on the net's device: host NumPy arrays are copied; other backends' arrays are refused."""
        if self.backend.owns(arr):
            return arr
        if isinstance(arr, (np.ndarray, np.generic)):
            return self.backend.asarray(arr)
        raise TypeError(
            f"{name}: expected a NumPy array or an array of the net's backend "
            f"{self.backend.name!r}, got {type(arr).__module__}.{type(arr).__name__} "
            "(move it with net.backend.asarray(...) or the net with net.to(...))"
        )

    # --------------------------------------------------------------- the math
    def loss(self, X: Any, y: Any = None) -> Any:
        """Class scores (test mode, ``y is None``) or ``(loss, grads)`` (train mode).

        Inputs:
            X: (N, d_1, ..., d_k), host NumPy or an array of the net's backend.
            y: (N,) integer labels in [0, C), or None.

        Returns:
            test mode: scores (N, C) on the net's device.
            train mode: loss, a 0-d array on the device (``float(loss)`` reads it), and
            grads, a dict with the keys and shapes of ``params``.
        """
        X = self.as_input(X)
        if y is None:
            return self.scores(X)
        if X.shape[0] == 0:
            raise ValueError(f"X: expected at least one sample for a training loss, got shape {tuple(X.shape)}")
        return self.loss_and_grads(X, self.as_labels(y, X.shape[0]))

    def _set_mode(self, mode: str) -> None:
        if self.use_dropout:
            self.dropout_param["mode"] = mode
        for bn_param in self.bn_params:
            bn_param["mode"] = mode

    def scores(self, X: Any) -> Any:
        """Test-mode class scores (N, C) for an (N, input_dim) array already on the device.

        Runs the reference layers on every backend (batch norm with its running statistics,
        no dropout).
        """
        self._set_mode("test")
        h = X
        for layer in self.hidden_layers:
            h, _ = Backend.hidden_forward(self.backend, h, self.params, layer, None)
        L = self.num_layers
        return Backend.output_forward(self.backend, h, self.params[f"W{L}"], self.params[f"b{L}"])[0]

    def loss_and_grads(
        self,
        X: Any,
        y: Any,
        input_grad: bool = True,
        on_grads: Any = None,
        buffers: dict | None = None,
        loss_scale: float = 1.0,
        regularize: bool = True,
    ) -> tuple[Any, dict]:
        """Train-mode loss and gradients for device arrays X (N, D) and y (N,) int64.

        Args:
            input_grad: False skips the first layer's input gradient (one of the three
                largest matrix products), which training never uses.
            on_grads: optional ``f(grads)`` called with each layer's gradients (last layer
                first) as soon as they exist and the layer's weights have served the
                backward pass: a trainer may update that layer's parameters there.
            buffers: a dict the backend keeps its workspaces in between calls (the returned
                gradients then live in it and are overwritten by the next call); None
                returns fresh arrays.
            loss_scale: the data loss (the mean over X's rows) and every gradient are multiplied
                by it. A data-parallel rank holding n of a batch's N rows passes n / N: the
                gradients are then its shares of the gradient of the whole batch's mean loss,
                and summing them over the ranks gives that gradient.
            regularize: False leaves out the L2 term (loss and gradients), which a data-parallel
                trainer adds once after summing the ranks' shares (:meth:`add_regularization`).

        Returns:
            loss, a 0-d array on the device (``0.5 * reg * sum(W**2)`` included), and grads,
            a dict with the keys and shapes of ``params``.
        """
        ops = self.backend.training_ops()
        self._set_mode("train")
        drop = self.dropout_param if self.use_dropout else None

        def ws(index: int) -> dict | None:
            return None if buffers is None else buffers.setdefault(index, {})

        caches = []
        h = X
        for layer in self.hidden_layers:
            h, cache = ops.hidden_forward(h, self.params, layer, drop, ws(layer.index))
            caches.append(cache)
        L = self.num_layers
        scores, out_cache = ops.output_forward(h, self.params[f"W{L}"], self.params[f"b{L}"], ws(L))
        loss, dscores = ops.softmax_loss(scores, y)
        if loss_scale != 1.0:
            loss, dscores = loss * loss_scale, dscores * loss_scale
        grads: dict[str, Any] = {}
        dh, dW, db = ops.output_backward(dscores, out_cache, L > 1 or input_grad, ws(L))
        reg_sum = self._layer_grads_ready(ops, {f"W{L}": dW, f"b{L}": db}, grads, on_grads, regularize)
        for layer, cache in zip(reversed(self.hidden_layers), reversed(caches)):
            dh, layer_grads = ops.hidden_backward(dh, cache, layer.index > 1 or input_grad, ws(layer.index))
            reg_sum = reg_sum + self._layer_grads_ready(ops, layer_grads, grads, on_grads, regularize)
        if self.reg and regularize:
            loss = loss + 0.5 * self.reg * reg_sum
        return loss, grads

    def add_regularization(self, loss: Any, grads: dict) -> Any:
        """Add the L2 term to ``loss`` and (in place where the backend can) to every ``W`` gradient in ``grads``.

        For gradients from :meth:`loss_and_grads` with ``regularize=False`` (summed over
        ranks first); returns the new loss. Without regularization, ``loss`` unchanged.
        """
        if not self.reg:
            return loss
        ops = self.backend.training_ops()
        reg_sum: Any = 0.0
        for name in sorted((k for k in grads if k.startswith("W")), key=lambda k: -int(k[1:])):
            grads[name], sq = ops.add_l2(grads[name], self.params[name], self.reg)
            reg_sum = reg_sum + sq
        return loss + 0.5 * self.reg * reg_sum

    def _layer_grads_ready(
        self, ops: Backend, layer_grads: dict, grads: dict, on_grads: Any, regularize: bool = True
    ) -> Any:
        """Add the L2 term to the layer's weight gradient, record the gradients and pass them on.

        Returns ``sum(W**2)`` of the layer's weights before any update (0 without regularization).
        """
        sq: Any = 0.0
        if self.reg and regularize:
            name = next(k for k in layer_grads if k.startswith("W"))
            layer_grads[name], sq = ops.add_l2(layer_grads[name], self.params[name], self.reg)
        grads.update(layer_grads)
        if on_grads is not None:
            on_grads(layer_grads)
        return sq

    def predict(self, X: Any, batch_size: int = 1000) -> np.ndarray:
        """Predicted classes (N,) as a host int64 NumPy array, computed in batches on the device."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        X = self.as_input(X)
        xp = self.backend.xp
        out = [
            to_numpy(xp.argmax(self.scores(X[i : min(i + batch_size, X.shape[0]), ...]), axis=1))
            for i in range(0, X.shape[0], batch_size)
        ]
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)

    # ------------------------------------------------------------------ state
    def state_arrays(self) -> dict[str, Any]:
        """Every array of the model's state, flat: params plus ``bn{i}.running_mean/var``."""
        state = dict(self.params)
        for i, bn in enumerate(self.bn_params, start=1):
            state[f"bn{i}.running_mean"] = bn["running_mean"]
            state[f"bn{i}.running_var"] = bn["running_var"]
        return state

    def load_state_arrays(self, state: dict[str, Any]) -> None:
        """Replace params and batch-norm statistics from :meth:`state_arrays`-style arrays.

        Every key and shape is checked before anything changes; arrays are copied to
        the net's backend and dtype.
        """
        mine = self.state_arrays()
        missing = sorted(set(mine) - set(state))
        extra = sorted(set(state) - set(mine))
        if missing or extra:
            raise ValueError(f"state: keys do not match this net (missing {missing}, unexpected {extra})")
        for k, v in mine.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise ValueError(f"state[{k!r}]: expected shape {tuple(v.shape)}, got {tuple(state[k].shape)}")
        moved = {k: self._copy(state[k]) for k in mine}
        for k in self.params:
            self.params[k] = moved[k]
        for i, bn in enumerate(self.bn_params, start=1):
            bn["running_mean"] = moved[f"bn{i}.running_mean"]
            bn["running_var"] = moved[f"bn{i}.running_var"]

    def _copy(self, arr: Any) -> Any:
        xp = self.backend.xp
        if self.backend.owns(arr):
            return xp.astype(arr, self.backend.dtype(self.dtype), copy=True)
        return self.backend.asarray(to_numpy(arr), dtype=self.dtype)

    def snapshot(self) -> dict[str, Any]:
        """Device copies of :meth:`state_arrays` (for keeping the best model)."""
        return {k: self._copy(v) for k, v in self.state_arrays().items()}

    def to(self, backend: str | Backend) -> FullyConnectedNet:
        """Move params and batch-norm statistics to ``backend`` (in place); returns the net."""
        state = {k: to_numpy(v) for k, v in self.state_arrays().items()}
        self.backend = get_backend(backend)
        self.load_state_arrays(state)
        return self

    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this architecture (JSON-serializable)."""
        return {
            "input_dim": self.input_dim,
            "hidden_dims": list(self.hidden_dims),
            "num_classes": self.num_classes,
            "dropout": self.dropout,
            "normalization": self.normalization,
            "reg": self.reg,
            "weight_scale": self.weight_scale,
            "dtype": self.dtype,
        }


def check_config(
    input_dim: Any = 3 * 32 * 32,
    hidden_dims: Any = (100,),
    num_classes: Any = 10,
    dropout: Any = 0,
    use_batchnorm: Any = False,
    normalization: Any = None,
    reg: Any = 0.0,
    weight_scale: Any = 1e-2,
    dtype: Any = "float32",
) -> dict[str, Any]:
    """The architecture arguments of :class:`FullyConnectedNet`, checked and normalized; nothing is allocated.

    Returns the dict :meth:`FullyConnectedNet.config` returns. ``use_batchnorm=True``
    is the seed's spelling of ``normalization="batchnorm"``. Raises TypeError or
    ValueError naming the argument, what was expected and what came.
    """
    input_dim = _positive_int(input_dim, "input_dim")
    num_classes = _positive_int(num_classes, "num_classes")
    if isinstance(hidden_dims, (int, str, bytes, dict)) or not hasattr(hidden_dims, "__iter__"):
        raise TypeError(f"hidden_dims: expected a list of positive ints, got {hidden_dims!r}")
    hidden_dims = [_positive_int(h, "hidden_dims[]") for h in hidden_dims]
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization: expected one of {NORMALIZATIONS}, got {normalization!r}")
    if not isinstance(use_batchnorm, (bool, np.bool_)):
        raise TypeError(f"use_batchnorm: expected True or False, got {use_batchnorm!r}")
    if use_batchnorm:
        if normalization not in (None, "batchnorm"):
            raise ValueError(f"use_batchnorm=True contradicts normalization={normalization!r}")
        normalization = "batchnorm"
    dropout = 0.0 if _real(dropout, "dropout") == 0 else check_keep_probability(dropout)
    reg = _real(reg, "reg")
    if reg < 0:
        raise ValueError(f"reg: expected a finite number >= 0, got {reg}")
    weight_scale = _real(weight_scale, "weight_scale")
    if weight_scale <= 0:
        raise ValueError(f"weight_scale: expected a finite number > 0, got {weight_scale}")
    if not isinstance(dtype, str):
        try:
            dtype = dtype_name(dtype)
        except TypeError:
            pass
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype: expected one of {FLOAT_DTYPES}, got {dtype!r}")
    return {
        "input_dim": input_dim,
        "hidden_dims": hidden_dims,
        "num_classes": num_classes,
        "dropout": float(dropout),
        "normalization": normalization,
        "reg": reg,
        "weight_scale": weight_scale,
        "dtype": dtype,
    }


def state_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shape of every array of :meth:`FullyConnectedNet.state_arrays` for ``config``, allocating nothing.

    ``config`` holds :func:`check_config` arguments (a saved :meth:`FullyConnectedNet.config`);
    unknown keys raise TypeError.
    """
    cfg = check_config(**config)
    dims = [cfg["input_dim"], *cfg["hidden_dims"], cfg["num_classes"]]
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(1, len(dims)):
        shapes[f"W{i}"] = (dims[i - 1], dims[i])
        shapes[f"b{i}"] = (dims[i],)
        if cfg["normalization"] and i < len(dims) - 1:
            shapes[f"gamma{i}"] = shapes[f"beta{i}"] = (dims[i],)
    if cfg["normalization"] and NORMALIZATION_LAYERS[cfg["normalization"]].running_stats:
        for i in range(1, len(dims) - 1):
            shapes[f"bn{i}.running_mean"] = shapes[f"bn{i}.running_var"] = (dims[i],)
    return shapes


def _real(value: Any, name: str) -> float:
    """``value`` as a finite float; TypeError for non-numbers, ValueError for NaN or infinity."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return value


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)
