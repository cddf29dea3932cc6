"""Compiled CPU kernels (numba) of the NumPy backend's conv blocks: im2col/col2im, bias + ReLU, batch norm, max pool.

:meth:`xpdl.backends.numpy_backend.NumpyBackend.conv_block_forward` runs a conv block as
``im2col -> one BLAS matrix product -> [batch norm +] bias/ReLU in one pass -> max pool
keeping the argmax``; the backward pass mirrors it. Inside a block the activations are
kept channel-major, physically (C, N, H, W): the matrix product's (F, N·H'·W') result is
then already in that layout, a channel's batch-norm statistics are one contiguous row,
and the kernels below index such arrays through a transposed (N, C, H, W) view, so the
next block reads them without a copy.

As in :mod:`xpdl.backends.cpu_kernels`, every kernel runs on the calling thread (the BLAS
has the cores). Imported only when a NumPy conv step first runs; compilations are cached.

Shapes: ``x`` (N, C, H, W) logical, any strides; ``cols`` (C·HH·WW, N·H'·W') with row
``(c·HH + i)·WW + j`` and column ``(n·H' + oh)·W' + ow``; ``a``, ``h``, ``xhat``, ``da``
(F, M) with M = N·H'·W'; ``hp``, ``dap`` physical (F, N, H', W'); ``arg`` uint8 window
offsets ``di·pool_width + dj`` of each window's first maximum.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_JIT = {"cache": True, "nogil": True, "fastmath": False, "error_model": "numpy"}


@njit(inline="always")
def _valid(j, pad, stride, w_, wo):
    """The output columns ``[lo, hi)`` whose tap ``ow * stride - pad + j`` falls inside ``[0, w_)``."""
    lo = 0 if j >= pad else (pad - j + stride - 1) // stride
    hi = (w_ + pad - j + stride - 1) // stride
    hi = min(max(hi, lo), wo)
    return min(lo, wo), hi


@njit(**_JIT)
def im2col(x, hh, ww, stride, pad, cols):
    """Fill ``cols`` with the zero-padded input's taps (see the module docstring for the layout)."""
    n_, c_, h_, w_ = x.shape
    ho = (h_ + 2 * pad - hh) // stride + 1
    wo = (w_ + 2 * pad - ww) // stride + 1
    p = ho * wo
    zero = cols.dtype.type(0)
    for c in range(c_):
        for i in range(hh):
            for j in range(ww):
                k = (c * hh + i) * ww + j
                for n in range(n_):
                    for oh in range(ho):
                        ih = oh * stride - pad + i
                        col = n * p + oh * wo
                        if ih < 0 or ih >= h_:
                            for ow in range(wo):
                                cols[k, col + ow] = zero
                            continue
                        lo, hi = _valid(j, pad, stride, w_, wo)
                        for ow in range(lo):
                            cols[k, col + ow] = zero
                        for ow in range(lo, hi):
                            cols[k, col + ow] = x[n, c, ih, ow * stride - pad + j]
                        for ow in range(hi, wo):
                            cols[k, col + ow] = zero


@njit(**_JIT)
def col2im(dcols, hh, ww, stride, pad, dxp):
    """The adjoint of :func:`im2col`: ``dxp`` (C, N, H, W) physical = the sum of every tap's column."""
    c_, n_, h_, w_ = dxp.shape
    ho = (h_ + 2 * pad - hh) // stride + 1
    wo = (w_ + 2 * pad - ww) // stride + 1
    p = ho * wo
    dxp[...] = 0
    for c in range(c_):
        for i in range(hh):
            for j in range(ww):
                k = (c * hh + i) * ww + j
                for n in range(n_):
                    for oh in range(ho):
                        ih = oh * stride - pad + i
                        if ih < 0 or ih >= h_:
                            continue
                        col = n * p + oh * wo
                        lo, hi = _valid(j, pad, stride, w_, wo)
                        for ow in range(lo, hi):
                            dxp[c, n, ih, ow * stride - pad + j] += dcols[k, col + ow]


@njit(**_JIT)
def bias_relu(a, b):
    """``a = max(a + b[:, None], 0)`` in place."""
    f_, m_ = a.shape
    for f in range(f_):
        bf = b[f]
        for m in range(m_):
            y = a[f, m] + bf
            a[f, m] = y if y > 0 else 0


@njit(**_JIT)
def bn_relu_forward(a, gamma, beta, eps, xhat, mean, var, inv_std):
    """Batch norm of each row of ``a`` (F, M) over its M values, then ReLU, into ``a`` in place.

    Writes ``xhat``, and the rows' ``mean``, biased ``var`` and ``inv_std`` (F,) (sums in float64).
    """
    f_, m_ = a.shape
    for f in range(f_):
        s = 0.0
        for m in range(m_):
            s += a[f, m]
        mu = s / m_
        ss = 0.0
        for m in range(m_):
            d = a[f, m] - mu
            ss += d * d
        v = ss / m_
        inv = 1.0 / math.sqrt(v + eps)
        mean[f], var[f], inv_std[f] = mu, v, inv
        g, bt = gamma[f], beta[f]
        for m in range(m_):
            xh = (a[f, m] - mu) * inv
            xhat[f, m] = xh
            y = g * xh + bt
            a[f, m] = y if y > 0 else 0


