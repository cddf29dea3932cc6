"""NumPy on the CPU, with compiled kernels (:mod:`xpdl.backends.cpu_kernels`) for the hot parts of a training step.

:class:`NumpyBackend` overrides the reference methods of :class:`xpdl.backends.Backend`:

- a hidden layer's forward is one matrix product into a kept buffer, then
  ``norm + bias + ReLU + dropout`` as one compiled pass (batch norm, layer norm
  or none); its backward is one compiled pass (two for batch norm's column
  sums) and the matrix products into kept buffers, without the first layer's
  input gradient;
- every matrix product runs on the BLAS threads :mod:`xpdl.threads` gives it
  (one thread for a net of small products);
- the L2 term is added in place;
- every update rule with a kernel in :data:`xpdl.backends.cpu_kernels.UPDATE_KERNELS`
  runs as one in-place pass per parameter, in the parameters' dtype.

Buffers are kept in the ``buffers`` dict a caller passes (the Trainer passes
one per layer, so a step allocates nothing); with ``buffers=None`` every result
is a fresh array. The numbers are those of the reference methods, to rounding
(float64 to 1e-12, float32 to 1e-5; ``tests/test_fast_paths.py``).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import numpy as np

from xpdl.backends.base import Backend, announce
from xpdl.conv_layers import conv_output_shape, pool_output_shape
from xpdl.dropout_layers import check_keep_probability, dropout_words
from xpdl.host import to_numpy
from xpdl.rng import MASK64, keep_threshold, register_word_source
from xpdl.threads import matmul as _matmul

_NO_WORDS = np.zeros((0, 0), np.uint32)
_NO_KEEP = np.zeros((0, 0), np.uint8)


def _kernels() -> Any:
    from xpdl.backends import cpu_kernels  # loaded by the first training step, not by import xpdl

    return cpu_kernels


@functools.cache
def kernels_problem() -> str:
    """Why the compiled CPU kernels cannot run here (``""`` when they can).

    They are built when xpdl is installed; a machine without a C++ compiler
    installs xpdl without them, and its training steps run the reference math.
    """
    try:
        from xpdl.backends import conv_kernels, cpu_kernels  # noqa: F401  (each loads its C++ extension)
    except ImportError as exc:
        return (
            f"the compiled CPU kernels were not built when xpdl was installed ({exc}); with a C++ compiler "
            "(g++ or clang++) on the PATH, reinstall xpdl (pip install --force-reinstall --no-deps xpdl)"
        )
    return ""


#: The values of ``XPDL_KERNEL_ISA``, which caps the compiled kernels' instruction set (lowest first).
ISA_CAPS = ("baseline", "avx2", "avx512")


def check_isa_cap() -> None:
    """Say once on stderr when ``XPDL_KERNEL_ISA`` holds no known instruction set (the kernels then ignore it)."""
    cap = os.environ.get("XPDL_KERNEL_ISA")
    if cap is not None and cap not in ISA_CAPS:
        running = _kernels().instruction_set()
        announce(f"XPDL_KERNEL_ISA: expected one of {', '.join(ISA_CAPS)}, got {cap[:40]!r}; the kernels run {running}")


def _is_numpy_array(like: Any) -> bool:
    return type(like) is np.ndarray


def philox_words(key: int, counter: int, shape: tuple[int, ...]) -> np.ndarray:
    """:func:`xpdl.rng.host_philox_uint32`'s words of ``shape``, made by the compiled Philox4x64-10.

    The same words (``tests/test_cpu_kernels.py`` checks them against NumPy's Philox, counters
    carrying across 64-bit words and wrapping at 2**256 included), without a NumPy bit
    generator per draw: 4x faster for a small net's masks, 1.2-1.8x for 256x1024.
    """
    out = np.empty(shape, np.uint32)
    c = [(counter >> (64 * i)) & MASK64 for i in range(4)]
    _kernels().philox_uint32(key & MASK64, key >> 64, *c, out.reshape(-1))
    return out


def _buffer(buffers: dict | None, key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialized array of ``shape`` and ``dtype``, kept in ``buffers[key]`` for the next call."""
    if buffers is None:
        return np.empty(shape, dtype)
    buf = buffers.get(key)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = buffers[key] = np.empty(shape, dtype)
    return buf


