"""Batch normalization and layer normalization, written once against ``xp``.

``bn_param`` keys:
    mode: ``'train'`` (normalize with batch statistics and update the running
          averages) or ``'test'`` (normalize with the running averages).
    eps: added to the variance (default 1e-5).
    momentum: running-average decay (default 0.9):
          ``running = momentum * running + (1 - momentum) * batch_stat``.
    running_mean, running_var: (D,) arrays; start at zeros of x's dtype and device.

    comm: optional :class:`xpdl.parallel.distributed.Communicator`. With more than one rank the
          batch is split across ranks and the statistics are those of the whole batch:
          column sums (and the row count) and then the sums of squared deviations are
          summed over the ranks, and the backward pass sums ``sum(dout)`` and
          ``sum(dout * xhat)`` over the ranks too (synchronized batch norm). The
          returned ``dgamma``, ``dbeta`` are then this rank's shares (the data-parallel
          gradient sum adds them up).

The variance is the biased batch variance (divide by N), as in cs231n.

Layer normalization (Ba, Kiros & Hinton, 2016) normalizes each sample over its
features instead, the same in training and at test time, so it keeps no running
statistics. ``ln_param`` keys: eps (default 1e-5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xpdl.arrays import check_mode, device, namespace
from xpdl.layers import affine_backward, affine_forward, relu_backward, relu_forward


def batchnorm_forward(x: Any, gamma: Any, beta: Any, bn_param: dict) -> tuple[Any, dict]:
    """Batch normalization of ``x`` (N, D) with scale ``gamma`` (D,) and shift ``beta`` (D,).

    Returns:
        out: (N, D); cache: a dict for :func:`batchnorm_backward` (train mode only).
    """
    mode = check_mode(bn_param.get("mode"), "bn_param")
    xp = namespace(x=x, gamma=gamma, beta=beta)
    if x.ndim != 2:
        raise ValueError(f"x: expected a 2-D (N, D) array, got shape {tuple(x.shape)}")
    n, d = x.shape
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    running_mean = bn_param.get("running_mean")
    running_var = bn_param.get("running_var")
    if running_mean is None:
        running_mean = xp.zeros(d, dtype=x.dtype, device=device(x))
    if running_var is None:
        running_var = xp.zeros(d, dtype=x.dtype, device=device(x))
    namespace(x=x, running_mean=running_mean, running_var=running_var)

    comm = _synced(bn_param)
    if mode == "train":
        if comm is None:
            count = n
            mu = xp.mean(x, axis=0)
            xmu = x - mu
            var = xp.mean(xmu * xmu, axis=0)
        else:
            sums = comm.allreduce(xp.concat([xp.sum(x, axis=0), xp.full((1,), n, dtype=x.dtype, device=device(x))]))
            count = sums[d]
            mu = sums[:d] / count
            xmu = x - mu
            var = comm.allreduce(xp.sum(xmu * xmu, axis=0)) / count
        inv_std = 1.0 / xp.sqrt(var + eps)
        xhat = xmu * inv_std
        out = gamma * xhat + beta
        running_mean = momentum * running_mean + (1.0 - momentum) * mu
        running_var = momentum * running_var + (1.0 - momentum) * var
        cache = {
            "mode": "train",
            "xhat": xhat,
            "xmu": xmu,
            "var": var,
            "inv_std": inv_std,
            "gamma": gamma,
            "eps": eps,
            "comm": comm,
            "count": count,
        }
    else:
        xhat = (x - running_mean) / xp.sqrt(running_var + eps)
        out = gamma * xhat + beta
        cache = {"mode": "test"}
    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    return out, cache


def _synced(bn_param: dict) -> Any:
    """The communicator batch statistics are summed over, or None (one process, or a single rank)."""
    comm = bn_param.get("comm")
    return comm if comm is not None and comm.size > 1 else None


def _train_cache(cache: Any) -> dict:
    if not isinstance(cache, dict) or cache.get("mode") != "train":
        got = cache.get("mode") if isinstance(cache, dict) else type(cache).__name__
        raise ValueError(
            "cache: batch-norm backward needs the cache of a train-mode forward "
            f"(bn_param['mode'] == 'train'), got one from mode {got!r}"
        )
    return cache


def batchnorm_backward(dout: Any, cache: dict) -> tuple[Any, Any, Any]:
    """Backward pass through the computational graph of :func:`batchnorm_forward`, node by node.

    Inputs: dout (N, D). Returns: dx (N, D), dgamma (D,), dbeta (D,).
    """
    c = _train_cache(cache)
    if c.get("comm") is not None:
        raise ValueError(
            "cache: a forward with batch statistics synchronized across ranks (bn_param['comm']) "
            "is differentiated by batchnorm_backward_alt, not batchnorm_backward"
        )
    xp = namespace(dout=dout, xhat=c["xhat"])
    n = dout.shape[0]
    xmu, inv_std, var, eps = c["xmu"], c["inv_std"], c["var"], c["eps"]
    dbeta = xp.sum(dout, axis=0)
    dgamma = xp.sum(c["xhat"] * dout, axis=0)
    dxhat = c["gamma"] * dout
    dxmu = dxhat * inv_std  # through xhat = xmu * inv_std
    dinv_std = xp.sum(dxhat * xmu, axis=0)
    dstd = -dinv_std * inv_std * inv_std  # inv_std = 1 / std
    dvar = 0.5 * dstd / xp.sqrt(var + eps)  # std = sqrt(var + eps)
    dxmu = dxmu + (2.0 / n) * xmu * dvar  # var = mean(xmu ** 2)
    dmu = -xp.sum(dxmu, axis=0)
    dx = dxmu + dmu / n  # xmu = x - mean(x)
    return dx, dgamma, dbeta


def batchnorm_backward_alt(dout: Any, cache: dict) -> tuple[Any, Any, Any]:
    """Backward pass of :func:`batchnorm_forward` in closed form (fewer passes over memory).

    ``dx = inv_std / N * (N * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))``,
    ``dxhat = gamma * dout``. Shapes as :func:`batchnorm_backward`. After a synchronized
    forward, N and both sums are those of the whole batch over all ranks, and
    ``dgamma``, ``dbeta`` this rank's shares.
    """
    c = _train_cache(cache)
    xp = namespace(dout=dout, xhat=c["xhat"])
    xhat = c["xhat"]
    dbeta = xp.sum(dout, axis=0)
    dgamma = xp.sum(xhat * dout, axis=0)
    comm = c.get("comm")
    if comm is None:
        n, sum_d, sum_dx = dout.shape[0], dbeta, dgamma
    else:
        d = dout.shape[1]
        sums = comm.allreduce(xp.concat([dbeta, dgamma]))
        n, sum_d, sum_dx = c["count"], sums[:d], sums[d:]
    scale = c["gamma"] * c["inv_std"] / n
    dx = scale * (n * dout - sum_d - xhat * sum_dx)
    return dx, dgamma, dbeta


def layernorm_forward(x: Any, gamma: Any, beta: Any, ln_param: dict) -> tuple[Any, dict]:
    """Layer normalization of each row of ``x`` (N, D), scaled by ``gamma`` (D,) and shifted by ``beta`` (D,).

    ``out[i] = gamma * (x[i] - mean(x[i])) / sqrt(var(x[i]) + eps) + beta`` with the
    biased variance over the D features of sample i.

    Returns:
        out: (N, D); cache: a dict for :func:`layernorm_backward`.
    """
    xp = namespace(x=x, gamma=gamma, beta=beta)
    if x.ndim != 2:
        raise ValueError(f"x: expected a 2-D (N, D) array, got shape {tuple(x.shape)}")
    eps = ln_param.get("eps", 1e-5)
    mu = xp.mean(x, axis=1, keepdims=True)
    xmu = x - mu
    var = xp.mean(xmu * xmu, axis=1, keepdims=True)
    inv_std = 1.0 / xp.sqrt(var + eps)
    xhat = xmu * inv_std
    return gamma * xhat + beta, {"xhat": xhat, "inv_std": inv_std, "gamma": gamma}


def layernorm_backward(dout: Any, cache: dict) -> tuple[Any, Any, Any]:
    """Backward pass of :func:`layernorm_forward`: the closed form of batch norm's, over rows.

    ``dx = inv_std / D * (D * dxhat - sum_j(dxhat) - xhat * sum_j(dxhat * xhat))``
    per row, ``dxhat = gamma * dout``. Inputs: dout (N, D). Returns: dx (N, D),
    dgamma (D,), dbeta (D,).
    """
    xp = namespace(dout=dout, xhat=cache["xhat"])
    d = dout.shape[1]
    xhat = cache["xhat"]
    dbeta = xp.sum(dout, axis=0)
    dgamma = xp.sum(xhat * dout, axis=0)
    dxhat = cache["gamma"] * dout
    sum_d = xp.sum(dxhat, axis=1, keepdims=True)
    sum_dx = xp.sum(dxhat * xhat, axis=1, keepdims=True)
    dx = (cache["inv_std"] / d) * (d * dxhat - sum_d - xhat * sum_dx)
    return dx, dgamma, dbeta


def affine_bn_relu_forward(x: Any, w: Any, b: Any, gamma: Any, beta: Any, bn_param: dict) -> tuple[Any, tuple]:
    """Affine - batch norm - ReLU. Shapes as :func:`xpdl.layers.affine_forward`."""
    a, cache_affine = affine_forward(x, w, b)
    h, cache_bn = batchnorm_forward(a, gamma, beta, bn_param)
    out, cache_relu = relu_forward(h)
    return out, (cache_affine, cache_bn, cache_relu)


def affine_bn_relu_backward(dout: Any, cache: tuple) -> tuple[Any, Any, Any, Any, Any]:
    """Backward pass of :func:`affine_bn_relu_forward`: returns ``dx, dw, db, dgamma, dbeta``."""
    cache_affine, cache_bn, cache_relu = cache
    dh = relu_backward(dout, cache_relu)
    da, dgamma, dbeta = batchnorm_backward_alt(dh, cache_bn)
    dx, dw, db = affine_backward(da, cache_affine)
    return dx, dw, db, dgamma, dbeta


def _check_spatial(x: Any, gamma: Any, beta: Any) -> Any:
    if not hasattr(x, "shape") or len(x.shape) != 4:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"x: expected a 4-D (N, C, H, W) array, got {shape}")
    xp = namespace(x=x, gamma=gamma, beta=beta)
    c = x.shape[1]
    for name, a in (("gamma", gamma), ("beta", beta)):
        if tuple(a.shape) != (c,):
            raise ValueError(f"{name}: expected shape ({c},) for the C = {c} channels of x, got {tuple(a.shape)}")
    return xp


def _channels_last(xp: Any, x: Any) -> Any:
    """(N, C, H, W) -> (N·H·W, C)."""
    return xp.reshape(xp.permute_dims(x, (0, 2, 3, 1)), (-1, x.shape[1]))


def _channels_first(xp: Any, x2: Any, shape: tuple) -> Any:
    """(N·H·W, C) -> (N, C, H, W)."""
    n, c, h, w = shape
    return xp.permute_dims(xp.reshape(x2, (n, h, w, c)), (0, 3, 1, 2))


def spatial_batchnorm_forward(x: Any, gamma: Any, beta: Any, bn_param: dict) -> tuple[Any, dict]:
    """Batch normalization of each channel of ``x`` (N, C, H, W) over N, H and W; ``gamma``, ``beta`` (C,).

    :func:`batchnorm_forward` on the (N·H·W, C) view: the same ``bn_param`` keys, running
    statistics (C,) and synchronization across ranks.

    Returns:
        out: (N, C, H, W); cache for :func:`spatial_batchnorm_backward`.
    """
    check_mode(bn_param.get("mode"), "bn_param")
    xp = _check_spatial(x, gamma, beta)
    out, cache = batchnorm_forward(_channels_last(xp, x), gamma, beta, bn_param)
    return _channels_first(xp, out, tuple(x.shape)), {"bn": cache, "shape": tuple(x.shape)}


def spatial_batchnorm_backward(dout: Any, cache: dict) -> tuple[Any, Any, Any]:
    """Backward pass of :func:`spatial_batchnorm_forward`: dx (N, C, H, W), dgamma (C,), dbeta (C,)."""
    xp = namespace(dout=dout)
    dx, dgamma, dbeta = batchnorm_backward_alt(_channels_last(xp, dout), _train_cache(cache.get("bn")))
    return _channels_first(xp, dx, cache["shape"]), dgamma, dbeta


def spatial_groupnorm_forward(x: Any, gamma: Any, beta: Any, G: int, gn_param: dict) -> tuple[Any, dict]:
    """Group normalization (Wu & He, 2018): each sample's C channels in ``G`` groups of C / G, each
    group normalized over its channels and H, W; then per-channel ``gamma`` (C,) and ``beta`` (C,).

    The same in training and at test time (no running statistics). ``gn_param`` keys: eps
    (default 1e-5). Unlike cs231n, whose gamma and beta are (1, C, 1, 1), they are (C,) as
    every other per-feature parameter of xpdl.

    Returns:
        out: (N, C, H, W); cache for :func:`spatial_groupnorm_backward`.
    """
    xp = _check_spatial(x, gamma, beta)
    n, c, h, w = x.shape
    if isinstance(G, bool) or not isinstance(G, int) or G < 1 or c % G:
        raise ValueError(f"G: expected a positive integer that divides the C = {c} channels of x, got {G!r}")
    eps = gn_param.get("eps", 1e-5)
    xg = xp.reshape(x, (n, G, -1))
    mu = xp.mean(xg, axis=2, keepdims=True)
    xmu = xg - mu
    var = xp.mean(xmu * xmu, axis=2, keepdims=True)
    inv_std = 1.0 / xp.sqrt(var + eps)
    xhat = xp.reshape(xmu * inv_std, (n, c, h, w))
    g4, b4 = xp.reshape(gamma, (1, c, 1, 1)), xp.reshape(beta, (1, c, 1, 1))
    return g4 * xhat + b4, {"xhat": xhat, "inv_std": inv_std, "gamma": gamma, "G": G}


def spatial_groupnorm_backward(dout: Any, cache: dict) -> tuple[Any, Any, Any]:
    """Backward pass of :func:`spatial_groupnorm_forward`: dx (N, C, H, W), dgamma (C,), dbeta (C,).

    Per group of M = C / G · H · W values: ``dx = inv_std / M * (M * dxhat - sum(dxhat) -
    xhat * sum(dxhat * xhat))`` with ``dxhat = gamma * dout``.
    """
    xhat, G = cache["xhat"], cache["G"]
    xp = namespace(dout=dout, xhat=xhat)
    n, c, h, w = dout.shape
    dbeta = xp.sum(dout, axis=(0, 2, 3))
    dgamma = xp.sum(dout * xhat, axis=(0, 2, 3))
    dxhat = xp.reshape(xp.reshape(cache["gamma"], (1, c, 1, 1)) * dout, (n, G, -1))
    xh = xp.reshape(xhat, (n, G, -1))
    m = dxhat.shape[2]
    sum_d = xp.sum(dxhat, axis=2, keepdims=True)
    sum_dx = xp.sum(dxhat * xh, axis=2, keepdims=True)
    dx = (cache["inv_std"] / m) * (m * dxhat - sum_d - xh * sum_dx)
    return xp.reshape(dx, (n, c, h, w)), dgamma, dbeta


@dataclass(frozen=True)
class Normalization:
    """A normalization layer as the net uses it after an affine layer.

    Attributes:
        forward: ``(x, gamma, beta, param) -> (out, cache)``.
        backward: ``(dout, cache) -> (dx, dgamma, dbeta)``.
        cancels_bias: the layer subtracts a per-feature batch mean, so a bias before it has no effect.
        running_stats: the layer keeps ``running_mean`` / ``running_var`` in its param dict.
    """

    forward: Callable[..., tuple[Any, Any]]
    backward: Callable[..., tuple[Any, Any, Any]]
    cancels_bias: bool
    running_stats: bool


#: The normalizations a :class:`xpdl.FullyConnectedNet` can put after its hidden affine layers.
NORMALIZATIONS = {
    "batchnorm": Normalization(batchnorm_forward, batchnorm_backward_alt, cancels_bias=True, running_stats=True),
    "layernorm": Normalization(layernorm_forward, layernorm_backward, cancels_bias=False, running_stats=False),
}
