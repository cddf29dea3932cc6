"""Compiled single-threaded CPU kernels (numba) that :class:`xpdl.backends.numpy_backend.NumpyBackend` runs.

Each kernel does in one or two passes over memory what the reference ``xp``
code (:class:`xpdl.backends.Backend`, :mod:`xpdl.updater`) does in several; the
tests check every kernel against that reference. All multithreading is left
to the BLAS: after each matrix product its worker threads keep spinning for a
while, and a second thread pool beside them would stall, so these kernels run
on the calling thread.

Imported only when a NumPy training step first runs (``import xpdl`` does not
load numba). Compilations are cached on disk, so only the first run pays, and it
pays little: no compiled kernel calls another (the fused batch-norm passes are
Python compositions of the stage kernels), and scratch arrays come from
``np.empty`` alone (each NumPy constructor used inside a kernel is one more
function numba compiles on a cold start); ``docs/performance.md`` has the figures.

Array arguments: ``a``, ``h``, ``xhat``, ``dh``, ``da`` (N, H) in the
parameters' dtype; ``b``, ``gamma``, ``beta`` (H,); ``words`` (N, H) uint32
or (0, 0) for no dropout; ``keep`` (N, H) uint8 or (0, 0).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

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


def bn_relu_dropout_forward(
    a, b, gamma, beta, running_mean, running_var, momentum, eps, words, threshold, scale, xhat, h, keep, inv_std
):
    """Train-mode ``h = dropout(relu(batchnorm(a + b)))`` for ``a`` (N, H) float32/64.

    Writes ``xhat`` (N, H), ``h`` (N, H), ``keep`` (N, H) uint8 (when ``words`` has
    rows), ``inv_std`` (H,), and updates ``running_mean`` / ``running_var`` (H,) in
    place with the batch mean and biased variance. Dropout keeps an element when
    its uint32 word is below ``threshold`` and scales it by ``scale = 1/p``.
    Column statistics are accumulated in float64, in two passes (mean, then the
    squared deviations). The stages are the compiled kernels below, called one by one
    from Python (as a rank of a data-parallel job does, summing the statistics over the
    ranks in between): a few microseconds more per call than one compiled kernel, and
    each compiled function is compiled once, not again inside a caller.
    """
    n, d = a.shape
    mean = np.zeros(d, np.float64)
    column_sums(a, mean)
    mean /= n
    var = np.zeros(d, np.float64)
    column_squared_deviations(a, mean, var)
    bn_statistics(mean, var, float(n), b, running_mean, running_var, momentum, eps, inv_std)  # float: as a rank
    bn_normalize_relu_dropout(a, mean, inv_std, gamma, beta, words, threshold, scale, xhat, h, keep)


@njit(**_JIT)
def column_sums(a, out):
    """``out[j] += sum_i a[i, j]`` for ``a`` (N, H); ``out`` (>= H,) float64 (a zeroed buffer gives the sums)."""
    n, d = a.shape
    acc = np.empty(d, np.float64)  # a local accumulator: the compiler knows it aliases nothing, and vectorizes
    for j in range(d):
        acc[j] = 0.0
    for i in range(n):
        for j in range(d):
            acc[j] += a[i, j]
    for j in range(d):
        out[j] += acc[j]


@njit(**_JIT)
def column_squared_deviations(a, mean, out):
    """``out[j] += sum_i (a[i, j] - mean[j])**2`` for ``a`` (N, H); ``mean``, ``out`` (H,) float64."""
    n, d = a.shape
    mu = np.empty(d, np.float64)
    acc = np.empty(d, np.float64)
    for j in range(d):
        mu[j] = mean[j]
        acc[j] = 0.0
    for i in range(n):
        for j in range(d):
            t = a[i, j] - mu[j]
            acc[j] += t * t
    for j in range(d):
        out[j] += acc[j]


@njit(**_JIT)
def bn_statistics(mean, sq_dev, count, b, running_mean, running_var, momentum, eps, inv_std):
    """From the batch ``mean`` (H,) and summed squared deviations ``sq_dev`` (H,) of ``count`` rows:

    ``inv_std = 1 / sqrt(sq_dev / count + eps)`` (H,) float64, and the running averages (H,)
    updated in place (the mean of ``a + b``: the affine output before its bias is added).
    """
    for j in range(mean.shape[0]):
        var = sq_dev[j] / count
        inv_std[j] = 1.0 / math.sqrt(var + eps)
        running_mean[j] = momentum * running_mean[j] + (1.0 - momentum) * (mean[j] + b[j])
        running_var[j] = momentum * running_var[j] + (1.0 - momentum) * var


@njit(**_JIT)
def bn_normalize_relu_dropout(a, mean, inv_std, gamma, beta, words, threshold, scale, xhat, h, keep):
    """``xhat = (a - mean) * inv_std`` and ``h = dropout(relu(gamma * xhat + beta))``, both (N, H)."""
    n, d = a.shape
    dropout = words.shape[0] > 0
    for i in range(n):
        for j in range(d):
            xh = (a[i, j] - mean[j]) * inv_std[j]
            xhat[i, j] = xh
            h[i, j] = _relu_dropout(gamma[j] * xh + beta[j], i, j, dropout, words, threshold, scale, keep)


def bn_relu_dropout_backward(dh, h, xhat, gamma, inv_std, keep, scale, da, dgamma, dbeta, db):
    """Backward pass of :func:`bn_relu_dropout_forward`.

    Inputs: ``dh`` (N, H) gradient of ``h``; ``h``, ``xhat``, ``keep`` from the forward.
    Writes ``da`` (N, H) (gradient of the affine output), ``dgamma``, ``dbeta`` and
    ``db`` (H,), which is exactly 0: batch norm cancels the bias before it. Uses
    ``dx = gamma * inv_std / N * (N * d - sum(d) - xhat * sum(d * xhat))`` with ``d``
    the gradient at the batch-norm output. A unit passes gradient when
    ``h > 0``, which is exactly when ReLU was active and dropout kept it. The two
    passes are the compiled kernels below, called from Python (a data-parallel rank
    sums the column sums over the ranks between them).
    """
    n, m = dh.shape
    sums = np.zeros(2 * m, np.float64)
    relu_dropout_bn_sums(dh, h, xhat, keep, scale, da, sums)
    dbeta[...] = sums[:m]
    dgamma[...] = sums[m:]
    db[...] = 0.0  # batch norm cancels the bias: its gradient is exactly zero
    bn_input_grad(da, xhat, gamma, inv_std, float(n), sums)  # float count, as a rank passes: one specialization


@njit(**_JIT)
def relu_dropout_bn_sums(dh, h, xhat, keep, scale, d, sums):
    """First backward pass: ``d`` (N, H), the gradient at the batch-norm output, and its column sums.

    Adds ``sum_i d[i, j]`` into ``sums[j]`` and ``sum_i d[i, j] * xhat[i, j]`` into
    ``sums[H + j]`` (``sums`` (>= 2H,) float64, zeroed by the caller).
    """
    n, m = dh.shape
    dropout = keep.shape[0] > 0
    sum_d = np.empty(m, np.float64)  # local accumulators: the compiler knows they alias nothing, and vectorizes
    sum_dx = np.empty(m, np.float64)
    for j in range(m):
        sum_d[j] = 0.0
        sum_dx[j] = 0.0
    for i in range(n):
        for j in range(m):
            g = _relu_dropout_grad(dh[i, j], h[i, j], dropout, scale)
            d[i, j] = g
            sum_d[j] += g
            sum_dx[j] += g * xhat[i, j]
    for j in range(m):
        sums[j] += sum_d[j]
        sums[m + j] += sum_dx[j]


@njit(**_JIT)
def bn_input_grad(d, xhat, gamma, inv_std, count, sums):
    """Second backward pass, in place: ``d = gamma * inv_std / count * (count * d - sum_d - xhat * sum_dx)``.

    ``count`` rows in the whole batch; ``sums`` (2H,) float64: the column sums of ``d`` and of
    ``d * xhat`` over the whole batch (:func:`relu_dropout_bn_sums`, summed over ranks).
    """
    n, m = d.shape
    coef = np.empty(m, np.float64)
    sum_d = np.empty(m, np.float64)  # local copies: the compiler knows they alias nothing, and vectorizes
    sum_dx = np.empty(m, np.float64)
    for j in range(m):
        coef[j] = gamma[j] * inv_std[j] / count
        sum_d[j] = sums[j]
        sum_dx[j] = sums[m + j]
    for i in range(n):
        for j in range(m):
            d[i, j] = coef[j] * (count * d[i, j] - sum_d[j] - xhat[i, j] * sum_dx[j])


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
    col = np.empty(m, np.float64)
    for j in range(m):
        col[j] = 0.0
    for i in range(n):
        for j in range(m):
            g = _relu_dropout_grad(dh[i, j], h[i, j], dropout, scale)
            da[i, j] = g
            col[j] += g
    for j in range(m):
        db[j] = col[j]


@njit(**_JIT)
def ln_relu_dropout_forward(a, b, gamma, beta, eps, words, threshold, scale, xhat, h, keep, inv_std):
    """Train-mode ``h = dropout(relu(layernorm(a + b)))`` for ``a`` (N, H).

    Writes ``xhat`` (N, H), ``h`` (N, H), ``keep`` (N, H) (when ``words`` has rows)
    and ``inv_std`` (N,), one per sample. Row statistics are accumulated in
    float64, in two passes (mean, then the squared deviations).
    """
    n, d = a.shape
    dropout = words.shape[0] > 0
    for i in range(n):
        mean = 0.0
        for j in range(d):
            mean += a[i, j] + b[j]
        mean /= d
        var = 0.0
        for j in range(d):
            t = a[i, j] + b[j] - mean
            var += t * t
        r = 1.0 / math.sqrt(var / d + eps)
        inv_std[i] = r
        for j in range(d):
            xh = (a[i, j] + b[j] - mean) * r
            xhat[i, j] = xh
            h[i, j] = _relu_dropout(gamma[j] * xh + beta[j], i, j, dropout, words, threshold, scale, keep)


@njit(**_JIT)
def ln_relu_dropout_backward(dh, h, xhat, gamma, inv_std, keep, scale, da, dgamma, dbeta, db):
    """Backward pass of :func:`ln_relu_dropout_forward`: ``da`` (N, H), ``dgamma``, ``dbeta``, ``db`` (H,).

    Per row, with ``d`` the gradient at the normalization's output and ``dxhat = gamma * d``:
    ``da = inv_std / H * (H * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))``; ``db`` is
    the column sum of ``da`` (layer norm does not cancel the bias before it).
    """
    n, m = dh.shape
    dropout = keep.shape[0] > 0
    col_d = np.empty(m, np.float64)
    col_dx = np.empty(m, np.float64)
    col_da = np.empty(m, np.float64)
    for j in range(m):
        col_d[j] = 0.0
        col_dx[j] = 0.0
        col_da[j] = 0.0
    for i in range(n):
        sum_d = 0.0
        sum_dx = 0.0
        for j in range(m):
            g = _relu_dropout_grad(dh[i, j], h[i, j], dropout, scale)
            col_d[j] += g
            col_dx[j] += g * xhat[i, j]
            dxh = g * gamma[j]
            da[i, j] = dxh
            sum_d += dxh
            sum_dx += dxh * xhat[i, j]
        r = inv_std[i] / m
        for j in range(m):
            v = r * (m * da[i, j] - sum_d - xhat[i, j] * sum_dx)
            da[i, j] = v
            col_da[j] += v
    for j in range(m):
        dbeta[j] = col_d[j]
        dgamma[j] = col_dx[j]
        db[j] = col_da[j]


@njit(inline="always")
def _adam_moments(m, v, i, gi, beta1, one_minus_beta1, beta2, one_minus_beta2):
    """Adam's first and second moments at ``i`` after gradient ``gi``, stored in ``m``, ``v`` and returned."""
    mi = beta1 * m[i] + one_minus_beta1 * gi
    vi = beta2 * v[i] + one_minus_beta2 * (gi * gi)
    m[i] = mi
    v[i] = vi
    return mi, vi


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
        mi, vi = _adam_moments(m, v, i, gi, beta1, one_minus_beta1, beta2, one_minus_beta2)
        w[i] = wi - step * mi / (np.sqrt(vi * inv_c2) + eps)


