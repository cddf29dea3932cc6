"""CUDA kernels for the CuPy backend. Imports cleanly without CuPy; kernels compile on first use.

- :func:`philox_uint32`: Philox4x64-10 random words, the same stream as
  ``numpy.random.Philox`` (see :mod:`xpdl.rng` for the layout).
"""

from __future__ import annotations

import functools
import math
from typing import Any

from xpdl.rng import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1

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
    if (j < n) out[j] = (unsigned int)((k & 1) ? (w[k >> 1] >> 32) : (w[k >> 1] & 0xFFFFFFFFull));
}}
"""


@functools.cache
def _philox_kernel() -> Any:
    import cupy

    return cupy.ElementwiseKernel(
        "uint64 ctr0, uint64 ctr1, uint64 ctr2, uint64 ctr3, uint64 key0, uint64 key1, int64 n",
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
