"""The CUDA kernels' source, compiled for the host with the C++ compiler, computes what the reference computes.

This checks the arithmetic of the GPU code (Philox4x64-10 and the fused update
rules) on machines without a GPU: each kernel body is wrapped in a host loop,
with ``__umul64hi`` emulated by a 128-bit product. The kernels themselves run in
tests/test_cupy_kernels.py and tests/test_fused_step.py where a CUDA device works.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from xpdl import cuda_kernels, updater

CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
pytestmark = pytest.mark.skipif(CXX is None, reason="needs a C++ compiler (g++, c++ or clang++)")

PRELUDE = """
#include <math.h>
#define __umul64hi(a, b) ((unsigned long long)(((unsigned __int128)(a) * (unsigned __int128)(b)) >> 64))
"""
CTYPE = {"float64": "double"}


def philox_source() -> str:
    return (PRELUDE + 'extern "C" void philox(unsigned long long ctr0, unsigned long long ctr1, '
            "unsigned long long ctr2, unsigned long long ctr3, unsigned long long key0, unsigned long long key1, "
            "long long count, unsigned int* out, long long blocks) {\n"
            "for (long long i = 0; i < blocks; ++i) {\n" + cuda_kernels._PHILOX_BODY + "}\n}\n")


def update_source(rule: str) -> tuple[str, list[str], list[str]]:
    """Host functions ``<rule>_float`` / ``<rule>_double`` over flat arrays; returns source, scalar and array names."""
    params, outs, body = cuda_kernels._UPDATE_BODIES[rule]
    ins = [p.split() for p in params.split(",")]
    arrays = [name for t, name in ins if t == "T"] + [o.split()[1] for o in outs.split(",")]
    scalars = [name for t, name in ins if t != "T"]
    out_names = [o.split()[1] for o in outs.split(",")]
    src = [PRELUDE]
    for T in ("float", "double"):
        args = [f"{T}* {a}_p" for a in arrays] + [f"double {s}" for s in scalars] + ["long long N"]
        src.append(f'extern "C" void {rule}_{T}({", ".join(args)}) {{')
        src.append("typedef " + T + " T;")
        src.append("for (long long idx = 0; idx < N; ++idx) {")
        src += [f"T {a} = {a}_p[idx];" for a in arrays if a not in out_names]
        src += [f"T& {a} = {a}_p[idx];" for a in out_names]
        src += [body, "}", "}"]
    return "\n".join(src), scalars, arrays


def build(tmp_path, name: str, source: str) -> ctypes.CDLL:
    cu = tmp_path / f"{name}.cpp"
    lib = tmp_path / f"{name}.so"
    cu.write_text(source)
    subprocess.run([CXX, "-O1", "-shared", "-fPIC", "-o", str(lib), str(cu)], check=True, capture_output=True)
    return ctypes.CDLL(str(lib))


def ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


@pytest.mark.parametrize("key,counter,n", [(0, 0, 1), (5, 0, 8), (123456789, 77, 1001),
                                           (2**127 + 3, 2**64 - 2, 40), (9, 2**192 - 1, 17)])
def test_philox_kernel_source_reproduces_numpy_stream(tmp_path, key, counter, n):
    lib = build(tmp_path, "philox", philox_source())
    blocks = -(-n // 8)
    out = np.zeros(n, np.uint32)
    m64 = 2**64 - 1
    ctr = [ctypes.c_ulonglong((counter >> (64 * k)) & m64) for k in range(4)]
    lib.philox(*ctr, ctypes.c_ulonglong(key & m64), ctypes.c_ulonglong(key >> 64), ctypes.c_longlong(n),
               ptr(out), ctypes.c_longlong(blocks))
    raw = np.random.Philox(key=key, counter=counter).random_raw(blocks * 4)
    assert np.array_equal(out, raw.view(np.uint32)[:n])


HYPER = {"adam": {"learning_rate": 1e-2, "t": 5}, "sgd": {"learning_rate": 0.1},
         "sgd_momentum": {"learning_rate": 1e-2, "momentum": 0.8},
         "rmsprop": {"learning_rate": 1e-2, "decay_rate": 0.95}}


def kernel_scalars(rule: str, config: dict) -> dict:
    """The scalar arguments :func:`xpdl.cuda_kernels.fused_update` passes, from a filled config."""
    lr = config["learning_rate"]
    if rule == "adam":
        t = config["t"] + 1
        return {"step": lr / (1 - config["beta1"] ** t), "b1": config["beta1"], "b2": config["beta2"],
                "eps": config["epsilon"], "inv_c2": 1 / (1 - config["beta2"] ** t), "reg": 0.0}
    if rule == "sgd":
        return {"lr": lr, "reg": 0.0}
    if rule == "sgd_momentum":
        return {"lr": lr, "mu": config["momentum"], "reg": 0.0}
    return {"lr": lr, "decay": config["decay_rate"], "eps": config["epsilon"], "reg": 0.0}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rule", updater.UPDATE_RULES)
def test_update_kernel_source_equals_reference_rule(tmp_path, rule, dtype):
    source, scalars, arrays = update_source(rule)
    lib = build(tmp_path, rule, source)
    rng = np.random.default_rng(3)
    w = rng.standard_normal(37).astype(dtype)
    g = rng.standard_normal(37).astype(dtype)
    config = updater.fill_defaults(rule, dict(HYPER[rule]))
    state = {k: np.abs(rng.standard_normal(37)).astype(dtype) for k in updater.STATE_KEYS[rule]}
    expected_w, expected = getattr(updater, rule)(w.copy(), g.copy(), {**config, **{k: v.copy() for k, v in
                                                                                  state.items()}})
    buffers = {"g": g.copy(), "w": w.copy(), "m": state.get("m"), "v": state.get("v"),
               "vel": state.get("velocity"), "cache": state.get("cache")}
    values = kernel_scalars(rule, config)
    fn = getattr(lib, f"{rule}_{'float' if dtype == 'float32' else 'double'}")
    fn(*[ptr(buffers[a]) for a in arrays], *[ctypes.c_double(values[s]) for s in scalars], ctypes.c_longlong(37))
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(buffers["w"], expected_w, rtol=tol, atol=tol)
    for key, buf in (("m", "m"), ("v", "v"), ("velocity", "vel"), ("cache", "cache")):
        if key in expected and buffers[buf] is not None:
            np.testing.assert_allclose(buffers[buf], expected[key], rtol=tol, atol=tol)