def adam_args(s, cast):
    """:func:`adam_update`'s scalars from :meth:`xpdl.updater.Adam.scalars`, in the parameters' dtype."""
    lr, b1, b2, eps, c1, c2 = s[:6]
    return cast(lr / c1), cast(b1), cast(1.0 - b1), cast(b2), cast(1.0 - b2), cast(eps), cast(1.0 / c2)


@njit(**_JIT)
def adamw_update(w, g, m, v, decay, step, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, inv_sqrt_c2):
    """In place, over flat ``w, g, m, v``: one AdamW step as ``torch.optim.AdamW``.

    ``decay = 1 - lr * weight_decay``, ``step = lr / (1 - beta1**t)``,
    ``inv_sqrt_c2 = 1 / sqrt(1 - beta2**t)``: ``w = w * decay - step * m / (sqrt(v) * inv_sqrt_c2 + eps)``.
    """
    for i in range(w.size):
        wi = w[i]
        gi = g[i]
        mi, vi = _adam_moments(m, v, i, gi, beta1, one_minus_beta1, beta2, one_minus_beta2)
        w[i] = wi * decay - step * mi / (np.sqrt(vi) * inv_sqrt_c2 + eps)


def adamw_args(s, cast):
    """:func:`adamw_update`'s scalars from :meth:`xpdl.updater.AdamW.scalars`, in the parameters' dtype."""
    lr, b1, b2, eps, c1, c2, wd = s
    return (
        cast(1.0 - lr * wd),
        cast(lr / c1),
        cast(b1),
        cast(1.0 - b1),
        cast(b2),
        cast(1.0 - b2),
        cast(eps),
        cast(1.0 / math.sqrt(c2)),
    )


