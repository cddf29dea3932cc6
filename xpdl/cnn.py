"""Convolutional classifiers: :class:`ConvNet` and cs231n's :class:`ThreeLayerConvNet`.

``ConvNet``: ``{conv - [norm] - relu - 2x2 max pool} x K - {affine - relu - [dropout]} x M - affine - softmax``
with "same" convolutions (stride 1, pad ``(filter_size - 1) // 2``), ``norm`` spatial batch norm,
spatial group norm or nothing. ``ThreeLayerConvNet`` is cs231n's ``conv - relu - 2x2 max pool -
affine - relu - affine - softmax``: a ConvNet with one conv block and one hidden layer, with
cs231n's constructor and parameter names (``W1`` (F, C, HH, WW), ``b1``, ``W2``, ``b2``, ``W3``, ``b3``).

The net is described once, as in :class:`xpdl.fc_net.FullyConnectedNet`: a list of
:class:`ConvBlock` (run by the backend's :meth:`~xpdl.backends.Backend.conv_block_forward` /
``conv_block_backward``), then the :class:`xpdl.fc_net.HiddenLayer` list (``hidden_forward`` /
``hidden_backward``) and the output affine layer. Everything else (inputs, labels, predict,
state arrays, moving between backends, regularization) is FullyConnectedNet's, so the
Trainer, checkpoints and ``xpdl evaluate`` take a ConvNet as they take a fully-connected net.

Weight initialization: ``weight_scale`` is the standard deviation of every initial weight,
or ``"he"`` (the default of :class:`ConvNet`): He / Kaiming normal, standard deviation
``sqrt(2 / fan_in)`` with ``fan_in = C * HH * WW`` for a conv layer and D for an affine one,
which trains relu nets of any depth without tuning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from xpdl.backends import Backend, get_backend
from xpdl.dropout_layers import check_keep_probability
from xpdl.fc_net import FLOAT_DTYPES, FullyConnectedNet, HiddenLayer, _positive_int, _real
from xpdl.host import dtype_name
from xpdl.rng import Generator

__all__ = ["CONV_NORMALIZATIONS", "ConvBlock", "ConvNet", "ThreeLayerConvNet", "check_config", "state_shapes"]

#: The normalizations a conv block can have.
CONV_NORMALIZATIONS = (None, "batchnorm", "groupnorm")
#: The 2x2, stride-2 max pool that ends every conv block.
POOL_PARAM = {"pool_height": 2, "pool_width": 2, "stride": 2}


@dataclass(eq=False)
class ConvBlock:
    """Conv block ``index`` (1-based): ``conv - [normalization] - relu - [max pool]``.

    ``conv_param`` is ``{"stride", "pad"}``; ``pool_param`` the pool's (None: no pool);
    ``norm_param`` the normalization's param dict (a ``bn_param`` with running statistics,
    or a ``gn_param``); ``groups`` the group norm's G. The parameters are ``W{index}``
    (F, C, HH, WW), ``b{index}`` (F,) and, with a normalization, ``gamma{index}``,
    ``beta{index}`` (F,) in the net's ``params``.
    """

    index: int
    normalization: str | None
    norm_param: dict
    conv_param: dict
    pool_param: dict | None
    groups: int = 1

    def param_names(self) -> tuple[str, ...]:
        i = self.index
        return (f"W{i}", f"b{i}", f"gamma{i}", f"beta{i}") if self.normalization else (f"W{i}", f"b{i}")


def default_groups(channels: int) -> int:
    """The group norm's G for ``channels`` when ``groups`` is None: the largest divisor of C up to 8."""
    return max(g for g in range(1, 9) if channels % g == 0)


