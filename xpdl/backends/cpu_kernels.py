"""Compiled single-threaded CPU kernels that :class:`xpdl.backends.numpy_backend.NumpyBackend` runs.

Each kernel does in one or two passes over memory what the reference ``xp``
code (:class:`xpdl.backends.Backend`, :mod:`xpdl.updater`) does in several; the
tests check every kernel against that reference. The kernels are C++
(``_cpu_kernels.cpp``, bodies in ``_cpu_kernels_body.h``), built when xpdl is
installed: no run waits for a compiler. Each loop does the reference's
operations in its order and types (no fused multiply-add), so the baseline,
AVX2 and AVX-512 builds, chosen per CPU (``instruction_set()``; the environment
variable ``XPDL_KERNEL_ISA`` caps it), give the same bits. All multithreading is left
to the BLAS: after each matrix product its worker threads keep spinning for a
while, and a second thread pool beside them would stall, so these kernels run
on the calling thread (releasing the GIL on large arrays).

Arguments are checked (dtype, rank, shape, contiguity, writable outputs): a bad
one raises TypeError or ValueError naming the kernel and the argument.
``T`` below is the parameters' dtype, float32 or float64; the statistics
(``mean``, ``inv_std``, ``sums``) are float64. ``a``, ``h``, ``xhat``, ``dh``,
``d``, ``da`` are (N, H) in T; ``b``, ``gamma``, ``beta`` (H,) in T; ``words``
(N, H) uint32 or (0, 0) for no dropout; ``keep`` (N, H) uint8 or (0, 0).
Dropout keeps an element when its word is below ``threshold`` and scales it by
``scale = 1/p``.

Batch norm, as stages (a data-parallel rank sums the statistics over the ranks
between them; :func:`bn_relu_dropout_forward` and :func:`bn_relu_dropout_backward`
run them on one process):

- ``column_sums(a, out)``: ``out[j] += sum_i a[i, j]`` (``out`` (>= H,) float64).
- ``column_squared_deviations(a, mean, out)``: ``out[j] += sum_i (a[i, j] - mean[j])**2``.
- ``bn_statistics(mean, sq_dev, count, b, running_mean, running_var, momentum, eps, inv_std)``:
  ``inv_std = 1 / sqrt(sq_dev / count + eps)``, and the running averages updated in
  place (the running mean is that of ``a + b``).
- ``bn_normalize_relu_dropout(a, mean, inv_std, gamma, beta, words, threshold, scale, xhat, h, keep)``:
  ``xhat = (a - mean) * inv_std``, ``h = dropout(relu(gamma * xhat + beta))``.
- ``relu_dropout_bn_sums(dh, h, xhat, keep, scale, d, sums)``: ``d``, the gradient at the
  batch-norm output (``dh`` where ``h > 0``, times ``scale`` with dropout), and its column
  sums: ``sums[j] += sum_i d[i, j]``, ``sums[H + j] += sum_i d[i, j] * xhat[i, j]``.
- ``bn_input_grad(d, xhat, gamma, inv_std, count, sums)``, in place:
  ``d = gamma * inv_std / count * (count * d - sum_d - xhat * sum_dx)``.

Without normalization, and with layer norm (one pass each way):

- ``bias_relu_dropout_forward(a, b, words, threshold, scale, h, keep)``: ``h = dropout(relu(a + b))``.
- ``relu_dropout_backward(dh, h, keep, scale, da, db)``: ``da`` and ``db``, its column sums.
- ``ln_relu_dropout_forward(a, b, gamma, beta, eps, words, threshold, scale, xhat, h, keep, inv_std)``:
  ``h = dropout(relu(layernorm(a + b)))``; ``inv_std`` (N,) float64, one per row.
- ``ln_relu_dropout_backward(dh, h, xhat, gamma, inv_std, keep, scale, da, dgamma, dbeta, db)``: per row,
  with ``dxhat = gamma * d``, ``da = inv_std / H * (H * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))``;
  ``db`` is the column sum of ``da`` (layer norm does not cancel the bias before it).

The update rules, in place over ``w``, ``g`` and the rule's state (C-contiguous,
any shape, seen flat), in T arithmetic (the scalars, from the ``*_args`` functions
below, are rounded to T):
``sgd_update``, ``momentum_update``, ``rmsprop_update``, ``adam_update`` and
``adamw_update`` (:data:`UPDATE_KERNELS`).

Dropout's words: ``philox_uint32(key_lo, key_hi, counter0, counter1, counter2, counter3, out)``
fills ``out`` (n,) uint32 with :func:`xpdl.rng.host_philox_uint32`'s words for the 128-bit key
and the 256-bit counter given as 64-bit parts, lowest first.

Row and column statistics are accumulated in float64, in two passes (mean, then
the squared deviations).
"""

from __future__ import annotations

import importlib
import math

import numpy as np

# the C++ extension, built at install; imported by name because the import map (grimp, import-linter)
# cannot read a compiled module: it is a leaf that imports nothing of xpdl
_compiled = importlib.import_module("xpdl.backends._cpu_kernels")

adam_update = _compiled.adam_update
adamw_update = _compiled.adamw_update
bias_relu_dropout_forward = _compiled.bias_relu_dropout_forward
bn_input_grad = _compiled.bn_input_grad
bn_normalize_relu_dropout = _compiled.bn_normalize_relu_dropout
bn_statistics = _compiled.bn_statistics
column_squared_deviations = _compiled.column_squared_deviations
column_sums = _compiled.column_sums
instruction_set = _compiled.instruction_set
ln_relu_dropout_backward = _compiled.ln_relu_dropout_backward
ln_relu_dropout_forward = _compiled.ln_relu_dropout_forward
momentum_update = _compiled.momentum_update
philox_uint32 = _compiled.philox_uint32
relu_dropout_backward = _compiled.relu_dropout_backward
relu_dropout_bn_sums = _compiled.relu_dropout_bn_sums
rmsprop_update = _compiled.rmsprop_update
sgd_update = _compiled.sgd_update

