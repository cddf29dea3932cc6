"""Convolution and max pooling layers (cs231n assignment 2), written once against the array namespace ``xp``.

Names, argument order, dict keys and return values are cs231n's:

- ``conv_forward_naive(x, w, b, conv_param) -> out, cache`` and
  ``conv_backward_naive(dout, cache) -> dx, dw, db``: x (N, C, H, W), w (F, C, HH, WW),
  b (F,), ``conv_param = {"stride": s, "pad": p}`` (zero padding), out (N, F, H', W') with
  ``H' = 1 + (H + 2p - HH) / s`` and ``W' = 1 + (W + 2p - WW) / s``.
- ``conv_forward_fast`` / ``conv_backward_fast``: the same function as im2col (standard
  strided slices stacked into an (N, C·HH·WW, H'·W') array) and one matrix product; the
  backward pass scatters the columns back (col2im) with slice assignment. Standard Array API
  operations only: runs on NumPy, CuPy and ``array_api_strict``.
- ``max_pool_forward_naive(x, pool_param)`` / ``max_pool_backward_naive(dout, cache)`` and the
  ``_fast`` pair, ``pool_param = {"pool_height", "pool_width", "stride"}``.
  **Ties**: the whole gradient of a window goes to its *first* maximal element in row-major
  order (the index ``argmax`` returns), in both pairs. (cs231n's reshape-based fast pool
  gives it to every tied element instead; PyTorch's CPU max pool picks the first one too.)
- Sandwich layers of cs231n's ``layer_utils``: ``conv_relu_*``, ``conv_relu_pool_*``,
  ``conv_bn_relu_*``.

Bad input raises ValueError naming the argument before anything is computed: a non-4-D
array, channels of x and w that disagree, stride or pad that is not an integer (stride
>= 1, pad >= 0), a filter or pool window that does not tile the padded input.
No function writes into its inputs.
"""

from __future__ import annotations

import operator
from typing import Any

from xpdl.arrays import device, namespace
from xpdl.bn_layers import spatial_batchnorm_backward, spatial_batchnorm_forward
from xpdl.layers import relu_backward, relu_forward

__all__ = [
    "conv_backward_fast",
    "conv_backward_naive",
    "conv_bn_relu_backward",
    "conv_bn_relu_forward",
    "conv_forward_fast",
    "conv_forward_naive",
    "conv_output_shape",
    "conv_relu_backward",
    "conv_relu_forward",
    "conv_relu_pool_backward",
    "conv_relu_pool_forward",
    "max_pool_backward_fast",
    "max_pool_backward_naive",
    "max_pool_forward_fast",
    "max_pool_forward_naive",
    "pool_output_shape",
]


# ----------------------------------------------------------------------------- checks
def _int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; ValueError naming ``name`` otherwise (bools are refused)."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def _four_d(x: Any, name: str) -> None:
    if not hasattr(x, "shape") or len(x.shape) != 4:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"{name}: expected a 4-D (N, C, H, W) array, got {shape}")


def conv_output_shape(
    x_shape: tuple[int, ...], w_shape: tuple[int, ...], conv_param: dict
) -> tuple[int, int, int, int, int, int]:
    """Check a convolution's shapes and parameters; returns ``(stride, pad, N, F, H', W')``.

    Raises ValueError naming the argument (``x``, ``w``, ``conv_param['stride']``, ...).
    """
    if not isinstance(conv_param, dict):
        raise ValueError(f"conv_param: expected a dict with 'stride' and 'pad', got {type(conv_param).__name__}")
    stride = _int(conv_param.get("stride", 1), "conv_param['stride']", 1)
    pad = _int(conv_param.get("pad", 0), "conv_param['pad']", 0)
    n, c, h, wd = x_shape
    f, cw, hh, ww = w_shape
    if cw != c:
        raise ValueError(f"w: expected {c} input channels to match x {tuple(x_shape)}, got w {tuple(w_shape)}")
    hp, wp = h + 2 * pad, wd + 2 * pad
    for what, size, k in (("height", hp, hh), ("width", wp, ww)):
        if k > size or (size - k) % stride:
            raise ValueError(
                f"w: a filter {what} of {k} does not tile the padded input {what} {size} "
                f"(x {what} {size - 2 * pad} + 2 * pad {pad}) with stride {stride}: "
                f"need filter <= {size} and ({size} - {k}) divisible by {stride}"
            )
    return stride, pad, n, f, 1 + (hp - hh) // stride, 1 + (wp - ww) // stride