def _transient(buffers: dict | None, key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """:func:`_buffer` for a buffer used only while one backward call runs: with ``buffers["shared"]``
    (a dict every conv block of a net shares), a view of one flat array per key, grown to the largest
    block's size, so the blocks take turns with it."""
    shared = None if buffers is None else buffers.get("shared")
    if shared is None:
        return _buffer(buffers, key, shape, dtype)
    size = math.prod(shape)
    flat = shared.get((key, np.dtype(dtype).str))
    if flat is None or flat.size < size:
        flat = shared[(key, np.dtype(dtype).str)] = np.empty(size, dtype)
    return flat[:size].reshape(shape)


class _HiddenCache:
    """What :meth:`NumpyBackend.hidden_backward` needs from the forward pass."""

    __slots__ = ("layer", "x", "W", "gamma", "a", "h", "xhat", "inv_std", "keep", "scale", "comm", "count")

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


class _ConvCache:
    """What :meth:`NumpyBackend.conv_block_backward` needs from the forward pass."""

    __slots__ = ("block", "x_shape", "W", "cols", "a", "xhat", "inv_std", "gamma", "arg", "pool")

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


def _conv_kernels() -> Any:
    from xpdl.backends import conv_kernels  # loaded by the first conv training step

    return conv_kernels


def _conv_bn_unsupported(block: Any) -> bool:
    """A conv block's batch norm that the compiled path leaves to the reference: test mode or synchronized."""
    return block.norm_param.get("mode") != "train" or _synced(block.norm_param) is not None


class NumpyBackend(Backend):
    """NumPy on the CPU (see the module docstring)."""

    step_path = "numpy-fused"

    def __init__(self, reason: str = "numpy asked for") -> None:
        import array_api_compat.numpy

        super().__init__("numpy", array_api_compat.numpy, "cpu", reason)
        if not kernels_problem():
            register_word_source(_is_numpy_array, philox_words)
            check_isa_cap()

    def asarray(self, obj: Any, dtype: Any = None) -> Any:
        return np.asarray(to_numpy(obj), dtype=None if dtype is None else self.dtype(dtype))

    def training_ops(self) -> Backend:
        """This backend, or the reference (saying why, once) when ``XPDL_FUSED=0`` or the kernels are not built."""
        ops = super().training_ops()
        if ops is not self:
            return ops
        why = kernels_problem()
        if why:
            announce(f"numpy: the reference training step runs because {why}")
            return self.reference()
        return self

    # ---------------------------------------------------------------- a training step
    def hidden_forward(self, x, params, layer, dropout_param, buffers=None):
        i = layer.index
        if layer.normalization not in (None, "batchnorm", "layernorm"):
            return super().hidden_forward(x, params, layer, dropout_param, buffers)
        k = _kernels()
        W, b = params[f"W{i}"], params[f"b{i}"]
        n, width, dt = x.shape[0], W.shape[1], W.dtype
        a = _buffer(buffers, "a", (n, width), dt)
        h = _buffer(buffers, "h", (n, width), dt)
        _matmul(x, W, out=a)
        words, keep, threshold, scale = _NO_WORDS, _NO_KEEP, 2**32 - 1, 1.0
        if dropout_param is not None:
            p = check_keep_probability(dropout_param.get("p"))
            if keep_threshold(p) < 2**32:  # p == 1 keeps everything and draws nothing
                words = dropout_words(dropout_param, (n, width), like=a)
                keep = _buffer(buffers, "keep", (n, width), np.uint8)
                threshold, scale = keep_threshold(p), 1.0 / p
        xhat = inv_std = gamma = None
        count = n
        if layer.normalization is None:
            k.bias_relu_dropout_forward(a, b, words, threshold, scale, h, keep)
        else:
            xhat = _buffer(buffers, "xhat", (n, width), dt)
            gamma, beta, param = params[f"gamma{i}"], params[f"beta{i}"], layer.norm_param
            eps = float(param.get("eps", 1e-5))
            if layer.normalization == "batchnorm":
                inv_std = _buffer(buffers, "inv_std", (width,), np.float64)
                comm = _synced(param)
                if comm is None:
                    k.bn_relu_dropout_forward(
                        a,
                        b,
                        gamma,
                        beta,
                        param["running_mean"],
                        param["running_var"],
                        float(param.get("momentum", 0.9)),
                        eps,
                        words,
                        threshold,
                        scale,
                        xhat,
                        h,
                        keep,
                        inv_std,
                    )
                else:
                    count = _synced_bn_forward(
                        k, comm, a, b, gamma, beta, param, eps, words, threshold, scale, xhat, h, keep, inv_std
                    )
            else:
                inv_std = _buffer(buffers, "inv_std", (n,), np.float64)
                k.ln_relu_dropout_forward(a, b, gamma, beta, eps, words, threshold, scale, xhat, h, keep, inv_std)
        return h, _HiddenCache(
            layer=layer,
            x=x,
            W=W,
            gamma=gamma,
            a=a,
            h=h,
            xhat=xhat,
            inv_std=inv_std,
            keep=keep,
            scale=scale,
            comm=_synced(layer.norm_param),
            count=count,
        )

    def hidden_backward(self, dh, cache, input_grad=True, buffers=None):
        if not isinstance(cache, _HiddenCache):
            return super().hidden_backward(dh, cache, input_grad, buffers)
        k, c = _kernels(), cache
        i, W = c.layer.index, c.W
        dt = W.dtype
        da = c.a  # the affine output is not needed any more: it takes its gradient
        grads = {f"b{i}": _buffer(buffers, "db", (W.shape[1],), dt)}
        if c.layer.normalization is None:
            k.relu_dropout_backward(dh, c.h, c.keep, c.scale, da, grads[f"b{i}"])
        elif c.comm is not None:
            grads[f"gamma{i}"] = _buffer(buffers, "dgamma", (W.shape[1],), dt)
            grads[f"beta{i}"] = _buffer(buffers, "dbeta", (W.shape[1],), dt)
            _synced_bn_backward(k, c, dh, da, grads[f"gamma{i}"], grads[f"beta{i}"], grads[f"b{i}"])
        else:
            grads[f"gamma{i}"] = _buffer(buffers, "dgamma", (W.shape[1],), dt)
            grads[f"beta{i}"] = _buffer(buffers, "dbeta", (W.shape[1],), dt)
            kernel = k.bn_relu_dropout_backward if c.layer.normalization == "batchnorm" else k.ln_relu_dropout_backward
            kernel(
                dh,
                c.h,
                c.xhat,
                c.gamma,
                c.inv_std,
                c.keep,
                c.scale,
                da,
                grads[f"gamma{i}"],
                grads[f"beta{i}"],
                grads[f"b{i}"],
            )
        grads[f"W{i}"] = _matmul(c.x.T, da, out=_buffer(buffers, "dW", W.shape, dt))
        dx = _matmul(da, W.T, out=_buffer(buffers, "dx", c.x.shape, dt)) if input_grad else None
        return dx, grads

    def output_forward(self, x, w, b, buffers=None):
        scores = _matmul(x, w, out=_buffer(buffers, "scores", (x.shape[0], w.shape[1]), w.dtype))
        scores += b
        return scores, (x, w)

    def softmax_loss(self, scores, y):
        """:func:`xpdl.layers.softmax_loss` with the gradient made in place in ``scores`` (log-sum-exp)."""
        n = scores.shape[0]
        scores -= scores.max(axis=1, keepdims=True)
        picked = np.take_along_axis(scores, y.reshape(n, 1), axis=1)
        np.exp(scores, out=scores)
        sums = scores.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(sums) - picked, dtype=scores.dtype)
        scores /= sums
        scores[np.arange(n), y] -= 1.0
        scores /= n
        return np.asarray(loss), scores

    def output_backward(self, dscores, cache, input_grad=True, buffers=None):
        x, w = cache
        dw = _matmul(x.T, dscores, out=_buffer(buffers, "dW", w.shape, w.dtype))
        db = np.sum(dscores, axis=0, out=_buffer(buffers, "db", (w.shape[1],), w.dtype))
        dx = _matmul(dscores, w.T, out=_buffer(buffers, "dx", x.shape, w.dtype)) if input_grad else None
        return dx, dw, db

    def add_l2(self, dw, w, reg):
        wf = w.reshape(-1)
        sq = np.dot(wf, wf)
        dw += w.dtype.type(reg) * w
        return dw, sq

    def update_kernel(self, rule_name):
        return _update_kernel(rule_name)

    # ---------------------------------------------------------------- conv blocks
    def conv_block_forward(self, x, params, block, buffers=None):
        """:meth:`Backend.conv_block_forward` as im2col, one BLAS product and compiled passes (:mod:`conv_kernels`).

        Runs conv - [batch norm] - ReLU - max pool blocks whose batch norm is not synchronized
        across ranks; group norm, a synchronized batch norm, a test-mode batch norm or a block
        without a pool run the reference. The result is an (N, F, H', W') view of a
        channel-major buffer.
        """
        norm = block.normalization
        bn = norm == "batchnorm"
        if block.pool_param is None or norm not in (None, "batchnorm") or (bn and _conv_bn_unsupported(block)):
            return super().conv_block_forward(x, params, block, buffers)
        k = _conv_kernels()
        i = block.index
        W, b = params[f"W{i}"], params[f"b{i}"]
        stride, pad, n, f, ho, wo = conv_output_shape(tuple(x.shape), tuple(W.shape), block.conv_param)
        ph, pw, ps, po, qo = pool_output_shape((n, f, ho, wo), block.pool_param)
        dt = W.dtype
        if x.dtype != dt:
            raise TypeError(f"x: expected {dt} to match W{i}, got {x.dtype}")
        _, c, hh, ww = W.shape
        m = n * ho * wo
        cols = _buffer(buffers, "cols", (c * hh * ww, m), dt)
        k.im2col(x, hh, ww, stride, pad, cols)
        a = np.matmul(W.reshape(f, -1), cols, out=_buffer(buffers, "a", (f, m), dt))
        cache = _ConvCache(block=block, x_shape=tuple(x.shape), W=W, cols=cols, a=a, xhat=None, inv_std=None)
        if bn:
            p = block.norm_param
            cache.xhat = _buffer(buffers, "xhat", (f, m), dt)
            cache.inv_std = _buffer(buffers, "inv_std", (f,), dt)
            cache.gamma = params[f"gamma{i}"]
            mean, var = np.empty(f, dt), np.empty(f, dt)
            k.bn_relu_forward(
                a, cache.gamma, params[f"beta{i}"], p.get("eps", 1e-5), cache.xhat, mean, var, cache.inv_std
            )
            mean += b  # the statistics of conv + b, as the reference's (the bias cancels in the output)
            momentum = p.get("momentum", 0.9)
            rm, rv = p.get("running_mean"), p.get("running_var")
            rm = np.zeros(f, dt) if rm is None else rm
            rv = np.zeros(f, dt) if rv is None else rv
            p["running_mean"] = momentum * rm + (1.0 - momentum) * mean
            p["running_var"] = momentum * rv + (1.0 - momentum) * var
        else:
            k.bias_relu(a, b)
        hp = a.reshape(f, n, ho, wo)
        outp = _buffer(buffers, "pooled", (f, n, po, qo), dt)
        cache.arg = _buffer(buffers, "arg", (f, n, po, qo), np.uint8)
        k.max_pool_forward(hp, ph, pw, ps, outp, cache.arg)
        cache.pool = (pw, ps, ho, wo)
        return outp.transpose(1, 0, 2, 3), cache

    def conv_block_backward(self, dh, cache, input_grad=True, buffers=None):
        if not isinstance(cache, _ConvCache):
            return super().conv_block_backward(dh, cache, input_grad, buffers)
        k = _conv_kernels()
        block, W, cols = cache.block, cache.W, cache.cols
        i = block.index
        f, c, hh, ww = W.shape
        n, _, h, w = cache.x_shape
        dt = W.dtype
        m = cols.shape[1]
        da = _transient(buffers, "da", (f, m), dt)
        pw, ps, ho, wo = cache.pool
        k.max_pool_relu_backward(dh, cache.arg, cache.a.reshape(f, n, ho, wo), pw, ps, da.reshape(f, n, ho, wo))
        grads = {}
        if block.normalization == "batchnorm":
            dgamma, dbeta = _buffer(buffers, "dgamma", (f,), dt), _buffer(buffers, "dbeta", (f,), dt)
            k.bn_backward(da, cache.xhat, cache.gamma, cache.inv_std, dgamma, dbeta)
            grads[f"gamma{i}"], grads[f"beta{i}"] = dgamma, dbeta
            db = _buffer(buffers, "db", (f,), dt)
            db[...] = 0
        else:
            db = np.sum(da, axis=1, out=_buffer(buffers, "db", (f,), dt))
        # cols (K, M) @ da.T (M, F): BLAS runs this long-M product several times faster than da @ cols.T
        dWT = np.matmul(cols, da.T, out=_transient(buffers, "dWT", (c * hh * ww, f), dt))
        dW = _buffer(buffers, "dW", (f, c * hh * ww), dt)
        dW[...] = dWT.T
        grads[f"W{i}"], grads[f"b{i}"] = dW.reshape(W.shape), db
        if not input_grad:
            return None, grads
        dcols = np.matmul(W.reshape(f, -1).T, da, out=_transient(buffers, "dcols", cols.shape, dt))
        dxp = _buffer(buffers, "dx", (c, n, h, w), dt)
        stride, pad = block.conv_param.get("stride", 1), block.conv_param.get("pad", 0)
        k.col2im(dcols, hh, ww, stride, pad, dxp)
        return dxp.transpose(1, 0, 2, 3), grads