@njit(**_JIT)
def sgd_update(w, g, lr):
    """In place: ``w -= lr * g``."""
    for i in range(w.size):
        wi = w[i]
        gi = g[i]
        w[i] = wi - lr * gi


def sgd_args(s, cast):
    """:func:`sgd_update`'s scalar: the learning rate."""
    return (cast(s[0]),)


@njit(**_JIT)
def momentum_update(w, g, vel, lr, mu):
    """In place: ``vel = mu * vel - lr * g; w += vel``."""
    for i in range(w.size):
        wi = w[i]
        gi = g[i]
        vi = mu * vel[i] - lr * gi
        vel[i] = vi
        w[i] = wi + vi


def momentum_args(s, cast):
    """:func:`momentum_update`'s scalars from :meth:`xpdl.updater.SGDMomentum.scalars`."""
    return cast(s[0]), cast(s[1])


@njit(**_JIT)
def rmsprop_update(w, g, cache, lr, decay, one_minus_decay, eps):
    """In place: ``cache = decay * cache + (1 - decay) * g**2; w -= lr * g / (sqrt(cache) + eps)``."""
    for i in range(w.size):
        wi = w[i]
        gi = g[i]
        ci = decay * cache[i] + one_minus_decay * (gi * gi)
        cache[i] = ci
        w[i] = wi - lr * gi / (np.sqrt(ci) + eps)