def pool_output_shape(x_shape: tuple[int, ...], pool_param: dict) -> tuple[int, int, int, int, int]:
    """Check a max pool's parameters; returns ``(pool_height, pool_width, stride, H', W')``."""
    if not isinstance(pool_param, dict):
        raise ValueError(
            "pool_param: expected a dict with 'pool_height', 'pool_width' and 'stride', "
            f"got {type(pool_param).__name__}"
        )
    ph = _int(pool_param.get("pool_height", 2), "pool_param['pool_height']", 1)
    pw = _int(pool_param.get("pool_width", 2), "pool_param['pool_width']", 1)
    stride = _int(pool_param.get("stride", 2), "pool_param['stride']", 1)
    _, _, h, w = x_shape
    for what, size, k in (("height", h, ph), ("width", w, pw)):
        if k > size or (size - k) % stride:
            raise ValueError(
                f"pool_param: a pool {what} of {k} does not tile the input {what} {size} with stride {stride}: "
                f"need pool <= {size} and ({size} - {k}) divisible by {stride}"
            )
    return ph, pw, stride, 1 + (h - ph) // stride, 1 + (w - pw) // stride


def _check_conv(x: Any, w: Any, b: Any, conv_param: dict) -> tuple[Any, tuple]:
    _four_d(x, "x")
    if not hasattr(w, "shape") or len(w.shape) != 4:
        shape = tuple(w.shape) if hasattr(w, "shape") else type(w).__name__
        raise ValueError(f"w: expected a 4-D (F, C, HH, WW) array, got {shape}")
    xp = namespace(x=x, w=w, b=b)
    if tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"b: expected shape ({w.shape[0]},) to match w {tuple(w.shape)}, got {tuple(b.shape)}")
    return xp, conv_output_shape(tuple(x.shape), tuple(w.shape), conv_param)


def _pad(xp: Any, x: Any, pad: int) -> Any:
    """``x`` (N, C, H, W) with ``pad`` zeros on each side of H and W (``concat``: standard, no ``pad`` needed)."""
    if pad == 0:
        return x
    n, c, h, w = x.shape
    dev = device(x)
    side = xp.zeros((n, c, h, pad), dtype=x.dtype, device=dev)
    x = xp.concat([side, x, side], axis=3)
    top = xp.zeros((n, c, pad, w + 2 * pad), dtype=x.dtype, device=dev)
    return xp.concat([top, x, top], axis=2)


def _unpad(x: Any, pad: int) -> Any:
    if pad == 0:
        return x
    return x[:, :, pad:-pad, pad:-pad]


# ----------------------------------------------------------------------------- convolution
def conv_forward_naive(x: Any, w: Any, b: Any, conv_param: dict) -> tuple[Any, tuple]:
    """Convolution, one output position at a time (the definition).

    Inputs:
        x: (N, C, H, W); w: (F, C, HH, WW); b: (F,);
        conv_param: ``{"stride": s, "pad": p}`` (zero padding on each side of H and W).

    Returns:
        out: (N, F, H', W'), ``H' = 1 + (H + 2p - HH) / s``, ``W' = 1 + (W + 2p - WW) / s``;
        cache: ``(x, w, b, conv_param)``.
    """
    xp, (s, pad, n, f, ho, wo) = _check_conv(x, w, b, conv_param)
    _, _, hh, ww = w.shape
    xpad = _pad(xp, x, pad)
    w2 = xp.reshape(w, (f, -1))
    rows = []
    for i in range(ho):
        cols = []
        for j in range(wo):
            window = xpad[:, :, i * s : i * s + hh, j * s : j * s + ww]
            cols.append(xp.reshape(window, (n, -1)) @ w2.T + b)  # (N, F)
        rows.append(xp.stack(cols, axis=2))  # (N, F, W')
    out = xp.stack(rows, axis=2)  # (N, F, H', W')
    return out, (x, w, b, conv_param)


