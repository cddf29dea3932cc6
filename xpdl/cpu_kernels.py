"""Compiled single-threaded CPU kernels (numba) for the fused NumPy training step.

Each kernel does in one or two passes over memory what the reference
``xp`` code does in several; :mod:`xpdl.fused_step` calls them and the tests
check them against the reference functions. All multithreading is left to the
BLAS: after each matrix product its worker threads keep spinning for a while,
and a second thread pool beside them would stall, so these kernels run on the
calling thread.

``AVAILABLE`` is False (and nothing here is used) when numba is not installed.
Compilations are cached on disk, so only the first run pays for them.
"""

from __future__ import annotations

import math

import numpy as np

try:
    from numba import njit

    AVAILABLE = True
except ImportError:  # the reference xp path is used instead
    AVAILABLE = False

    def njit(*args, **kwargs):  # type: ignore[no-redef]
        def wrap(f):
            return f

        return wrap if not args or not callable(args[0]) else args[0]


_JIT = {"cache": True, "nogil": True, "fastmath": False, "error_model": "numpy"}


@njit(inline="always")
def _relu_dropout(y, i, j, dropout, words, threshold, scale, keep):
    """ReLU, then inverted dropout, of one pre-activation ``y`` at (i, j); records the keep bit."""
    if y < 0:
        y = 0.0
    if dropout:
        k = words[i, j] < threshold
        keep[i, j] = k
        y = y * scale if k else 0.0
    return y


@njit(inline="always")
def _relu_dropout_grad(dh, h, dropout, scale):
    """Gradient through :func:`_relu_dropout`: ``dh`` passes (scaled by 1/p) exactly where ``h > 0``."""
    g = dh if h > 0 else 0.0
    if dropout:
        g = g * scale
    return g


@njit(**_JIT)
def bn_relu_dropout_forward(a, b, gamma, beta, running_mean, running_var, momentum, eps,
                            words, threshold, scale, xhat, h, keep, inv_std):
    """Train-mode ``h = dropout(relu(batchnorm(a + b)))`` for ``a`` (N, H) float32/64.

    Writes ``xhat`` (N, H), ``h`` (N, H), ``keep`` (N, H) uint8 (when ``words`` has
    rows), ``inv_std`` (H,), and updates ``running_mean`` / ``running_var`` (H,) in
    place with the batch mean and biased variance. Dropout keeps an element when
    its uint32 word is below ``threshold`` and scales it by ``scale = 1/p``.
    Column statistics are accumulated in float64, in two passes (mean, then the
    squared deviations).
    """
    n, d = a.shape
    mean = np.zeros(d, np.float64)
    for i in range(n):
        for j in range(d):
            mean[j] += a[i, j]
    for j in range(d):
        mean[j] /= n
    var = np.zeros(d, np.float64)
    for i in range(n):
        for j in range(d):
            t = a[i, j] - mean[j]
            var[j] += t * t
    for j in range(d):
        var[j] /= n
        inv_std[j] = 1.0 / math.sqrt(var[j] + eps)
        running_mean[j] = momentum * running_mean[j] + (1.0 - momentum) * (mean[j] + b[j])
        running_var[j] = momentum * running_var[j] + (1.0 - momentum) * var[j]
    dropout = words.shape[0] > 0
    for i in range(n):
        for j in range(d):
            xh = (a[i, j] - mean[j]) * inv_std[j]
            xhat[i, j] = xh
            h[i, j] = _relu_dropout(gamma[j] * xh + beta[j], i, j, dropout, words, threshold, scale, keep)