def check_config(
    input_dim: Any = (3, 32, 32),
    conv_dims: Any = (32, 64, 128),
    filter_size: Any = 3,
    hidden_dims: Any = (256,),
    num_classes: Any = 10,
    normalization: Any = None,
    groups: Any = None,
    dropout: Any = 0,
    reg: Any = 0.0,
    weight_scale: Any = "he",
    dtype: Any = "float32",
    model: Any = "conv",
    channels_last: Any = False,
) -> dict[str, Any]:
    """The architecture arguments of :class:`ConvNet`, checked and normalized; nothing is allocated.

    Returns the dict :meth:`ConvNet.config` returns (``model: "conv"`` included, so a checkpoint
    knows which net it holds). Raises TypeError or ValueError naming the argument.
    """
    if model != "conv":
        raise ValueError(f"model: expected 'conv', got {model!r}")
    if not isinstance(channels_last, (bool, np.bool_)):
        raise TypeError(f"channels_last: expected True or False, got {channels_last!r}")
    if isinstance(input_dim, (int, str, bytes, dict)) or not hasattr(input_dim, "__iter__"):
        raise ValueError(f"input_dim: expected (C, H, W), got {input_dim!r}")
    input_dim = [_positive_int(d, "input_dim[]") for d in input_dim]
    if len(input_dim) != 3:
        raise ValueError(f"input_dim: expected (C, H, W), got {input_dim!r}")
    for name, dims in (("conv_dims", conv_dims), ("hidden_dims", hidden_dims)):
        if isinstance(dims, (int, str, bytes, dict)) or not hasattr(dims, "__iter__"):
            raise TypeError(f"{name}: expected a list of positive ints, got {dims!r}")
    conv_dims = [_positive_int(d, "conv_dims[]") for d in conv_dims]
    hidden_dims = [_positive_int(d, "hidden_dims[]") for d in hidden_dims]
    filter_size = _positive_int(filter_size, "filter_size")
    if filter_size % 2 == 0:
        raise ValueError(f"filter_size: expected an odd size (the convolutions keep H and W), got {filter_size}")
    num_classes = _positive_int(num_classes, "num_classes")
    if normalization not in CONV_NORMALIZATIONS:
        raise ValueError(f"normalization: expected one of {CONV_NORMALIZATIONS}, got {normalization!r}")
    if groups is not None:
        groups = _positive_int(groups, "groups")
        bad = [c for c in conv_dims if c % groups]
        if bad:
            raise ValueError(f"groups: expected a G that divides every conv_dims entry, {groups} does not divide {bad}")
    _, h, w = input_dim
    for k in range(len(conv_dims)):
        if h % 2 or w % 2:
            raise ValueError(
                f"conv_dims: {len(conv_dims)} blocks of 2x2 max pool need H and W divisible by "
                f"{2 ** len(conv_dims)}; input {input_dim[1]}x{input_dim[2]} is {h}x{w} before block {k + 1}"
            )
        h, w = h // 2, w // 2
    dropout = 0.0 if _real(dropout, "dropout") == 0 else check_keep_probability(dropout)
    reg = _real(reg, "reg")
    if reg < 0:
        raise ValueError(f"reg: expected a finite number >= 0, got {reg}")
    if weight_scale != "he":
        weight_scale = _real(weight_scale, "weight_scale")
        if weight_scale <= 0:
            raise ValueError(f"weight_scale: expected 'he' or a finite number > 0, got {weight_scale}")
    if not isinstance(dtype, str):
        try:
            dtype = dtype_name(dtype)
        except TypeError:
            pass
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype: expected one of {FLOAT_DTYPES}, got {dtype!r}")
    return {
        "model": "conv",
        "input_dim": input_dim,
        "conv_dims": conv_dims,
        "filter_size": filter_size,
        "hidden_dims": hidden_dims,
        "num_classes": num_classes,
        "normalization": normalization,
        "groups": groups,
        "dropout": float(dropout),
        "reg": reg,
        "weight_scale": weight_scale,
        "dtype": dtype,
        "channels_last": bool(channels_last),
    }


