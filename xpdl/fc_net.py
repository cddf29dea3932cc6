"""A fully-connected classifier: ``{affine - [batch norm] - relu - [dropout]} x (L - 1) - affine - softmax``.

Parameters live on the net's backend (NumPy, CuPy or any Array API namespace,
see :mod:`xpdl.backend`) in the net's dtype. Initial weights are drawn on the
host from the net's :class:`xpdl.rng.Generator` and copied, so the same ``seed``
gives the same net on every backend; dropout masks come from the same generator.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from xpdl.backend import Backend, dtype_name, get_backend, to_numpy
from xpdl.bn_layers import batchnorm_backward_alt, batchnorm_forward
from xpdl.dropout_layers import check_keep_probability, dropout_backward, dropout_forward
from xpdl.layers import affine_backward, affine_forward, affine_param_grads, relu_backward, relu_forward, softmax_loss
from xpdl.rng import Generator

FLOAT_DTYPES = ("float32", "float64")
NORMALIZATIONS = (None, "batchnorm", "layernorm")


class FullyConnectedNet:
    """Fully-connected net with optional batch norm and dropout on every hidden layer.

    Args (the first eight in the seed's order):
        input_dim: D, features per sample (inputs of shape (N, d_1, ..., d_k) are flattened).
        hidden_dims: widths of the L - 1 hidden layers.
        num_classes: C.
        dropout: keep probability p; 0 means no dropout (p = 1 keeps everything).
        use_batchnorm: batch norm after every hidden affine layer.
        reg: L2 regularization strength (loss += 0.5 * reg * sum(W**2) over all W).
        weight_scale: standard deviation of the initial weights.
        seed: seeds weights and dropout masks; None draws one from the OS.
        dtype: ``"float32"`` (default) or ``"float64"`` (gradient checks).
        backend: a name or :class:`xpdl.backend.Backend`; None uses the default selector.

    Attributes:
        params: ``W1..WL`` (D_i, D_i+1), ``b1..bL`` (D_i+1,), ``gamma1..``/``beta1..`` (D_i+1,).
        bn_params: one dict per hidden layer (mode, eps, momentum, running_mean, running_var).
        dropout_param: ``{'mode', 'p', 'rng'}`` when dropout is on, else ``{}``.
        rng: the generator behind the initial weights and dropout masks.
    """

    def __init__(self, input_dim: int = 3 * 32 * 32, hidden_dims: list[int] | tuple[int, ...] = (100,),
                 num_classes: int = 10, dropout: float = 0, use_batchnorm: bool = False, reg: float = 0.0,
                 weight_scale: float = 1e-2, seed: int | None = None, dtype: str = "float32",
                 backend: str | Backend | None = None, normalization: str | None = None) -> None:
        cfg = check_config(input_dim=input_dim, hidden_dims=hidden_dims, num_classes=num_classes, dropout=dropout,
                           use_batchnorm=use_batchnorm, normalization=normalization, reg=reg,
                           weight_scale=weight_scale, dtype=dtype)
        input_dim, hidden_dims, num_classes = cfg["input_dim"], cfg["hidden_dims"], cfg["num_classes"]
        dropout, reg, weight_scale, dtype = cfg["dropout"], cfg["reg"], cfg["weight_scale"], cfg["dtype"]
        self.normalization = cfg["normalization"]
        self.input_dim, self.hidden_dims, self.num_classes = input_dim, hidden_dims, num_classes
        self.use_batchnorm = self.normalization == "batchnorm"
        self.use_dropout = dropout > 0
        self.dropout = float(dropout)
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
            self.dropout_param = {"mode": "train", "p": self.dropout, "rng": self.rng}
        self.bn_params: list[dict] = []
        if self.use_batchnorm:
            self.bn_params = [{"mode": "train", "eps": 1e-5, "momentum": 0.9,
                               "running_mean": self.backend.zeros(h, dtype),
                               "running_var": self.backend.zeros(h, dtype)} for h in hidden_dims]

    # ------------------------------------------------------------------ inputs
    def as_input(self, X: Any) -> Any:
        """``X`` (N, d_1, ..., d_k) as an (N, input_dim) array of the net's backend and dtype."""
        if isinstance(X, (list, tuple)):
            X = np.asarray(X)
        if not hasattr(X, "shape") or len(X.shape) < 1:
            raise TypeError(f"X: expected an array of shape (N, {self.input_dim}), got {type(X).__name__}")
        n = X.shape[0]
        features = math.prod(X.shape[1:])
        if features != self.input_dim:
            raise ValueError(f"X: expected {self.input_dim} features per sample (input_dim), "
                             f"got shape {tuple(X.shape)} = {features} features")
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
        raise TypeError(f"{name}: expected a NumPy array or an array of the net's backend "
                        f"{self.backend.name!r}, got {type(arr).__module__}.{type(arr).__name__} "
                        "(move it with net.backend.asarray(...) or the net with net.to(...))")

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
        return self.loss_and_grads(X, self.as_labels(y, X.shape[0]))

    def _set_mode(self, mode: str) -> None:
        if self.use_dropout:
            self.dropout_param["mode"] = mode
        for bn_param in self.bn_params:
            bn_param["mode"] = mode

    def _forward(self, X: Any, mode: str) -> tuple[Any, list]:
        self._set_mode(mode)
        caches = []
        h = X
        for i in range(1, self.num_layers):
            a, fc_cache = affine_forward(h, self.params[f"W{i}"], self.params[f"b{i}"])
            bn_cache = None
            if self.use_batchnorm:
                a, bn_cache = batchnorm_forward(a, self.params[f"gamma{i}"], self.params[f"beta{i}"],
                                                self.bn_params[i - 1])
            h, relu_cache = relu_forward(a)
            drop_cache = None
            if self.use_dropout:
                h, drop_cache = dropout_forward(h, self.dropout_param)
            caches.append((fc_cache, bn_cache, relu_cache, drop_cache))
        L = self.num_layers
        scores, fc_cache = affine_forward(h, self.params[f"W{L}"], self.params[f"b{L}"])
        caches.append(fc_cache)
        return scores, caches

    def scores(self, X: Any) -> Any:
        """Test-mode class scores (N, C) for an (N, input_dim) array already on the device."""
        return self._forward(X, "test")[0]

    def loss_and_grads(self, X: Any, y: Any, input_grad: bool = True) -> tuple[Any, dict]:
        """Train-mode loss and gradients for device arrays X (N, D) and y (N,) int64.

        ``input_grad=False`` skips the first layer's input gradient (one of the three
        largest matrix products), which training never uses.
        """
        scores, caches = self._forward(X, "train")
        xp = self.backend.xp
        loss, dscores = softmax_loss(scores, y)
        grads = {}
        L = self.num_layers
        dh, grads[f"W{L}"], grads[f"b{L}"] = affine_backward(dscores, caches[-1])
        for i in range(L - 1, 0, -1):
            fc_cache, bn_cache, relu_cache, drop_cache = caches[i - 1]
            if drop_cache is not None:
                dh = dropout_backward(dh, drop_cache)
            da = relu_backward(dh, relu_cache)
            if bn_cache is not None:
                da, grads[f"gamma{i}"], grads[f"beta{i}"] = batchnorm_backward_alt(da, bn_cache)
            if i == 1 and not input_grad:
                grads[f"W{i}"], grads[f"b{i}"] = affine_param_grads(da, fc_cache)
            else:
                dh, grads[f"W{i}"], grads[f"b{i}"] = affine_backward(da, fc_cache)
            if bn_cache is not None:
                # batch norm subtracts the batch mean, so this bias has no effect on the loss: its
                # gradient is exactly 0 (the computed sum is rounding noise that Adam and RMSProp
                # would turn into a random walk)
                grads[f"b{i}"] = xp.zeros_like(grads[f"b{i}"])
        if self.reg:
            for i in range(1, L + 1):
                W = self.params[f"W{i}"]
                loss = loss + 0.5 * self.reg * xp.sum(W * W)
                grads[f"W{i}"] = grads[f"W{i}"] + self.reg * W
        return loss, grads

    def predict(self, X: Any, batch_size: int = 1000) -> np.ndarray:
        """Predicted classes (N,) as a host int64 NumPy array, computed in batches on the device."""
        X = self.as_input(X)
        xp = self.backend.xp
        out = [to_numpy(xp.argmax(self.scores(X[i:min(i + batch_size, X.shape[0]), ...]), axis=1))
               for i in range(0, X.shape[0], batch_size)]
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
        return {"input_dim": self.input_dim, "hidden_dims": list(self.hidden_dims),
                "num_classes": self.num_classes, "dropout": self.dropout,
                "normalization": self.normalization, "reg": self.reg,
                "weight_scale": self.weight_scale, "dtype": self.dtype}


def check_config(input_dim: Any = 3 * 32 * 32, hidden_dims: Any = (100,), num_classes: Any = 10, dropout: Any = 0,
                 use_batchnorm: Any = False, normalization: Any = None, reg: Any = 0.0, weight_scale: Any = 1e-2,
                 dtype: Any = "float32") -> dict[str, Any]:
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
    return {"input_dim": input_dim, "hidden_dims": hidden_dims, "num_classes": num_classes,
            "dropout": float(dropout), "normalization": normalization, "reg": reg,
            "weight_scale": weight_scale, "dtype": dtype}


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
    if cfg["normalization"] == "batchnorm":
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
