"""CuPy-only code: the Philox kernel and device placement. Skipped with the reason where no CUDA device works."""

from __future__ import annotations

import numpy as np
import pytest

from xpdl.backends import get_backend, probe_cupy

_WHY = probe_cupy(0)
pytestmark = pytest.mark.skipif(bool(_WHY), reason=f"needs a working CUDA device with CuPy: {_WHY}")


@pytest.mark.parametrize("key,counter,n", [(0, 0, 1), (5, 0, 8), (123456789, 77, 1001), (2**127 + 3, 2**64 - 2, 40)])
def test_philox_kernel_reproduces_numpy_stream(key, counter, n):
    from xpdl.backends import cuda_kernels

    be = get_backend("cupy")
    words = be.to_numpy(cuda_kernels.philox_uint32(key, counter, (n,), be.xp.zeros(1)))
    blocks = -(-n // 8)
    raw = np.random.Philox(key=key, counter=counter).random_raw(blocks * 4)
    assert np.array_equal(words, raw.view(np.uint32)[:n])


def test_dropout_mask_is_made_on_the_device():
    from xpdl.dropout_layers import dropout_forward

    be = get_backend("cupy")
    x = be.asarray(np.ones((64, 64), dtype=np.float32))
    out, (_, mask) = dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 3})
    assert be.owns(mask) and be.owns(out)
