"""The fast paths compute what the reference xp code computes (float64 to 1e-12, float32 to 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import host

import xpdl
from xpdl import cpu_kernels, updater
from xpdl.backend import probe_cupy

needs_numba = pytest.mark.skipif(not cpu_kernels.AVAILABLE, reason="numba is not installed: no fused CPU path")
_CUPY_WHY = probe_cupy(0)
needs_cupy = pytest.mark.skipif(bool(_CUPY_WHY), reason=f"needs a working CUDA device with CuPy: {_CUPY_WHY}")

TOL = {"float64": 1e-12, "float32": 1e-5}


def pair(backend, dtype, rule, use_batchnorm, dropout, reg, hidden=(13, 11)):
    """Two trainers with identical nets: the fused path and the reference path."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 9))
    y = rng.integers(4, size=40)
    data = {"X_train": X, "y_train": y, "X_val": X[:10], "y_val": y[:10]}
    out = []
    for fused in (True, False):
        net = xpdl.FullyConnectedNet(input_dim=9, hidden_dims=list(hidden), num_classes=4, dropout=dropout,
                                     use_batchnorm=use_batchnorm, reg=reg, weight_scale=0.3, seed=7,
                                     dtype=dtype, backend=backend)
        tr = xpdl.Trainer(net, data, update_rule=rule, updater_config={"learning_rate": 1e-2}, batch_size=20,
                          verbose=False)
        if not fused:
            tr._fused = None
        out.append(tr)
    return out, X, y


def assert_same_training(fast, ref, X, y, dtype, steps=3):
    tol = TOL[dtype]
    for s in range(steps):
        idx = slice(10 * s, 10 * s + 20)
        lf = float(fast.step(X[idx], y[idx]))
        lr = float(ref.step(X[idx], y[idx]))
        assert lf == pytest.approx(lr, rel=tol, abs=tol)
    for k in ref.model.params:
        np.testing.assert_allclose(host(fast.model.params[k]), host(ref.model.params[k]), rtol=tol, atol=tol,
                                   err_msg=k)
        for key, value in ref.updater_configs[k].items():
            if hasattr(value, "shape"):
                np.testing.assert_allclose(host(fast.updater_configs[k][key]), host(value), rtol=tol, atol=tol,
                                           err_msg=f"{k}:{key}")
            else:
                assert fast.updater_configs[k][key] == value
    for bf, br in zip(fast.model.bn_params, ref.model.bn_params):
        for key in ("running_mean", "running_var"):
            np.testing.assert_allclose(host(bf[key]), host(br[key]), rtol=tol, atol=tol)
    assert fast.model.rng.get_state() == ref.model.rng.get_state()


@needs_numba
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rule", updater.UPDATE_RULES)
@pytest.mark.parametrize("use_batchnorm,dropout,reg", [(True, 0.6, 0.0), (True, 0, 0.05), (False, 0.7, 0.05),
                                                       (False, 0, 0.0), (True, 1.0, 0.0)])
def test_numpy_fused_step_equals_reference(dtype, rule, use_batchnorm, dropout, reg):
    (fast, ref), X, y = pair("numpy", dtype, rule, use_batchnorm, dropout, reg)
    assert fast.step_path == "numpy-fused" and ref.step_path == "reference"
    assert_same_training(fast, ref, X, y, dtype)


@needs_numba
def test_numpy_fused_step_handles_a_single_hidden_layer_and_changing_batch_sizes():
    (fast, ref), X, y = pair("numpy", "float64", "adam", True, 0.5, 0.01, hidden=(6,))
    for n in (20, 7, 20):
        lf, lr = float(fast.step(X[:n], y[:n])), float(ref.step(X[:n], y[:n]))
        assert lf == pytest.approx(lr, rel=1e-12)
    for k in ref.model.params:
        np.testing.assert_allclose(host(fast.model.params[k]), host(ref.model.params[k]), rtol=1e-12, atol=1e-12)


def test_fused_path_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("XPDL_FUSED", "0")
    (fast, _), _, _ = pair("numpy", "float64", "adam", True, 0.5, 0.0)
    assert fast.step_path == "reference"


def test_other_namespaces_use_the_reference_path():
    (strict, _), _, _ = pair("array_api_strict", "float64", "adam", True, 0.5, 0.0)
    assert strict.step_path == "reference"


@needs_cupy
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rule", updater.UPDATE_RULES)
def test_cupy_fused_update_equals_reference(dtype, rule):
    (fast, ref), X, y = pair("cupy", dtype, rule, True, 0.6, 0.05)
    assert fast.step_path == "cupy-fused-update"
    assert_same_training(fast, ref, X, y, dtype)


@needs_cupy
def test_cupy_training_matches_numpy_training():
    (gpu, _), X, y = pair("cupy", "float64", "adam", True, 0.6, 0.05)
    (cpu, _), _, _ = pair("numpy", "float64", "adam", True, 0.6, 0.05)
    assert_same_training(gpu, cpu, X, y, "float64", steps=5)
