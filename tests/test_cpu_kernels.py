"""The compiled CPU kernels: built at install, no compiler at run time, same bits on every instruction set,
clear errors for bad arguments, and the reference step (saying why) where they were not built.

That each kernel computes the reference's numbers is tested in ``tests/test_fast_paths.py``
(whole steps) and the conv tests; here is what is particular to their being compiled code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import BuiltinFunctionType

import numpy as np
import pytest

from xpdl.backends import _cpu_kernels, conv_kernels, cpu_kernels

#: A few training steps of a fully-connected net (batch norm, layer norm or none, with dropout) and of a
#: conv net on every update rule; prints the sha256 of all parameters afterwards, and the modules loaded.
STEPS = r"""
import hashlib, json, sys
import numpy as np
import xpdl
from xpdl.cnn import ConvNet

rng = np.random.default_rng(0)
X = rng.standard_normal((48, 16)).astype(np.float32)
y = rng.integers(0, 5, 48)
data = {"X_train": X, "y_train": y, "X_val": X[:8], "y_val": y[:8]}
digest = hashlib.sha256()
for norm, rule in [("batchnorm", "adam"), ("layernorm", "adamw"), (None, "rmsprop"), ("batchnorm", "sgd_momentum")]:
    for dtype in ("float32", "float64"):
        net = xpdl.FullyConnectedNet(input_dim=16, hidden_dims=[24, 20], num_classes=5, dropout=0.7,
                                     normalization=norm, dtype=dtype, seed=1, backend="numpy")
        tr = xpdl.Trainer(net, data, update_rule=rule, batch_size=16, verbose=False, seed=2)
        for k in range(3):
            tr.step(X[16 * k:16 * k + 16], y[16 * k:16 * k + 16])
        for name in sorted(net.params):
            digest.update(np.ascontiguousarray(net.params[name]).tobytes())
Xc = rng.standard_normal((8, 2, 8, 8)).astype(np.float32)
yc = rng.integers(0, 3, 8)
for norm in ("batchnorm", None):
    net = ConvNet(input_dim=(2, 8, 8), conv_dims=[4, 6], hidden_dims=[10], num_classes=3, normalization=norm,
                  dtype="float32", seed=3, backend="numpy")
    tr = xpdl.Trainer(net, {"X_train": Xc, "y_train": yc, "X_val": Xc, "y_val": yc}, update_rule="adam",
                      batch_size=8, verbose=False, seed=4)
    for _ in range(2):
        tr.step(Xc, yc)
    for name in sorted(net.params):
        digest.update(np.ascontiguousarray(net.params[name]).tobytes())
print(json.dumps({"sha256": digest.hexdigest(), "path": tr.step_path,
                  "modules": sorted(m for m in ("numba", "llvmlite") if m in sys.modules)}))
