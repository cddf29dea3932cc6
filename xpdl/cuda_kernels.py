"""CUDA kernels for the CuPy backend. Imports cleanly without CuPy; kernels compile on first use.

- :func:`philox_uint32`: Philox4x64-10 random words, the same stream as
  ``numpy.random.Philox`` (see :mod:`xpdl.rng` for the layout).
- :func:`fused_update`: each update rule of :mod:`xpdl.updater` as one in-place
  elementwise kernel over a parameter and its state (as PyTorch's fused Adam).
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
            _philox_kernel()(u64(ctr[0]), u64(ctr[1]), u64(ctr[2]), u64(ctr[3]),
                             u64(key & m64), u64(key >> 64), cupy.int64(n), out, size=blocks)
        return out.reshape(shape)


_UPDATE_BODIES = {
    "adam": ("T g, float64 step, float64 b1, float64 b2, float64 eps, float64 inv_c2, float64 reg",
             "T w, T m, T v",
             "double gi = (double)g + reg * (double)w;"
             "double mi = b1 * (double)m + (1.0 - b1) * gi;"
             "double vi = b2 * (double)v + (1.0 - b2) * gi * gi;"
             "m = (T)mi; v = (T)vi;"
             "w = (T)((double)w - step * mi / (sqrt(vi * inv_c2) + eps));"),
    "sgd": ("T g, float64 lr, float64 reg", "T w",
            "w = (T)((double)w - lr * ((double)g + reg * (double)w));"),
    "sgd_momentum": ("T g, float64 lr, float64 mu, float64 reg", "T w, T vel",
                     "double vi = mu * (double)vel - lr * ((double)g + reg * (double)w);"
                     "vel = (T)vi; w = (T)((double)w + vi);"),
    "rmsprop": ("T g, float64 lr, float64 decay, float64 eps, float64 reg", "T w, T cache",
                "double gi = (double)g + reg * (double)w;"
                "double ci = decay * (double)cache + (1.0 - decay) * gi * gi;"
                "cache = (T)ci; w = (T)((double)w - lr * gi / (sqrt(ci) + eps));"),
}


@functools.cache
def _update_kernel(rule: str) -> Any:
    import cupy

    params, outs, body = _UPDATE_BODIES[rule]
    return cupy.ElementwiseKernel(params, outs, body, f"xpdl_{rule}_update")


def fused_update(rule: str, w: Any, g: Any, config: dict, reg: float = 0.0) -> None:
    """Apply update ``rule`` to CuPy arrays ``w`` and its state in ``config``, in place, in one kernel.

    ``config`` holds the rule's hyperparameters and state (see :mod:`xpdl.updater`);
    Adam's ``t`` is incremented here. ``reg * w`` is added to the gradient first.
    """
    kernel = _update_kernel(rule)
    lr = float(config["learning_rate"])
    if rule == "adam":
        config["t"] += 1
        t, b1, b2 = int(config["t"]), float(config["beta1"]), float(config["beta2"])
        kernel(g, lr / (1.0 - b1**t), b1, b2, float(config["epsilon"]), 1.0 / (1.0 - b2**t), reg,
               w, config["m"], config["v"])
    elif rule == "sgd":
        kernel(g, lr, reg, w)
    elif rule == "sgd_momentum":
        kernel(g, lr, float(config["momentum"]), reg, w, config["velocity"])
    else:
        kernel(g, lr, float(config["decay_rate"]), float(config["epsilon"]), reg, w, config["cache"])