__all__ = [
    "UPDATE_KERNELS",
    "adam_update",
    "adamw_update",
    "bias_relu_dropout_forward",
    "bn_input_grad",
    "bn_normalize_relu_dropout",
    "bn_relu_dropout_backward",
    "bn_relu_dropout_forward",
    "bn_statistics",
    "column_squared_deviations",
    "column_sums",
    "instruction_set",
    "ln_relu_dropout_backward",
    "ln_relu_dropout_forward",
    "momentum_update",
    "philox_uint32",
    "relu_dropout_backward",
    "relu_dropout_bn_sums",
    "rmsprop_update",
    "sgd_update",
]


def bn_relu_dropout_forward(
    a, b, gamma, beta, running_mean, running_var, momentum, eps, words, threshold, scale, xhat, h, keep, inv_std
):
    """Train-mode ``h = dropout(relu(batchnorm(a + b)))`` for ``a`` (N, H) float32/64.

    Writes ``xhat`` (N, H), ``h`` (N, H), ``keep`` (N, H) uint8 (when ``words`` has
    rows), ``inv_std`` (H,), and updates ``running_mean`` / ``running_var`` (H,) in
    place with the batch mean and biased variance. Dropout keeps an element when
    its uint32 word is below ``threshold`` and scales it by ``scale = 1/p``.
    Column statistics are accumulated in float64, in two passes (mean, then the
    squared deviations). The stages are the compiled kernels above, called one by one
    from Python, as a rank of a data-parallel job does (summing the statistics over the
    ranks in between).
    """
    n, d = a.shape
    mean = np.zeros(d, np.float64)
    column_sums(a, mean)
    mean /= n
    var = np.zeros(d, np.float64)
    column_squared_deviations(a, mean, var)
    bn_statistics(mean, var, float(n), b, running_mean, running_var, momentum, eps, inv_std)
    bn_normalize_relu_dropout(a, mean, inv_std, gamma, beta, words, threshold, scale, xhat, h, keep)


def bn_relu_dropout_backward(dh, h, xhat, gamma, inv_std, keep, scale, da, dgamma, dbeta, db):
    """Backward pass of :func:`bn_relu_dropout_forward`.

    Inputs: ``dh`` (N, H) gradient of ``h``; ``h``, ``xhat``, ``keep`` from the forward.
    Writes ``da`` (N, H) (gradient of the affine output), ``dgamma``, ``dbeta`` and
    ``db`` (H,), which is exactly 0: batch norm cancels the bias before it. Uses
    ``dx = gamma * inv_std / N * (N * d - sum(d) - xhat * sum(d * xhat))`` with ``d``
    the gradient at the batch-norm output. A unit passes gradient when
    ``h > 0``, which is exactly when ReLU was active and dropout kept it. The two
    passes are the compiled kernels above, called from Python (a data-parallel rank
    sums the column sums over the ranks between them).
    """
    n, m = dh.shape
    sums = np.zeros(2 * m, np.float64)
    relu_dropout_bn_sums(dh, h, xhat, keep, scale, da, sums)
    dbeta[...] = sums[:m]
    dgamma[...] = sums[m:]
    db[...] = 0.0  # batch norm cancels the bias: its gradient is exactly zero
    bn_input_grad(da, xhat, gamma, inv_std, float(n), sums)


def adam_args(s):
    """:func:`adam_update`'s scalars from :meth:`xpdl.updater.Adam.scalars` (the kernel rounds them to the dtype)."""
    lr, b1, b2, eps, c1, c2 = s[:6]
    return lr / c1, b1, 1.0 - b1, b2, 1.0 - b2, eps, 1.0 / c2


def adamw_args(s):
    """:func:`adamw_update`'s scalars from :meth:`xpdl.updater.AdamW.scalars`."""
    lr, b1, b2, eps, c1, c2, wd = s
    return 1.0 - lr * wd, lr / c1, b1, 1.0 - b1, b2, 1.0 - b2, eps, 1.0 / math.sqrt(c2)


def sgd_args(s):
    """:func:`sgd_update`'s scalar: the learning rate."""
    return (s[0],)


def momentum_args(s):
    """:func:`momentum_update`'s scalars from :meth:`xpdl.updater.SGDMomentum.scalars`."""
    return s[0], s[1]


def rmsprop_args(s):
    """:func:`rmsprop_update`'s scalars from :meth:`xpdl.updater.RMSProp.scalars`."""
    lr, decay, eps = s
    return lr, decay, 1.0 - decay, eps


#: Per update rule: the in-place kernel over ``(w, g, *state)`` (C-contiguous, any shape, seen flat) and
#: the function that turns the rule's scalars into the kernel's scalar arguments, which the kernel
#: rounds to the parameters' dtype (float32 arithmetic for float32 parameters, as the reference).
UPDATE_KERNELS = {
    "sgd": (sgd_update, sgd_args),
    "sgd_momentum": (momentum_update, momentum_args),
    "rmsprop": (rmsprop_update, rmsprop_args),
    "adam": (adam_update, adam_args),
    "adamw": (adamw_update, adamw_args),
}