def rmsprop_args(s, cast):
    """:func:`rmsprop_update`'s scalars from :meth:`xpdl.updater.RMSProp.scalars`."""
    lr, decay, eps = s
    return cast(lr), cast(decay), cast(1.0 - decay), cast(eps)


#: Per update rule: the in-place kernel over flat ``(w, g, *state)`` and the function that turns the
#: rule's scalars into the kernel's scalar arguments.
UPDATE_KERNELS = {
    "sgd": (sgd_update, sgd_args),
    "sgd_momentum": (momentum_update, momentum_args),
    "rmsprop": (rmsprop_update, rmsprop_args),
    "adam": (adam_update, adam_args),
    "adamw": (adamw_update, adamw_args),
}


def _default_run_arguments(dtype: type = np.float32) -> dict[str, tuple]:
    """Small arguments of the types a default ``xpdl train`` passes (float32), per kernel it calls."""
    n, d = 4, 3
    a = np.ones((n, d), dtype)
    vec = np.ones(d, dtype)
    f64 = np.ones(d, np.float64)
    words, keep = np.ones((n, d), np.uint32), np.ones((n, d), np.uint8)
    w = np.ones(5, dtype)
    cast = np.dtype(dtype).type
    return {
        "relu_dropout_bn_sums": (a, a, a, keep, 2.0, a.copy(), np.zeros(2 * d)),
        "bn_input_grad": (a.copy(), a, vec, f64, float(n), np.zeros(2 * d)),
        "adam_update": (w, w.copy(), w.copy(), w.copy(), *adam_args((1e-3, 0.9, 0.999, 1e-8, 0.1, 0.1), cast)),
        "bn_normalize_relu_dropout": (a, f64, f64, vec, vec, words, 2**31, 2.0, a.copy(), a.copy(), keep.copy()),
        "bn_statistics": (f64, f64, float(n), vec, vec.copy(), vec.copy(), 0.9, 1e-5, f64.copy()),
        "column_squared_deviations": (a, f64, np.zeros(d)),
        "column_sums": (a, np.zeros(d)),
    }


def warm_up() -> None:
    """Compile into numba's disk cache (or load from it) every kernel a default ``xpdl train`` calls.

    ``python -c "from xpdl.cpu_kernels import warm_up; warm_up()"`` once (in an image build,
    before starting many tune workers or ranks) spares the first runs their compile wait.
    """
    for name, args in _default_run_arguments().items():
        globals()[name](*args)