"""


#: The kernels' instruction-set variants, from the baseline up (``instruction_set()`` names the one that runs).
ISAS = ["baseline", "avx2", "avx512"]


def test_an_unknown_isa_cap_is_named_once_and_ignored():
    code = (
        "import xpdl; xpdl.get_backend('numpy'); "
        "from xpdl.backends import cpu_kernels; print(cpu_kernels.instruction_set())"
    )
    env = {**os.environ, "XPDL_QUIET": "0", "XPDL_KERNEL_ISA": "sse9" * 100}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == _cpu_kernels.instruction_set()  # the cap is ignored: the CPU's best runs
    lines = [line for line in proc.stderr.splitlines() if "XPDL_KERNEL_ISA" in line]
    assert len(lines) == 1 and "expected one of baseline, avx2, avx512, got 'sse9sse9" in lines[0]
    assert len(lines[0]) < 200


def run_steps(env: dict[str, str] | None = None, prelude: str = "") -> tuple[dict, str]:
    """Run :data:`STEPS` in a fresh interpreter; its JSON line and its stderr."""
    full_env = {**os.environ, "XPDL_QUIET": "0", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", prelude + STEPS], capture_output=True, text=True, env=full_env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def kernel_names(module) -> list[str]:
    return [n for n in dir(module) if not n.startswith("_") and type(getattr(module, n)) is BuiltinFunctionType]


def test_every_kernel_is_compiled_code_from_the_installed_extension():
    names = kernel_names(cpu_kernels)
    assert len(names) >= 15
    for name in names:
        assert getattr(cpu_kernels, name).__module__ == "xpdl.backends._cpu_kernels"
    for kernel, _ in cpu_kernels.UPDATE_KERNELS.values():
        assert type(kernel) is BuiltinFunctionType
    conv = kernel_names(conv_kernels)
    assert {"im2col", "col2im", "max_pool_forward", "max_pool_relu_backward"} <= set(conv)


def test_training_loads_no_jit_compiler_and_every_instruction_set_gives_the_same_bits():
    """A fresh process trains without numba or LLVM; every instruction-set variant below this CPU's best
    (baseline, AVX2, AVX-512) gives the bits of the best one."""
    native, _ = run_steps()
    assert native["modules"] == []
    assert native["path"] == "numpy-fused"
    native_isa = _cpu_kernels.instruction_set()
    lower = ISAS[: ISAS.index(native_isa)]
    if not lower:
        pytest.skip("this CPU has no AVX2: only the baseline variant runs here (the others need AVX2 / AVX-512)")
    for isa in lower:
        capped, _ = run_steps({"XPDL_KERNEL_ISA": isa})
        assert capped["sha256"] == native["sha256"], f"{isa} gives other bits than {native_isa}"


def test_without_the_compiled_kernels_the_reference_step_runs_and_says_why():
    """An install without a C++ compiler trains with the reference math: the numbers of XPDL_FUSED=0."""
    blocked, stderr = run_steps(prelude="import sys; sys.modules['xpdl.backends._cpu_kernels'] = None\n")
    assert "the reference training step runs because the compiled CPU kernels were not built" in stderr
    assert "reinstall xpdl" in stderr
    assert blocked["path"] == "reference"
    reference, _ = run_steps({"XPDL_FUSED": "0"})
    assert blocked["sha256"] == reference["sha256"]


def _f32(*shape):
    return np.zeros(shape, np.float32)


BAD_CALLS = [
    (
        "wrong count",
        lambda: cpu_kernels.column_sums(_f32(2, 3)),
        TypeError,
        r"column_sums: expected 2 arguments, got 1",
    ),
    (
        "integer array",
        lambda: cpu_kernels.column_sums(np.zeros((2, 3), np.int64), np.zeros(3)),
        TypeError,
        r"column_sums: a: expected float32 or float64, got another dtype",
    ),
    (
        "output too short",
        lambda: cpu_kernels.column_sums(_f32(2, 3), np.zeros(2)),
        ValueError,
        r"column_sums: out: expected at least 3 elements \(the columns of a\), got 2",
    ),
    (
        "read-only output",
        lambda: cpu_kernels.column_sums(_f32(2, 3), np.broadcast_to(np.zeros(1), (3,))),
        ValueError,
        r"column_sums: out: expected a writable C-contiguous array",
    ),
    (
        "strided input",
        lambda: cpu_kernels.column_sums(_f32(2, 6)[:, ::2], np.zeros(3)),
        TypeError,
        r"column_sums: a: expected a C-contiguous array",
    ),
    ("not an array", lambda: cpu_kernels.column_sums([1.0, 2.0], np.zeros(3)), TypeError, r"column_sums: a: expected"),
    (
        "mixed dtypes",
        lambda: cpu_kernels.bias_relu_dropout_forward(
            _f32(2, 3), np.zeros(3), np.zeros((0, 0), np.uint32), 0, 1.0, _f32(2, 3), np.zeros((0, 0), np.uint8)
        ),
        TypeError,
        r"bias_relu_dropout_forward: b: expected float32, got float64",
    ),
    (
        "output of another shape",
        lambda: cpu_kernels.bias_relu_dropout_forward(
            _f32(2, 3), _f32(3), np.zeros((0, 0), np.uint32), 0, 1.0, _f32(3, 2), np.zeros((0, 0), np.uint8)
        ),
        ValueError,
        r"bias_relu_dropout_forward: h: expected the shape of a, got 3 instead of 2 in dimension 0",
    ),
    (
        "dropout words of another shape",
        lambda: cpu_kernels.bias_relu_dropout_forward(
            _f32(2, 3), _f32(3), np.zeros((2, 2), np.uint32), 0, 1.0, _f32(2, 3), np.zeros((2, 3), np.uint8)
        ),
        ValueError,
        r"words: expected the shape of a",
    ),
    (
        "scalar that is no number",
        lambda: cpu_kernels.sgd_update(_f32(4), _f32(4), "0.1"),
        TypeError,
        r"sgd_update: a scalar: expected a real number, got str",
    ),
    (
        "state of another length",
        lambda: cpu_kernels.momentum_update(_f32(4), _f32(4), _f32(3), 0.1, 0.9),
        ValueError,
        r"momentum_update: state 1: expected 4 elements \(the size of w\), got 3",
    ),
]


@pytest.mark.parametrize("what, call, error, message", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_a_bad_argument_raises_naming_the_kernel_and_the_argument(what, call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_outputs_are_written_only_after_every_argument_checked():
    """A call that fails on its last argument leaves the earlier outputs untouched."""
    a = np.ones((2, 3), np.float32)
    h = np.full((2, 3), 7.0, np.float32)
    with pytest.raises(TypeError):
        cpu_kernels.bias_relu_dropout_forward(a, a[0].copy(), np.zeros((2, 3), np.uint32), 0, 1.0, h, _f32(2, 3))
    assert np.all(h == 7.0)


def test_the_describe_line_names_the_compiled_kernels_and_their_instruction_set():
    from xpdl.backends import describe_paths

    line = describe_paths()
    assert f"numpy-fused (C++ kernels, {_cpu_kernels.instruction_set()})" in line


PHILOX_CASES = [
    (0, 0),
    (1, 2**64 - 1),  # the first block's counter carries into the second 64-bit word
    (2**127 + 5, 2**256 - 3),  # wraps at 2**256 within the draw
    (12345, 2**128 - 2),
    (2**128 - 1, 2**192 - 1),
    (0x0123456789ABCDEF_FEDCBA9876543210, 0xDEADBEEF << 70),
]


@pytest.mark.parametrize("key, counter", PHILOX_CASES)
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1000])
def test_compiled_philox_words_are_numpys_words(key, counter, n):
    from xpdl.backends.numpy_backend import philox_words
    from xpdl.rng import host_philox_uint32

    words = philox_words(key, counter, (n,))
    assert words.dtype == np.uint32
    assert np.array_equal(words, host_philox_uint32(key, counter, (n,)))


def test_the_numpy_backend_draws_dropout_words_with_the_compiled_philox():
    from xpdl.backends import get_backend
    from xpdl.rng import Generator, host_philox_uint32

    get_backend("numpy")  # registers the compiled words for NumPy arrays
    like = np.zeros(1, np.float32)
    g = Generator(7)
    words = g.random_uint32((5, 33), like=like, rows=(2, 9))
    expected = host_philox_uint32(Generator(7).key, 0, (9, 33))[2:7]
    assert np.array_equal(words, expected)