@njit(**_JIT)
def bn_backward(da, xhat, gamma, inv_std, dgamma, dbeta):
    """Closed-form batch-norm backward of each row, in place in ``da`` (F, M); writes ``dgamma``, ``dbeta``."""
    f_, m_ = da.shape
    for f in range(f_):
        sd = 0.0
        sdx = 0.0
        for m in range(m_):
            sd += da[f, m]
            sdx += da[f, m] * xhat[f, m]
        dgamma[f], dbeta[f] = sdx, sd
        scale = gamma[f] * inv_std[f] / m_
        for m in range(m_):
            da[f, m] = scale * (m_ * da[f, m] - sd - xhat[f, m] * sdx)


@njit(**_JIT)
def max_pool_forward(hp, ph, pw, stride, outp, arg):
    """Max pool of ``hp`` (F, N, H, W) physical into ``outp`` (F, N, H', W'); ``arg`` keeps each window's first max."""
    f_, n_, ho, wo = outp.shape
    if ph == 2 and pw == 2 and stride == 2:  # the 2x2 pool of every ConvNet block, unrolled (same order)
        for f in range(f_):
            for n in range(n_):
                for oh in range(ho):
                    for ow in range(wo):
                        h0, w0 = 2 * oh, 2 * ow
                        best, t = hp[f, n, h0, w0], 0
                        v = hp[f, n, h0, w0 + 1]
                        if v > best:
                            best, t = v, 1
                        v = hp[f, n, h0 + 1, w0]
                        if v > best:
                            best, t = v, 2
                        v = hp[f, n, h0 + 1, w0 + 1]
                        if v > best:
                            best, t = v, 3
                        outp[f, n, oh, ow] = best
                        arg[f, n, oh, ow] = t
        return
    for f in range(f_):
        for n in range(n_):
            for oh in range(ho):
                for ow in range(wo):
                    h0, w0 = oh * stride, ow * stride
                    best = hp[f, n, h0, w0]
                    t = 0
                    for di in range(ph):
                        for dj in range(pw):
                            v = hp[f, n, h0 + di, w0 + dj]
                            if v > best:
                                best = v
                                t = di * pw + dj
                    outp[f, n, oh, ow] = best
                    arg[f, n, oh, ow] = t


@njit(**_JIT)
def max_pool_relu_backward(dout, arg, hp, pw, stride, dap):
    """Pool then ReLU backward: ``dap`` (F, N, H, W) physical gets ``dout`` (N, F, H', W', any strides)
    at each window's argmax where the ReLU output there is positive, 0 elsewhere."""
    f_, n_, ho, wo = arg.shape
    # 2x2 windows, stride 2, tiling the input (H = 2 H' holds only for a pool height of 2): every
    # input element is written once, so no zeroing pass
    if pw == 2 and stride == 2 and dap.shape[2] == 2 * ho and dap.shape[3] == 2 * wo:
        zero = dap.dtype.type(0)
        for f in range(f_):
            for n in range(n_):
                for oh in range(ho):
                    for ow in range(wo):
                        t = arg[f, n, oh, ow]
                        g = dout[n, f, oh, ow]
                        for q in range(4):
                            ih, iw = 2 * oh + q // 2, 2 * ow + q % 2
                            dap[f, n, ih, iw] = g if q == t and hp[f, n, ih, iw] > 0 else zero
        return
    dap[...] = 0
    for f in range(f_):
        for n in range(n_):
            for oh in range(ho):
                for ow in range(wo):
                    t = arg[f, n, oh, ow]
                    ih = oh * stride + t // pw
                    iw = ow * stride + t % pw
                    if hp[f, n, ih, iw] > 0:
                        dap[f, n, ih, iw] += dout[n, f, oh, ow]


def warm_up() -> None:
    """Compile (or load from the cache) every kernel for float32 and float64."""
    for dt in (np.float32, np.float64):
        x = np.zeros((1, 1, 2, 2), dt)
        cols = np.zeros((1, 4), dt)
        im2col(x, 1, 1, 1, 0, cols)
        col2im(cols, 1, 1, 1, 0, np.zeros((1, 1, 2, 2), dt))
        bias_relu(cols, np.zeros(1, dt))
        v = np.zeros(1, dt)
        bn_relu_forward(cols, v, v, 1e-5, cols.copy(), v.copy(), v.copy(), v.copy())
        bn_backward(cols, cols.copy(), v, v, v.copy(), v.copy())
