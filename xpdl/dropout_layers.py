"""Inverted dropout, written once against ``xp``; masks are drawn on the input's own device.

``dropout_param`` keys:
    p: keep probability in (0, 1] (the seed's convention: each unit is kept with
       probability p, kept units are scaled by 1/p).
    mode: ``'train'`` (drop) or ``'test'`` (identity).
    seed: optional int. When present, every call draws the same mask from a fresh
       generator with this seed; no global random state is touched.
    rng: optional :class:`xpdl.rng.Generator`; used (and advanced) when no ``seed``
       is given. If neither is present, one is created and stored under ``rng``.
    rows: optional ``(first, total)``: x holds rows ``first ..`` of a batch of ``total``
       rows split across data-parallel ranks; the mask is those rows of the mask one
       process would draw for the whole batch (:meth:`xpdl.rng.Generator.random_uint32`).

The mask of a draw is identical on every backend for the same generator state.
"""

from __future__ import annotations

from typing import Any

from xpdl.arrays import check_mode, namespace
from xpdl.layers import affine_backward, affine_forward, relu_backward, relu_forward
from xpdl.rng import Generator, keep_threshold


def check_keep_probability(p: Any) -> float:
    """``p`` as a float if ``0 < p <= 1``; otherwise ValueError/TypeError naming ``dropout_param['p']``."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) and not hasattr(p, "__float__"):
        raise TypeError(f"dropout_param['p']: expected a keep probability in (0, 1], got {type(p).__name__}")
    p = float(p)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"dropout_param['p']: expected a keep probability in (0, 1], got {p}")
    return p


def dropout_generator(dropout_param: dict) -> Generator:
    """The generator a dropout call draws from (see the module docstring)."""
    if dropout_param.get("seed") is not None:
        return Generator(int(dropout_param["seed"]))
    rng = dropout_param.get("rng")
    if rng is None:
        rng = dropout_param["rng"] = Generator()
    return rng


def dropout_words(dropout_param: dict, shape: tuple[int, ...], like: Any) -> Any:
    """The uint32 words deciding a dropout mask of ``shape`` (rows ``dropout_param['rows']`` of a batch, if set)."""
    return dropout_generator(dropout_param).random_uint32(shape, like=like, rows=dropout_param.get("rows"))


def dropout_mask(x: Any, p: float, rng: Generator, rows: tuple[int, int] | None = None) -> Any:
    """Scaled keep mask for ``x``: ``1/p`` where kept, 0 elsewhere; x's shape, dtype and device.

    ``rows=(first, total)``: the rows of a ``total``-row batch's mask that x holds.
    """
    xp = namespace(x=x)
    threshold = keep_threshold(p)
    if threshold >= 2**32:
        return xp.ones_like(x) * (1.0 / p)
    words = rng.random_uint32(tuple(x.shape), like=x, rows=rows)
    keep = words < threshold  # a Python int: no host-to-device copy, which would wait for the GPU
    return xp.astype(keep, x.dtype) * (1.0 / p)


def dropout_forward(x: Any, dropout_param: dict) -> tuple[Any, tuple]:
    """Inverted dropout.

    Inputs:
        x: array of any shape.
        dropout_param: dict with ``p``, ``mode`` and optionally ``seed`` / ``rng``.

    Returns:
        out: x's shape and dtype; cache: ``(dropout_param, mask)`` (mask is None in test mode).
    """
    p = check_keep_probability(dropout_param.get("p"))
    mode = check_mode(dropout_param.get("mode"), "dropout_param")
    namespace(x=x)
    if mode == "test":
        return x, (dropout_param, None)
    mask = dropout_mask(x, p, dropout_generator(dropout_param), dropout_param.get("rows"))
    return x * mask, (dropout_param, mask)


def dropout_backward(dout: Any, cache: tuple) -> Any:
    """Backward pass of :func:`dropout_forward`: ``dout * mask`` (train) or ``dout`` (test)."""
    _, mask = cache
    if mask is None:
        return dout
    return dout * mask


def affine_relu_dropout_forward(x: Any, w: Any, b: Any, dropout_param: dict) -> tuple[Any, tuple]:
    """Affine - ReLU - dropout. Shapes as :func:`xpdl.layers.affine_forward`."""
    a, cache_affine = affine_forward(x, w, b)
    r, cache_relu = relu_forward(a)
    out, cache_dropout = dropout_forward(r, dropout_param)
    return out, (cache_affine, cache_relu, cache_dropout)


def affine_relu_dropout_backward(dout: Any, cache: tuple) -> tuple[Any, Any, Any]:
    """Backward pass of :func:`affine_relu_dropout_forward`: returns ``dx, dw, db``."""
    cache_affine, cache_relu, cache_dropout = cache
    dr = relu_backward(dropout_backward(dout, cache_dropout), cache_relu)
    return affine_backward(dr, cache_affine)