def conv_backward_naive(dout: Any, cache: tuple) -> tuple[Any, Any, Any]:
    """Backward pass of :func:`conv_forward_naive`, one output position at a time.

    Inputs: dout (N, F, H', W'); cache from the forward. Returns: dx (N, C, H, W), dw (F, C, HH, WW), db (F,).
    """
    x, w, b, conv_param = cache
    xp, (s, pad, n, f, ho, wo) = _check_conv(x, w, b, conv_param)
    namespace(dout=dout, x=x)
    _, c, hh, ww = w.shape
    xpad = _pad(xp, x, pad)
    dxpad = xp.zeros(xpad.shape, dtype=x.dtype, device=device(x))
    dw = xp.zeros(w.shape, dtype=w.dtype, device=device(w))
    w2 = xp.reshape(w, (f, -1))
    for i in range(ho):
        for j in range(wo):
            d = dout[:, :, i, j]  # (N, F)
            window = xpad[:, :, i * s : i * s + hh, j * s : j * s + ww]
            dw = dw + xp.reshape(d.T @ xp.reshape(window, (n, -1)), w.shape)
            rows, cols = slice(i * s, i * s + hh), slice(j * s, j * s + ww)
            dxpad[:, :, rows, cols] = dxpad[:, :, rows, cols] + xp.reshape(d @ w2, (n, c, hh, ww))
    db = xp.sum(dout, axis=(0, 2, 3))
    return _unpad(dxpad, pad), dw, db