@njit(**_JIT)
def bn_relu_dropout_backward(dh, h, xhat, gamma, inv_std, keep, scale, da, dgamma, dbeta, db):
    """Backward pass of :func:`bn_relu_dropout_forward`.

    Inputs: ``dh`` (N, H) gradient of ``h``; ``h``, ``xhat``, ``keep`` from the forward.
    Writes ``da`` (N, H) (gradient of the affine output), ``dgamma``, ``dbeta`` and
    ``db`` (H,), which is exactly 0: batch norm cancels the bias before it. Uses
    ``dx = gamma * inv_std / N * (N * d - sum(d) - xhat * sum(d * xhat))`` with ``d``
    the gradient at the batch-norm output. A unit passes gradient when
    ``h > 0``, which is exactly when ReLU was active and dropout kept it.
    """
    n, m = dh.shape
    dropout = keep.shape[0] > 0
    sum_d = np.zeros(m, np.float64)
    sum_dx = np.zeros(m, np.float64)
    for i in range(n):
        for j in range(m):
            g = _relu_dropout_grad(dh[i, j], h[i, j], dropout, scale)
            da[i, j] = g
            sum_d[j] += g
            sum_dx[j] += g * xhat[i, j]
    coef = np.empty(m, np.float64)
    for j in range(m):
        dbeta[j] = sum_d[j]
        dgamma[j] = sum_dx[j]
        coef[j] = gamma[j] * inv_std[j] / n
        db[j] = 0.0  # batch norm cancels the bias: its gradient is exactly zero
    for i in range(n):
        for j in range(m):
            da[i, j] = coef[j] * (n * da[i, j] - sum_d[j] - xhat[i, j] * sum_dx[j])


@njit(**_JIT)
def bias_relu_dropout_forward(a, b, words, threshold, scale, h, keep):
    """Train-mode ``h = dropout(relu(a + b))`` (no batch norm); ``keep`` as in the batch-norm kernel."""
    n, d = a.shape
    dropout = words.shape[0] > 0
    for i in range(n):
        for j in range(d):
            h[i, j] = _relu_dropout(a[i, j] + b[j], i, j, dropout, words, threshold, scale, keep)


@njit(**_JIT)
def relu_dropout_backward(dh, h, keep, scale, da, db):
    """Backward of :func:`bias_relu_dropout_forward`: ``da`` (N, H) and ``db`` (H,)."""
    n, m = dh.shape
    dropout = keep.shape[0] > 0
    col = np.zeros(m, np.float64)
    for i in range(n):
        for j in range(m):
            g = _relu_dropout_grad(dh[i, j], h[i, j], dropout, scale)
            da[i, j] = g
            col[j] += g
    for j in range(m):
        db[j] = col[j]


@njit(**_JIT)
def adam_update(w, g, m, v, step, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, inv_c2):
    """In place, over flat ``w, g, m, v``: one Adam step.

    ``step = lr / (1 - beta1**t)`` and ``inv_c2 = 1 / (1 - beta2**t)`` carry the bias
    corrections. Scalars come in the arrays' dtype, so float32 parameters are
    updated with float32 arithmetic (8 lanes per vector instruction), as the
    reference does.
    """
    for i in range(w.size):
        wi = w[i]
        gi = g[i]
        mi = beta1 * m[i] + one_minus_beta1 * gi
        vi = beta2 * v[i] + one_minus_beta2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        w[i] = wi - step * mi / (np.sqrt(vi * inv_c2) + eps)


@njit(**_JIT)
def sgd_update(w, g, lr):
    """In place: ``w -= lr * g``."""
    for i in range(w.size):
        wi = w[i]
        gi = g[i]
        w[i] = wi - lr * gi


@njit(**_JIT)
def momentum_update(w, g, vel, lr, mu):
    """In place: ``vel = mu * vel - lr * g; w += vel``."""
    for i in range(w.size):
        wi = w[i]
        gi = g[i]
        vi = mu * vel[i] - lr * gi
        vel[i] = vi
        w[i] = wi + vi


@njit(**_JIT)
def rmsprop_update(w, g, cache, lr, decay, one_minus_decay, eps):
    """In place: ``cache = decay * cache + (1 - decay) * g**2; w -= lr * g / (sqrt(cache) + eps)``."""
    for i in range(w.size):
        wi = w[i]
        gi = g[i]
        ci = decay * cache[i] + one_minus_decay * (gi * gi)
        cache[i] = ci
        w[i] = wi - lr * gi / (np.sqrt(ci) + eps)
