"""Compiled CPU kernels of the NumPy backend's conv blocks: im2col/col2im, bias + ReLU, batch norm, max pool.

:meth:`xpdl.backends.numpy_backend.NumpyBackend.conv_block_forward` runs a conv block as
``im2col -> one BLAS matrix product -> [batch norm +] bias/ReLU in one pass -> max pool
keeping the argmax``; the backward pass mirrors it. Inside a block the activations are
kept channel-major, physically (C, N, H, W): the matrix product's (F, N·H'·W') result is
then already in that layout, a channel's batch-norm statistics are one contiguous row,
and the kernels below index such arrays through a transposed (N, C, H, W) view, so the
next block reads them without a copy.

The kernels are C++ (``_conv_kernels.cpp``, bodies in ``_conv_kernels_body.h``), built
when xpdl is installed: no run waits for a compiler. As in
:mod:`xpdl.backends.cpu_kernels`, every kernel runs on the calling thread (the BLAS has
the cores), releasing the GIL on large arrays, and the baseline, AVX2 and AVX-512 builds,
chosen per CPU, give the same bits (no fused multiply-add). The functions below are the
compiled ones themselves, with no Python wrapper per call.

Arguments are checked (dtype, rank, shape, contiguity, writable outputs, sizes, strides
and pads): a bad one raises TypeError or ValueError naming the kernel and the argument,
and no argument makes a kernel read or write outside an array. ``T`` is the activations'
dtype, float32 or float64; every array of a call is in T except ``arg`` (uint8). Only
``x`` (im2col) and ``dout`` (max_pool_relu_backward) may have any strides; the other
arrays must be C-contiguous.

Shapes: ``x`` (N, C, H, W) logical, any strides; ``cols`` (C·HH·WW, N·H'·W') with row
``(c·HH + i)·WW + j`` and column ``(n·H' + oh)·W' + ow``; ``a``, ``xhat``, ``da``
(F, M) with M = N·H'·W'; ``hp``, ``dap`` physical (F, N, H', W'); ``outp`` and ``arg``
physical (F, N, P, Q), the pooled size; ``arg`` uint8 window offsets ``di·pool_width + dj``
of each window's first maximum.

The kernels:

- ``im2col(x, hh, ww, stride, pad, cols)``: fill ``cols`` with the zero-padded input's
  taps (an hh x ww filter every ``stride``).
- ``col2im(dcols, hh, ww, stride, pad, dxp)``: the adjoint of ``im2col``: ``dxp``
  (C, N, H, W) physical = the sum of every tap's column of ``dcols``.
- ``bias_relu(a, b)``: ``a = max(a + b[:, None], 0)`` in place (the sum in T).
- ``bn_relu_forward(a, gamma, beta, eps, xhat, mean, var, inv_std)``: batch norm of each
  row of ``a`` over its M values, then ReLU, into ``a`` in place; writes ``xhat`` and the
  rows' ``mean``, biased ``var`` and ``inv_std`` (F,) (sums in float64).
- ``bn_backward(da, xhat, gamma, inv_std, dgamma, dbeta)``: closed-form batch-norm
  backward of each row, in place in ``da``,
  ``da = gamma * inv_std / M * (M * da - sum(da) - xhat * sum(da * xhat))``; writes
  ``dgamma = sum(da * xhat)`` and ``dbeta = sum(da)`` (sums in float64).
- ``max_pool_forward(hp, ph, pw, stride, outp, arg)``: max pool (ph x pw windows every
  ``stride``, ``ph * pw <= 256``) of ``hp`` into ``outp``; ``arg`` keeps each window's
  first maximum.
- ``max_pool_relu_backward(dout, arg, hp, pw, stride, dap)``: pool then ReLU backward:
  ``dap`` gets ``dout`` (N, F, P, Q), any strides, at each window's argmax where the ReLU
  output ``hp`` there is positive, 0 elsewhere (summed where windows overlap).
- ``instruction_set()``: ``"avx512"``, ``"avx2"`` or ``"baseline"``, the variant this CPU runs.
"""

from __future__ import annotations

import importlib

# the C++ extension, built at install; imported by name because the import map (grimp, import-linter)
# cannot read a compiled module: it is a leaf that imports nothing of xpdl
_compiled = importlib.import_module("xpdl.backends._conv_kernels")

bias_relu = _compiled.bias_relu
bn_backward = _compiled.bn_backward
bn_relu_forward = _compiled.bn_relu_forward
col2im = _compiled.col2im
im2col = _compiled.im2col
instruction_set = _compiled.instruction_set
max_pool_forward = _compiled.max_pool_forward
max_pool_relu_backward = _compiled.max_pool_relu_backward

__all__ = [
    "bias_relu",
    "bn_backward",
    "bn_relu_forward",
    "col2im",
    "im2col",
    "instruction_set",
    "max_pool_forward",
    "max_pool_relu_backward",
]