def im2col(xp: Any, xpad: Any, hh: int, ww: int, stride: int, ho: int, wo: int) -> Any:
    """Columns of the padded input: (N, C·HH·WW, H'·W'), row ``c·HH·WW + i·WW + j`` holding tap (c, i, j)."""
    n, c = xpad.shape[0], xpad.shape[1]
    taps = [
        xpad[:, :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
        for i in range(hh)
        for j in range(ww)
    ]  # each (N, C, H', W')
    return xp.reshape(xp.stack(taps, axis=2), (n, c * hh * ww, ho * wo))


def col2im(xp: Any, cols: Any, padded_shape: tuple, hh: int, ww: int, stride: int, ho: int, wo: int) -> Any:
    """The adjoint of :func:`im2col`: each tap's column added back into a zero (N, C, Hp, Wp) array."""
    n, c = padded_shape[0], padded_shape[1]
    taps = xp.reshape(cols, (n, c, hh * ww, ho, wo))
    out = xp.zeros(padded_shape, dtype=cols.dtype, device=device(cols))
    for i in range(hh):
        rows = slice(i, i + stride * (ho - 1) + 1, stride)
        for j in range(ww):
            cs = slice(j, j + stride * (wo - 1) + 1, stride)
            out[:, :, rows, cs] = out[:, :, rows, cs] + taps[:, :, i * ww + j, :, :]
    return out


def conv_forward_fast(x: Any, w: Any, b: Any, conv_param: dict) -> tuple[Any, tuple]:
    """:func:`conv_forward_naive` as im2col and one (batched) matrix product.

    Returns out (N, F, H', W') and cache ``(x, w, b, conv_param, cols)``; ``cols`` is the
    (N, C·HH·WW, H'·W') im2col array (the largest buffer of a conv layer).
    """
    xp, (s, pad, n, f, ho, wo) = _check_conv(x, w, b, conv_param)
    _, _, hh, ww = w.shape
    cols = im2col(xp, _pad(xp, x, pad), hh, ww, s, ho, wo)
    out = xp.reshape(w, (f, -1)) @ cols + xp.reshape(b, (f, 1))  # (N, F, H'·W')
    return xp.reshape(out, (n, f, ho, wo)), (x, w, b, conv_param, cols)


def conv_backward_fast(dout: Any, cache: tuple) -> tuple[Any, Any, Any]:
    """Backward pass of :func:`conv_forward_fast`: dx (N, C, H, W), dw (F, C, HH, WW), db (F,)."""
    x, w, b, conv_param, cols = cache
    xp, (s, pad, n, f, ho, wo) = _check_conv(x, w, b, conv_param)
    namespace(dout=dout, x=x)
    _, _, hh, ww = w.shape
    d2 = xp.reshape(dout, (n, f, ho * wo))
    db = xp.sum(d2, axis=(0, 2))
    dw = xp.reshape(xp.sum(d2 @ xp.matrix_transpose(cols), axis=0), w.shape)
    dcols = xp.reshape(w, (f, -1)).T @ d2  # (N, C·HH·WW, H'·W')
    padded = (n, x.shape[1], x.shape[2] + 2 * pad, x.shape[3] + 2 * pad)
    dx = _unpad(col2im(xp, dcols, padded, hh, ww, s, ho, wo), pad)
    return dx, dw, db


# ----------------------------------------------------------------------------- max pooling
def _check_pool(x: Any, pool_param: dict) -> tuple[Any, tuple]:
    _four_d(x, "x")
    xp = namespace(x=x)
    return xp, pool_output_shape(tuple(x.shape), pool_param)


def _first_max_mask(xp: Any, windows: Any, axis: int) -> Any:
    """One-hot (windows' dtype) along ``axis`` at the first maximum (the index ``argmax`` returns)."""
    k = windows.shape[axis]
    arg = xp.expand_dims(xp.argmax(windows, axis=axis), axis=axis)
    shape = [1] * windows.ndim
    shape[axis] = k
    taps = xp.reshape(xp.arange(k, dtype=arg.dtype, device=device(windows)), tuple(shape))
    return xp.astype(arg == taps, windows.dtype)


def max_pool_forward_naive(x: Any, pool_param: dict) -> tuple[Any, tuple]:
    """Max pooling, one window at a time.

    Inputs: x (N, C, H, W); pool_param ``{"pool_height", "pool_width", "stride"}``.
    Returns: out (N, C, H', W'), ``H' = 1 + (H - pool_height) / stride``; cache ``(x, pool_param)``.
    """
    xp, (ph, pw, s, ho, wo) = _check_pool(x, pool_param)
    rows = []
    for i in range(ho):
        cols = [xp.max(x[:, :, i * s : i * s + ph, j * s : j * s + pw], axis=(2, 3)) for j in range(wo)]
        rows.append(xp.stack(cols, axis=2))
    return xp.stack(rows, axis=2), (x, pool_param)


def max_pool_backward_naive(dout: Any, cache: tuple) -> Any:
    """Backward pass of :func:`max_pool_forward_naive`: dx (N, C, H, W).

    Each window's gradient goes to its first maximal element in row-major order.
    """
    x, pool_param = cache
    xp, (ph, pw, s, ho, wo) = _check_pool(x, pool_param)
    namespace(dout=dout, x=x)
    n, c = x.shape[0], x.shape[1]
    dx = xp.zeros(x.shape, dtype=x.dtype, device=device(x))
    for i in range(ho):
        for j in range(wo):
            rows, cols = slice(i * s, i * s + ph), slice(j * s, j * s + pw)
            window = xp.reshape(x[:, :, rows, cols], (n, c, ph * pw))
            mask = _first_max_mask(xp, window, axis=2)
            grad = mask * xp.reshape(dout[:, :, i, j], (n, c, 1))
            dx[:, :, rows, cols] = dx[:, :, rows, cols] + xp.reshape(grad, (n, c, ph, pw))
    return dx


def max_pool_forward_fast(x: Any, pool_param: dict) -> tuple[Any, tuple]:
    """:func:`max_pool_forward_naive` over all windows at once (the pool's im2col; a reshape when windows tile).

    Returns out (N, C, H', W') and cache ``(x, pool_param, mask)``, ``mask`` (N, C, ph·pw, H', W')
    one-hot at each window's first maximum.
    """
    xp, (ph, pw, s, ho, wo) = _check_pool(x, pool_param)
    n, c, h, w = x.shape
    if s == ph == pw and h == ho * ph and w == wo * pw:
        windows = xp.reshape(x, (n, c, ho, ph, wo, pw))
        windows = xp.reshape(xp.permute_dims(windows, (0, 1, 3, 5, 2, 4)), (n, c, ph * pw, ho, wo))
    else:
        taps = [
            x[:, :, i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s] for i in range(ph) for j in range(pw)
        ]
        windows = xp.stack(taps, axis=2)  # (N, C, ph·pw, H', W')
    out = xp.max(windows, axis=2)
    return out, (x, pool_param, _first_max_mask(xp, windows, axis=2))


def max_pool_backward_fast(dout: Any, cache: tuple) -> Any:
    """Backward pass of :func:`max_pool_forward_fast`: dx (N, C, H, W), ties as in the naive pair."""
    x, pool_param, mask = cache
    xp, (ph, pw, s, ho, wo) = _check_pool(x, pool_param)
    namespace(dout=dout, x=x)
    n, c, h, w = x.shape
    grad = mask * xp.expand_dims(dout, axis=2)  # (N, C, ph·pw, H', W')
    if s == ph == pw and h == ho * ph and w == wo * pw:
        grad = xp.permute_dims(xp.reshape(grad, (n, c, ph, pw, ho, wo)), (0, 1, 4, 2, 5, 3))
        return xp.reshape(grad, (n, c, h, w))
    return col2im(xp, grad, tuple(x.shape), ph, pw, s, ho, wo)


# ----------------------------------------------------------------------------- sandwich layers
def conv_relu_forward(x: Any, w: Any, b: Any, conv_param: dict) -> tuple[Any, tuple]:
    """Convolution (fast) followed by ReLU. Returns out and ``(conv_cache, relu_cache)``."""
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    out, relu_cache = relu_forward(a)
    return out, (conv_cache, relu_cache)


def conv_relu_backward(dout: Any, cache: tuple) -> tuple[Any, Any, Any]:
    """Backward pass of :func:`conv_relu_forward`: dx, dw, db."""
    conv_cache, relu_cache = cache
    return conv_backward_fast(relu_backward(dout, relu_cache), conv_cache)


def conv_relu_pool_forward(x: Any, w: Any, b: Any, conv_param: dict, pool_param: dict) -> tuple[Any, tuple]:
    """Convolution - ReLU - max pool. Returns out and ``(conv_cache, relu_cache, pool_cache)``."""
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    s, relu_cache = relu_forward(a)
    out, pool_cache = max_pool_forward_fast(s, pool_param)
    return out, (conv_cache, relu_cache, pool_cache)


def conv_relu_pool_backward(dout: Any, cache: tuple) -> tuple[Any, Any, Any]:
    """Backward pass of :func:`conv_relu_pool_forward`: dx, dw, db."""
    conv_cache, relu_cache, pool_cache = cache
    ds = max_pool_backward_fast(dout, pool_cache)
    return conv_backward_fast(relu_backward(ds, relu_cache), conv_cache)


def conv_bn_relu_forward(
    x: Any, w: Any, b: Any, gamma: Any, beta: Any, conv_param: dict, bn_param: dict
) -> tuple[Any, tuple]:
    """Convolution - spatial batch norm - ReLU. Returns out and ``(conv_cache, bn_cache, relu_cache)``."""
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    an, bn_cache = spatial_batchnorm_forward(a, gamma, beta, bn_param)
    out, relu_cache = relu_forward(an)
    return out, (conv_cache, bn_cache, relu_cache)


def conv_bn_relu_backward(dout: Any, cache: tuple) -> tuple[Any, Any, Any, Any, Any]:
    """Backward pass of :func:`conv_bn_relu_forward`: dx, dw, db, dgamma, dbeta."""
    conv_cache, bn_cache, relu_cache = cache
    dan = relu_backward(dout, relu_cache)
    da, dgamma, dbeta = spatial_batchnorm_backward(dan, bn_cache)
    dx, dw, db = conv_backward_fast(da, conv_cache)
    return dx, dw, db, dgamma, dbeta