def state_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shape of every array of :meth:`ConvNet.state_arrays` for ``config``, allocating nothing."""
    cfg = check_config(**config)
    c, h, w = cfg["input_dim"]
    k = cfg["filter_size"]
    shapes: dict[str, tuple[int, ...]] = {}
    stats: dict[str, tuple[int, ...]] = {}
    for i, f in enumerate(cfg["conv_dims"], start=1):
        shapes[f"W{i}"], shapes[f"b{i}"] = (f, c, k, k), (f,)
        if cfg["normalization"]:
            shapes[f"gamma{i}"] = shapes[f"beta{i}"] = (f,)
        if cfg["normalization"] == "batchnorm":
            stats[f"bn{i}.running_mean"] = stats[f"bn{i}.running_var"] = (f,)
        c, h, w = f, h // 2, w // 2
    dims = [c * h * w, *cfg["hidden_dims"], cfg["num_classes"]]
    first = len(cfg["conv_dims"]) + 1
    for j in range(len(dims) - 1):
        shapes[f"W{first + j}"], shapes[f"b{first + j}"] = (dims[j], dims[j + 1]), (dims[j + 1],)
    return {**shapes, **stats}


class ConvNet(FullyConnectedNet):
    """Convolutional net: conv blocks (conv - [norm] - relu - 2x2 max pool), then a fully-connected head.

    Args:
        input_dim: (C, H, W) of one image; H and W divisible by ``2 ** len(conv_dims)``.
        conv_dims: filters of each conv block (3x3 "same" convolutions by default).
        filter_size: HH = WW of every filter (odd; pad ``(filter_size - 1) // 2``, stride 1).
        hidden_dims: widths of the hidden affine - relu - [dropout] layers of the head.
        num_classes: C.
        normalization: ``None``, ``"batchnorm"`` (spatial, running statistics) or ``"groupnorm"``
            after every conv layer.
        groups: group norm's G (must divide every conv_dims entry); None takes, per block, the
            largest divisor of its channels up to 8.
        dropout: keep probability p on the head's hidden layers; 0 means no dropout.
        reg: L2 regularization strength over every weight (conv and affine).
        weight_scale: standard deviation of the initial weights, or ``"he"``: ``sqrt(2 / fan_in)``.
        seed, dtype, backend: as :class:`xpdl.FullyConnectedNet`.
        channels_last: inputs come as (N, H, W, C) images (or flattened in that order, as xpdl's
            datasets hold them) and are transposed to (N, C, H, W); False (default): (N, C, H, W).

    Attributes:
        params: ``W1..WK`` (F, C, HH, WW) and ``b1..bK`` of the conv blocks, ``gamma``/``beta`` (F,)
            with a normalization, then ``W``/``b`` of the head's affine layers.
        conv_blocks: the :class:`ConvBlock` list; hidden_layers: the head's :class:`HiddenLayer` list.
        bn_params: with batch norm, one dict per conv block (running statistics (F,)).
    """

    def __init__(
        self,
        input_dim: Any = (3, 32, 32),
        conv_dims: Any = (32, 64, 128),
        filter_size: int = 3,
        hidden_dims: Any = (256,),
        num_classes: int = 10,
        normalization: str | None = None,
        groups: int | None = None,
        dropout: float = 0,
        reg: float = 0.0,
        weight_scale: float | str = "he",
        seed: int | None = None,
        dtype: str = "float32",
        backend: str | Backend | None = None,
        model: str = "conv",
        channels_last: bool = False,
    ) -> None:
        cfg = check_config(
            input_dim=input_dim,
            conv_dims=conv_dims,
            filter_size=filter_size,
            hidden_dims=hidden_dims,
            num_classes=num_classes,
            normalization=normalization,
            groups=groups,
            dropout=dropout,
            reg=reg,
            weight_scale=weight_scale,
            dtype=dtype,
            model=model,
            channels_last=channels_last,
        )
        self.channels_last = cfg["channels_last"]
        self.image_shape = tuple(cfg["input_dim"])
        self.input_dim = math.prod(self.image_shape)
        self.conv_dims, self.hidden_dims = cfg["conv_dims"], cfg["hidden_dims"]
        self.filter_size, self.num_classes, self.groups = cfg["filter_size"], cfg["num_classes"], cfg["groups"]
        self.normalization = cfg["normalization"]
        self.use_batchnorm = self.normalization == "batchnorm"
        self.use_dropout = cfg["dropout"] > 0
        self.reg = cfg["reg"]
        self.weight_scale = cfg["weight_scale"]
        self.dtype = dtype = cfg["dtype"]
        self.num_conv = len(self.conv_dims)
        self.num_layers = self.num_conv + len(self.hidden_dims) + 1
        self.seed = seed
        self.backend = get_backend(backend)
        self.rng = Generator(seed)

        shapes = state_shapes(cfg)
        host = {}
        for name, shape in shapes.items():
            if "." in name:
                continue
            if name.startswith("W"):
                fan_in = math.prod(shape[1:]) if len(shape) == 4 else shape[0]
                std = math.sqrt(2.0 / fan_in) if self.weight_scale == "he" else self.weight_scale
                host[name] = (std * self.rng.standard_normal(shape)).astype(dtype)
            elif name.startswith("gamma"):
                host[name] = np.ones(shape, dtype=dtype)
            else:
                host[name] = np.zeros(shape, dtype=dtype)
        self.params = {k: self.backend.asarray(v) for k, v in host.items()}

        self.dropout_param: dict = {}
        if self.use_dropout:
            self.dropout_param = {"mode": "train", "p": cfg["dropout"], "rng": self.rng}
        self.bn_params: list[dict] = []
        self.ln_params: list[dict] = []
        self.conv_blocks: list[ConvBlock] = []
        pad = (self.filter_size - 1) // 2
        for i, f in enumerate(self.conv_dims, start=1):
            norm_param: dict = {}
            if self.normalization == "batchnorm":
                norm_param = {
                    "mode": "train",
                    "eps": 1e-5,
                    "momentum": 0.9,
                    "running_mean": self.backend.zeros(f, dtype),
                    "running_var": self.backend.zeros(f, dtype),
                }
                self.bn_params.append(norm_param)
            elif self.normalization == "groupnorm":
                norm_param = {"eps": 1e-5}
            g = self.groups if self.groups is not None else default_groups(f)
            block = ConvBlock(i, self.normalization, norm_param, {"stride": 1, "pad": pad}, dict(POOL_PARAM), g)
            self.conv_blocks.append(block)
        self.hidden_layers = [HiddenLayer(self.num_conv + j + 1, None, {}) for j in range(len(self.hidden_dims))]

    # ------------------------------------------------------------------ inputs
    def as_input(self, X: Any) -> Any:
        """``X`` (N, C, H, W) (or anything with C·H·W features per sample) as an (N, C, H, W) device array.

        With ``channels_last``, ``X`` holds (N, H, W, C) images and is transposed.
        """
        X = super().as_input(X)
        xp = self.backend.xp
        c, h, w = self.image_shape
        if self.channels_last:
            return xp.permute_dims(xp.reshape(X, (X.shape[0], h, w, c)), (0, 3, 1, 2))
        return xp.reshape(X, (X.shape[0], c, h, w))

    # --------------------------------------------------------------- the math
    def scores(self, X: Any) -> Any:
        """Test-mode class scores (N, C) for an (N, C, H, W) array on the device (the reference layers)."""
        self._set_mode("test")
        h = X
        for block in self.conv_blocks:
            h, _ = Backend.conv_block_forward(self.backend, h, self.params, block)
        h = self.backend.xp.reshape(h, (h.shape[0], -1))
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
        """Train-mode loss and gradients for device arrays X (N, C, H, W) and y (N,) int64.

        The arguments are :meth:`xpdl.FullyConnectedNet.loss_and_grads`'s.
        """
        ops = self.backend.training_ops()
        xp = self.backend.xp
        self._set_mode("train")
        drop = self.dropout_param if self.use_dropout else None

        def ws(index: int) -> dict | None:
            return None if buffers is None else buffers.setdefault(index, {})

        def conv_ws(index: int) -> dict | None:
            """A block's workspace dict, holding under "shared" the one all conv blocks share for the
            buffers a backward pass uses only while it runs."""
            if buffers is None:
                return None
            mine = buffers.setdefault(index, {})
            mine.setdefault("shared", buffers.setdefault("conv_shared", {}))
            return mine

        conv_caches, caches = [], []
        h = X
        for block in self.conv_blocks:
            h, cache = ops.conv_block_forward(h, self.params, block, conv_ws(block.index))
            conv_caches.append(cache)
        conv_shape = tuple(h.shape)
        h = xp.reshape(h, (h.shape[0], -1))
        for layer in self.hidden_layers:
            h, cache = ops.hidden_forward(h, self.params, layer, drop, ws(layer.index))
            caches.append(cache)
        L = self.num_layers
        scores, out_cache = ops.output_forward(h, self.params[f"W{L}"], self.params[f"b{L}"], ws(L))
        loss, dscores = ops.softmax_loss(scores, y)
        if loss_scale != 1.0:
            loss, dscores = loss * loss_scale, dscores * loss_scale
        grads: dict[str, Any] = {}
        dh, dW, db = ops.output_backward(dscores, out_cache, True, ws(L))
        reg_sum = self._layer_grads_ready(ops, {f"W{L}": dW, f"b{L}": db}, grads, on_grads, regularize)
        for layer, cache in zip(reversed(self.hidden_layers), reversed(caches)):
            dh, layer_grads = ops.hidden_backward(dh, cache, True, ws(layer.index))
            reg_sum = reg_sum + self._layer_grads_ready(ops, layer_grads, grads, on_grads, regularize)
        dh = xp.reshape(dh, conv_shape)
        for block, cache in zip(reversed(self.conv_blocks), reversed(conv_caches)):
            dh, block_grads = ops.conv_block_backward(dh, cache, block.index > 1 or input_grad, conv_ws(block.index))
            reg_sum = reg_sum + self._layer_grads_ready(ops, block_grads, grads, on_grads, regularize)
        if self.reg and regularize:
            loss = loss + 0.5 * self.reg * reg_sum
        return loss, grads

    # ------------------------------------------------------------------ state
    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this architecture (JSON-serializable), ``model: "conv"`` included."""
        return {
            "model": "conv",
            "input_dim": list(self.image_shape),
            "conv_dims": list(self.conv_dims),
            "filter_size": self.filter_size,
            "hidden_dims": list(self.hidden_dims),
            "num_classes": self.num_classes,
            "normalization": self.normalization,
            "groups": self.groups,
            "dropout": self.dropout,
            "reg": self.reg,
            "weight_scale": self.weight_scale,
            "dtype": self.dtype,
            "channels_last": self.channels_last,
        }


class ThreeLayerConvNet(ConvNet):
    """cs231n's ``conv - relu - 2x2 max pool - affine - relu - affine - softmax``.

    The conv layer has ``num_filters`` filters of ``filter_size`` x ``filter_size``, stride 1,
    pad ``(filter_size - 1) // 2``. Parameters: ``W1`` (F, C, HH, WW), ``b1`` (F,), ``W2``
    (F·H/2·W/2, hidden_dim), ``b2``, ``W3`` (hidden_dim, num_classes), ``b3``, drawn with
    standard deviation ``weight_scale``. ``loss(X, y=None)`` returns the scores or ``(loss, grads)``.
    It is the :class:`ConvNet` with one conv block and one hidden layer; its :meth:`config`
    (and so a checkpoint) rebuilds it as that ConvNet.
    """

    def __init__(
        self,
        input_dim: Any = (3, 32, 32),
        num_filters: int = 32,
        filter_size: int = 7,
        hidden_dim: int = 100,
        num_classes: int = 10,
        weight_scale: float | str = 1e-3,
        reg: float = 0.0,
        dtype: str = "float32",
        seed: int | None = None,
        backend: str | Backend | None = None,
    ) -> None:
        super().__init__(
            input_dim=input_dim,
            conv_dims=(num_filters,),
            filter_size=filter_size,
            hidden_dims=(hidden_dim,),
            num_classes=num_classes,
            reg=reg,
            weight_scale=weight_scale,
            seed=seed,
            dtype=dtype,
            backend=backend,
        )
