"""CUDA kernels that :class:`xpdl.backends.cupy_backend.CupyBackend` runs. Imports cleanly without CuPy.

Kernels compile on first use.

- :func:`philox_uint32`: Philox4x64-10 random words, the same stream as
  ``numpy.random.Philox`` (see :mod:`xpdl.rng` for the layout).
- :func:`fused_update`: each update rule of :mod:`xpdl.updater` that has a body
  in :data:`UPDATE_BODIES` as one in-place elementwise kernel over a parameter
  and its state (as PyTorch's fused Adam). A body's scalar parameters are the
  rule's :meth:`~xpdl.updater.UpdateRule.scalars`, in that order, as doubles;
  its arrays are ``g`` then ``w`` and the rule's state arrays. The arithmetic is
  done in double and rounded once to the parameters' dtype.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from xpdl.rng import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1

# ``i`` (the element index, here: the block), ``n`` and names starting with ``_`` are
# reserved by ElementwiseKernel.
_PHILOX_BODY = f"""
unsigned long long c0 = ctr0 + 1ull + (unsigned long long)i;
unsigned long long carry = (c0 < ctr0) ? 1ull : 0ull;
unsigned long long c1 = ctr1 + carry;
carry = (carry && c1 == 0ull) ? 1ull : 0ull;
unsigned long long c2 = ctr2 + carry;
carry = (carry && c2 == 0ull) ? 1ull : 0ull;
unsigned long long c3 = ctr3 + carry;
unsigned long long k0 = key0, k1 = key1;
for (int r = 0; r < 10; ++r) {{
    if (r) {{ k0 += {PHILOX_W0:#x}ull; k1 += {PHILOX_W1:#x}ull; }}
    unsigned long long lo0 = {PHILOX_M0:#x}ull * c0;
    unsigned long long hi0 = __umul64hi({PHILOX_M0:#x}ull, c0);
    unsigned long long lo1 = {PHILOX_M1:#x}ull * c2;
    unsigned long long hi1 = __umul64hi({PHILOX_M1:#x}ull, c2);
    unsigned long long n0 = hi1 ^ c1 ^ k0;
    unsigned long long n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
}}
unsigned long long w[4] = {{c0, c1, c2, c3}};
long long base = (long long)i * 8;
for (int k = 0; k < 8; ++k) {{
    long long j = base + k;
    if (j < count) out[j] = (unsigned int)((k & 1) ? (w[k >> 1] >> 32) : (w[k >> 1] & 0xFFFFFFFFull));
}}
"""


@functools.cache
def _philox_kernel() -> Any:
    import cupy

    return cupy.ElementwiseKernel(
        "uint64 ctr0, uint64 ctr1, uint64 ctr2, uint64 ctr3, uint64 key0, uint64 key1, int64 count",
        "raw uint32 out",
        _PHILOX_BODY,
        "xpdl_philox4x64_10_uint32",
    )


def philox_uint32(key: int, counter: int, shape: tuple[int, ...], like: Any) -> Any:
    """uint32 words of ``shape`` on the device of CuPy array ``like``: block j encrypts ``counter + 1 + j``."""
    import cupy

    n = math.prod(shape)
    blocks = -(-n // 8)
    m64 = (1 << 64) - 1
    ctr = [(counter >> (64 * k)) & m64 for k in range(4)]
    with cupy.cuda.Device(like.device.id):
        out = cupy.empty(n, dtype=cupy.uint32)
        if blocks:
            u64 = cupy.uint64
            _philox_kernel()(
                u64(ctr[0]),
                u64(ctr[1]),
                u64(ctr[2]),
                u64(ctr[3]),
                u64(key & m64),
                u64(key >> 64),
                cupy.int64(n),
                out,
                size=blocks,
            )
        return out.reshape(shape)


#: Per update rule: (input parameters, output parameters, body) of its ElementwiseKernel.
UPDATE_BODIES = {
    "sgd": ("T g, float64 lr", "T w", "w = (T)((double)w - lr * (double)g);"),
    "sgd_momentum": (
        "T g, float64 lr, float64 mu",
        "T w, T vel",
        "double vi = mu * (double)vel - lr * (double)g;vel = (T)vi; w = (T)((double)w + vi);",
    ),
    "rmsprop": (
        "T g, float64 lr, float64 decay, float64 eps",
        "T w, T cache",
        "double gi = (double)g;"
        "double ci = decay * (double)cache + (1.0 - decay) * gi * gi;"
        "cache = (T)ci; w = (T)((double)w - lr * gi / (sqrt(ci) + eps));",
    ),
    "adam": (
        "T g, float64 lr, float64 b1, float64 b2, float64 eps, float64 c1, float64 c2",
        "T w, T m, T v",
        "double gi = (double)g;"
        "double mi = b1 * (double)m + (1.0 - b1) * gi;"
        "double vi = b2 * (double)v + (1.0 - b2) * gi * gi;"
        "m = (T)mi; v = (T)vi;"
        "w = (T)((double)w - lr * (mi / c1) / (sqrt(vi / c2) + eps));",
    ),
    "adamw": (
        "T g, float64 lr, float64 b1, float64 b2, float64 eps, float64 c1, float64 c2, float64 wd",
        "T w, T m, T v",
        "double gi = (double)g;"
        "double mi = b1 * (double)m + (1.0 - b1) * gi;"
        "double vi = b2 * (double)v + (1.0 - b2) * gi * gi;"
        "m = (T)mi; v = (T)vi;"
        "w = (T)((double)w * (1.0 - lr * wd) - (lr / c1) * mi / (sqrt(vi) / sqrt(c2) + eps));",
    ),
}


@functools.cache
def _update_kernel(rule: str) -> Any:
    import cupy

    params, outs, body = UPDATE_BODIES[rule]
    return cupy.ElementwiseKernel(params, outs, body, f"xpdl_{rule}_update")


def update_arguments(g: Any, w: Any, state: tuple, scalars: tuple[float, ...]) -> tuple:
    """The positional arguments of an update kernel: ``g``, the rule's scalars, ``w``, the state arrays."""
    return (g, *(float(v) for v in scalars), w, *state)


def fused_update(rule: str, w: Any, g: Any, state: tuple, scalars: tuple[float, ...]) -> None:
    """Apply update ``rule`` to CuPy array ``w`` and its ``state`` arrays in place, in one kernel.

    ``scalars`` come from the rule's :meth:`~xpdl.updater.UpdateRule.scalars`.
    """
    _update_kernel(rule)(*update_arguments(g, w, state, scalars))
