"""The CUDA kernels' source, compiled for the host with the C++ compiler, computes what the reference computes.

This checks the arithmetic of the GPU code (Philox4x64-10 and the fused update
rules) on machines without a GPU: each kernel body is wrapped in a host loop,
with ``__umul64hi`` emulated by a 128-bit product. The kernels themselves run in
tests/test_cupy_kernels.py and tests/test_fast_paths.py where a CUDA device works.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from xpdl import updater
from xpdl.backends import cuda_kernels

CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
pytestmark = pytest.mark.skipif(CXX is None, reason="needs a C++ compiler (g++, c++ or clang++)")

PRELUDE = """
#include <math.h>
#define __umul64hi(a, b) ((unsigned long long)(((unsigned __int128)(a) * (unsigned __int128)(b)) >> 64))
"""
CTYPE = {"float64": "double"}


def philox_source() -> str:
    return (
        PRELUDE + 'extern "C" void philox(unsigned long long ctr0, unsigned long long ctr1, '
        "unsigned long long ctr2, unsigned long long ctr3, unsigned long long key0, unsigned long long key1, "
        "long long count, unsigned int* out, long long blocks) {\n"
        "for (long long i = 0; i < blocks; ++i) {\n" + cuda_kernels._PHILOX_BODY + "}\n}\n"
    )


def update_source(rule: str) -> str:
    """Host functions ``<rule>_float`` / ``<rule>_double`` looping the kernel body over flat arrays.

    Their arguments are the ElementwiseKernel's, in its order (a pointer for each
    array, a double for each scalar), then the element count.
    """
    params, outs, body = cuda_kernels.UPDATE_BODIES[rule]
    args = [p.split() for p in params.split(",")] + [o.split() for o in outs.split(",")]
    out_names = [o.split()[1] for o in outs.split(",")]
    src = [PRELUDE]
    for T in ("float", "double"):
        decl = [f"{T}* {n}_p" if t == "T" else f"double {n}" for t, n in args] + ["long long N"]
        src.append(f'extern "C" void {rule}_{T}({", ".join(decl)}) {{')
        src.append("typedef " + T + " T;")
        src.append("for (long long idx = 0; idx < N; ++idx) {")
        src += [f"T {n} = {n}_p[idx];" for t, n in args if t == "T" and n not in out_names]
        src += [f"T& {n} = {n}_p[idx];" for n in out_names]
        src += [body, "}", "}"]
    return "\n".join(src)


def build(tmp_path, name: str, source: str) -> ctypes.CDLL:
    cu = tmp_path / f"{name}.cpp"
    lib = tmp_path / f"{name}.so"
    cu.write_text(source)
    subprocess.run([CXX, "-O1", "-shared", "-fPIC", "-o", str(lib), str(cu)], check=True, capture_output=True)
    return ctypes.CDLL(str(lib))


def ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


@pytest.mark.parametrize(
    "key,counter,n", [(0, 0, 1), (5, 0, 8), (123456789, 77, 1001), (2**127 + 3, 2**64 - 2, 40), (9, 2**192 - 1, 17)]
)
def test_philox_kernel_source_reproduces_numpy_stream(tmp_path, key, counter, n):
    lib = build(tmp_path, "philox", philox_source())
    blocks = -(-n // 8)
    out = np.zeros(n, np.uint32)
    m64 = 2**64 - 1
    ctr = [ctypes.c_ulonglong((counter >> (64 * k)) & m64) for k in range(4)]
    lib.philox(
        *ctr,
        ctypes.c_ulonglong(key & m64),
        ctypes.c_ulonglong(key >> 64),
        ctypes.c_longlong(n),
        ptr(out),
        ctypes.c_longlong(blocks),
    )
    raw = np.random.Philox(key=key, counter=counter).random_raw(blocks * 4)
    assert np.array_equal(out, raw.view(np.uint32)[:n])


HYPER = {
    "adam": {"learning_rate": 1e-2, "t": 5},
    "adamw": {"learning_rate": 1e-2, "t": 5, "weight_decay": 0.1},
    "sgd": {"learning_rate": 0.1},
    "sgd_momentum": {"learning_rate": 1e-2, "momentum": 0.8},
    "rmsprop": {"learning_rate": 1e-2, "decay_rate": 0.95},
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rule", sorted(cuda_kernels.UPDATE_BODIES))
def test_update_kernel_source_equals_reference_rule(tmp_path, rule, dtype):
    lib = build(tmp_path, rule, update_source(rule))
    rule_obj = updater.get_rule(rule)
    rng = np.random.default_rng(3)
    w = rng.standard_normal(37).astype(dtype)
    g = rng.standard_normal(37).astype(dtype)
    state = tuple(np.abs(rng.standard_normal(37)).astype(dtype) for _ in rule_obj.state_keys)
    config = rule_obj.fill_defaults(dict(HYPER[rule]))
    expected_w, expected_state = rule_obj.reference(np, w, g, state, rule_obj.scalars(dict(config)))
    w_k, state_k = w.copy(), tuple(a.copy() for a in state)
    args = cuda_kernels.update_arguments(g.copy(), w_k, state_k, rule_obj.scalars(dict(config)))
    fn = getattr(lib, f"{rule}_{'float' if dtype == 'float32' else 'double'}")
    fn(*[ptr(a) if isinstance(a, np.ndarray) else ctypes.c_double(a) for a in args], ctypes.c_longlong(37))
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(w_k, expected_w, rtol=tol, atol=tol)
    for got, want in zip(state_k, expected_state):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_every_update_rule_has_a_cuda_kernel():
    assert set(cuda_kernels.UPDATE_BODIES) == set(updater.UPDATE_RULES)
