"""Affine and ReLU layers and the softmax loss, written once against the array namespace ``xp``.

Every ``*_forward`` returns ``(out, cache)``; every ``*_backward(dout, cache)``
returns the gradients with the shapes of the forward's inputs. ``xp`` comes from
the arguments, so the same code runs on NumPy, CuPy or any Array API namespace;
results stay on the inputs' device and dtype. No function writes into its inputs.
"""

from __future__ import annotations

from typing import Any

from xpdl.arrays import device, namespace


def affine_forward(x: Any, w: Any, b: Any) -> tuple[Any, tuple]:
    """Fully-connected layer ``out = x.reshape(N, D) @ w + b``.

    Inputs:
        x: (N, d_1, ..., d_k) input, D = d_1 * ... * d_k.
        w: (D, M) weights.
        b: (M,) biases.

    Returns:
        out: (N, M); cache: ``(x, w, b)``.
    """
    xp = namespace(x=x, w=w, b=b)
    x2 = xp.reshape(x, (x.shape[0], -1))
    if x2.shape[1] != w.shape[0]:
        raise ValueError(
            f"x: expected {w.shape[0]} features per sample to match w {tuple(w.shape)}, "
            f"got {x2.shape[1]} (x shape {tuple(x.shape)})"
        )
    out = x2 @ w + b
    return out, (x, w, b)


def affine_backward(dout: Any, cache: tuple) -> tuple[Any, Any, Any]:
    """Backward pass of :func:`affine_forward`.

    Inputs:
        dout: (N, M) upstream gradient.
        cache: ``(x, w, b)`` from the forward pass.

    Returns:
        dx: (N, d_1, ..., d_k); dw: (D, M); db: (M,).
    """
    x, w, _ = cache
    xp = namespace(dout=dout, w=w)
    x2 = xp.reshape(x, (x.shape[0], -1))
    dx = xp.reshape(dout @ w.T, x.shape)
    dw = x2.T @ dout
    db = xp.sum(dout, axis=0)
    return dx, dw, db


def affine_param_grads(dout: Any, cache: tuple) -> tuple[Any, Any]:
    """The weight and bias gradients of :func:`affine_backward` alone: dw (D, M), db (M,).

    For a first layer, whose input gradient nothing uses.
    """
    x, w, _ = cache
    xp = namespace(dout=dout, w=w)
    return xp.reshape(x, (x.shape[0], -1)).T @ dout, xp.sum(dout, axis=0)


def relu_forward(x: Any) -> tuple[Any, Any]:
    """Rectified linear unit ``max(x, 0)``. Returns ``out`` (shape of x) and ``cache = x``."""
    xp = namespace(x=x)
    return xp.where(x > 0, x, xp.zeros_like(x)), x


def relu_backward(dout: Any, cache: Any) -> Any:
    """Backward pass of :func:`relu_forward`: ``dout`` where ``x > 0``, else 0. ``dout`` is not modified."""
    x = cache
    xp = namespace(dout=dout, x=x)
    return xp.where(x > 0, dout, xp.zeros_like(dout))


def affine_relu_forward(x: Any, w: Any, b: Any) -> tuple[Any, tuple]:
    """Affine followed by ReLU. Shapes as :func:`affine_forward`; cache ``(fc_cache, relu_cache)``."""
    a, fc_cache = affine_forward(x, w, b)
    out, relu_cache = relu_forward(a)
    return out, (fc_cache, relu_cache)


def affine_relu_backward(dout: Any, cache: tuple) -> tuple[Any, Any, Any]:
    """Backward pass of :func:`affine_relu_forward`: returns ``dx, dw, db``."""
    fc_cache, relu_cache = cache
    return affine_backward(relu_backward(dout, relu_cache), fc_cache)


def softmax_loss(x: Any, y: Any) -> tuple[Any, Any]:
    """Mean softmax cross-entropy, computed with log-sum-exp so no logit gap overflows.

    Inputs:
        x: (N, C) class scores.
        y: (N,) integer labels in ``[0, C)``.

    Returns:
        loss: 0-d array on x's device (``float(loss)`` reads it); dx: (N, C) gradient.
    """
    xp = namespace(x=x, y=y)
    n, c = x.shape
    shifted = x - xp.max(x, axis=1, keepdims=True)
    log_probs = shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))
    labels = xp.astype(y, xp.int64)
    picked = xp.take_along_axis(log_probs, xp.reshape(labels, (n, 1)), axis=1)
    loss = -xp.sum(picked) / n
    classes = xp.arange(c, dtype=xp.int64, device=device(x))
    one_hot = xp.astype(xp.reshape(labels, (n, 1)) == classes, x.dtype)
    dx = (xp.exp(log_probs) - one_hot) / n
    return loss, dx