def _update_kernel(rule_name: str) -> Any:
    """``f(w, g, state, scalars)`` running rule ``rule_name``'s compiled kernel in place; None without one."""
    entry = _kernels().UPDATE_KERNELS.get(rule_name)
    if entry is None:
        return None
    kernel, scalar_args = entry

    def run(w: np.ndarray, g: np.ndarray, state: tuple, s: tuple) -> None:
        if not w.flags.c_contiguous or not all(a.flags.c_contiguous for a in state):
            raise ValueError("update: the compiled kernels update contiguous parameters and state in place")
        kernel(w, g if g.flags.c_contiguous else np.ascontiguousarray(g), *state, *scalar_args(s))

    return run


def _synced(norm_param: dict) -> Any:
    """The communicator a batch norm sums its statistics over (``bn_param['comm']`` with > 1 rank), or None."""
    comm = norm_param.get("comm")
    return comm if comm is not None and comm.size > 1 else None


def _synced_bn_forward(
    k: Any,
    comm: Any,
    a: np.ndarray,
    b: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    param: dict,
    eps: float,
    words: np.ndarray,
    threshold: int,
    scale: float,
    xhat: np.ndarray,
    h: np.ndarray,
    keep: np.ndarray,
    inv_std: np.ndarray,
) -> float:
    """:func:`xpdl.backends.cpu_kernels.bn_relu_dropout_forward` with the statistics of the batch over all ranks.

    Two small allreduces: the column sums with the row count ((H + 1,) float64), then the
    column sums of squared deviations from the global mean ((H,) float64). Returns the
    global row count.
    """
    n, width = a.shape
    sums = np.zeros(width + 1, np.float64)
    k.column_sums(a, sums)
    sums[width] = n
    comm.allreduce(sums)
    count = float(sums[width])
    mean = sums[:width] / count
    sq_dev = np.zeros(width, np.float64)
    k.column_squared_deviations(a, mean, sq_dev)
    comm.allreduce(sq_dev)
    k.bn_statistics(
        mean,
        sq_dev,
        count,
        b,
        param["running_mean"],
        param["running_var"],
        float(param.get("momentum", 0.9)),
        eps,
        inv_std,
    )
    k.bn_normalize_relu_dropout(a, mean, inv_std, gamma, beta, words, threshold, scale, xhat, h, keep)
    return count


def _synced_bn_backward(
    k: Any, c: _HiddenCache, dh: np.ndarray, da: np.ndarray, dgamma: np.ndarray, dbeta: np.ndarray, db: np.ndarray
) -> None:
    """:func:`~xpdl.backends.cpu_kernels.bn_relu_dropout_backward` with the whole batch's column sums (one allreduce).

    ``dgamma``, ``dbeta`` get this rank's shares (the data-parallel gradient sum adds them up).
    """
    width = da.shape[1]
    sums = np.zeros(2 * width, np.float64)
    k.relu_dropout_bn_sums(dh, c.h, c.xhat, c.keep, c.scale, da, sums)
    dbeta[...] = sums[:width]
    dgamma[...] = sums[width:]
    db[...] = 0.0
    comm = c.comm
    comm.allreduce(sums)
    k.bn_input_grad(da, c.xhat, c.gamma, c.inv_std, c.count, sums)
