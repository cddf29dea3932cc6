"""The compiled paths compute what the reference computes (float64 to 1e-12, float32 to 1e-5).

Each backend is compared with its own reference twin (``backend.reference()``: the
same namespace and device, the reference methods of :class:`xpdl.backends.Backend`),
for every update rule, every normalization, with and without dropout and L2.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, host

import xpdl
import xpdl.parallel.distributed
from xpdl import updater
from xpdl.backends import get_backend, probe_cupy

TOL = {"float64": 1e-12, "float32": 1e-5}
_CUPY_WHY = probe_cupy(0)
needs_cupy = pytest.mark.skipif(bool(_CUPY_WHY), reason=f"needs a working CUDA device with CuPy: {_CUPY_WHY}")
CASES = [
    (None, 0.7, 0.05),
    (None, 0, 0.0),
    ("batchnorm", 0.6, 0.0),
    ("batchnorm", 0, 0.05),
    ("batchnorm", 1.0, 0.0),
    ("layernorm", 0.6, 0.05),
    ("layernorm", 0, 0.0),
]


def data(n=40, d=9, c=4):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d)) * 3 + 1
    return X, rng.integers(c, size=n)


def pair(backend_name, dtype, rule, normalization, dropout, reg, hidden=(13, 11)):
    """Two trainers with identical nets: the backend's compiled path and its reference twin."""
    X, y = data()
    fast_backend = get_backend(backend_name)
    out = []
    for backend in (fast_backend, fast_backend.reference()):
        net = xpdl.FullyConnectedNet(
            input_dim=9,
            hidden_dims=list(hidden),
            num_classes=4,
            dropout=dropout,
            normalization=normalization,
            reg=reg,
            weight_scale=0.3,
            seed=7,
            dtype=dtype,
            backend=backend,
        )
        out.append(
            xpdl.Trainer(
                net,
                {"X_train": X, "y_train": y, "X_val": X[:10], "y_val": y[:10]},
                update_rule=rule,
                updater_config={"learning_rate": 1e-2},
                batch_size=20,
                verbose=False,
            )
        )
    return out


def assert_same_training(fast, ref, dtype, steps=3, batches=(20, 20, 20)):
    X, y = data()
    tol = TOL[dtype]
    for s, n in zip(range(steps), batches):
        rows = slice(10 * s, 10 * s + n)
        assert float(fast.step(X[rows], y[rows])) == pytest.approx(float(ref.step(X[rows], y[rows])), rel=tol, abs=tol)
    for k, v in ref.model.state_arrays().items():
        assert_close(fast.model.state_arrays()[k], v, rtol=tol, atol=tol)
    for p, config in ref.updater_configs.items():
        for key, value in config.items():
            if hasattr(value, "shape"):
                assert_close(fast.updater_configs[p][key], value, rtol=tol, atol=tol)
            else:
                assert fast.updater_configs[p][key] == value, (p, key)
    assert fast.model.rng.get_state() == ref.model.rng.get_state()


@pytest.mark.parametrize("rule", updater.UPDATE_RULES)
@pytest.mark.parametrize("normalization,dropout,reg", CASES)
def test_numpy_compiled_step_equals_reference(dtype, rule, normalization, dropout, reg):
    fast, ref = pair("numpy", dtype, rule, normalization, dropout, reg)
    assert (fast.step_path, ref.step_path) == ("numpy-fused", "reference")
    assert_same_training(fast, ref, dtype)


@pytest.mark.parametrize("normalization", [None, "batchnorm", "layernorm"])
def test_numpy_compiled_step_handles_one_hidden_layer_and_changing_batch_sizes(normalization):
    fast, ref = pair("numpy", "float64", "adam", normalization, 0.5, 0.01, hidden=(6,))
    assert_same_training(fast, ref, "float64", batches=(20, 7, 20))


def test_loss_and_grads_without_buffers_returns_fresh_arrays_equal_to_the_reference():
    X, y = data()
    nets = [
        xpdl.FullyConnectedNet(
            input_dim=9,
            hidden_dims=[5],
            num_classes=4,
            normalization="layernorm",
            dropout=0.5,
            seed=3,
            dtype="float64",
            backend=b,
        )
        for b in (get_backend("numpy"), get_backend("numpy").reference())
    ]
    (loss_a, grads_a), (loss_b, grads_b) = (n.loss(X, y) for n in nets)
    again, _ = nets[0].loss(X, y)
    assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-12)
    for k in grads_b:
        assert_close(grads_a[k], grads_b[k], rtol=1e-12, atol=1e-12)
    assert float(again) != float(loss_a)  # a new dropout mask, and the first result was not overwritten
    assert_close(grads_a["W1"], grads_b["W1"], rtol=1e-12, atol=1e-12)


def test_changing_dropout_p_changes_every_path_alike():
    """The compiled path reads the same dropout_param as the reference, not a copy made at construction."""
    fast, ref = pair("numpy", "float64", "adam", "batchnorm", 0.5, 0.0)
    for tr in (fast, ref):
        tr.model.dropout_param["p"] = 0.9
    assert fast.model.dropout == 0.9
    assert_same_training(fast, ref, "float64")


class Lion(updater.UpdateRule):
    """A rule registered like the others but without a compiled kernel (Chen et al., 2023)."""

    name = "lion_test"
    defaults = {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.99}
    state_keys = ("m",)

    def scalars(self, config):
        return float(config["learning_rate"]), float(config["beta1"]), float(config["beta2"])

    def reference(self, xp, w, g, state, s):
        lr, b1, b2 = s
        w = w - lr * xp.sign(b1 * state[0] + (1 - b1) * g)
        return w, (b2 * state[0] + (1 - b2) * g,)


def test_a_rule_without_a_kernel_runs_its_reference_step_on_the_compiled_path(monkeypatch):
    monkeypatch.setitem(updater.RULES, "lion_test", Lion())
    fast, ref = pair("numpy", "float64", "lion_test", "batchnorm", 0.6, 0.05)
    assert fast.step_path == "numpy-fused"
    assert_same_training(fast, ref, "float64")
    assert float(np.abs(host(fast.updater_configs["W1"]["m"])).sum()) > 0


def test_xpdl_fused_0_forces_the_reference_path(monkeypatch):
    monkeypatch.setenv("XPDL_FUSED", "0")
    fast, _ = pair("numpy", "float64", "adam", "batchnorm", 0.5, 0.0)
    assert fast.step_path == "reference"


def test_other_namespaces_use_the_reference_path():
    strict, _ = pair("array_api_strict", "float64", "adam", "layernorm", 0.5, 0.0)
    assert strict.step_path == "reference"


@needs_cupy
@pytest.mark.parametrize("rule", updater.UPDATE_RULES)
@pytest.mark.parametrize("normalization,dropout,reg", CASES[:4] + CASES[5:6])
def test_cupy_compiled_step_equals_reference(dtype, rule, normalization, dropout, reg):
    fast, ref = pair("cupy", dtype, rule, normalization, dropout, reg)
    assert fast.step_path == "cupy-fused-update"
    assert_same_training(fast, ref, dtype)


@needs_cupy
@pytest.mark.parametrize("normalization", ["batchnorm", "layernorm"])
def test_cupy_training_matches_numpy_training(normalization):
    gpu, _ = pair("cupy", "float64", "adamw", normalization, 0.6, 0.05)
    cpu, _ = pair("numpy", "float64", "adamw", normalization, 0.6, 0.05)
    X, y = data()
    for s in range(5):
        rows = slice(4 * s, 4 * s + 20)
        assert float(gpu.step(X[rows], y[rows])) == pytest.approx(float(cpu.step(X[rows], y[rows])), rel=1e-12)
    for k, v in cpu.model.state_arrays().items():
        np.testing.assert_allclose(host(gpu.model.state_arrays()[k]), host(v), rtol=1e-11, atol=1e-12)


class OneOfTwoRanks(xpdl.parallel.distributed.Communicator):
    """Claims two ranks but sums over this one only: synchronized batch norm must then equal the plain one."""

    def __init__(self):
        super().__init__()
        self.size = 2
        self.calls = 0

    def allreduce(self, arr):
        self.calls += 1
        return arr


@pytest.mark.parametrize("namespace", ["numpy", "array_api_strict"])
@pytest.mark.parametrize("dropout", [0, 0.6])
def test_synchronized_batchnorm_path_equals_the_fused_kernels(namespace, dropout):
    """The split kernels (statistics pass, allreduce, normalize pass; two backward passes) against the fused ones."""
    X, y = data()
    results = []
    for comm in (None, OneOfTwoRanks()):
        net = xpdl.FullyConnectedNet(
            input_dim=9,
            hidden_dims=[13, 11],
            num_classes=4,
            dropout=dropout,
            use_batchnorm=True,
            weight_scale=0.3,
            seed=7,
            dtype="float64",
            backend=namespace,
        )
        for bn in net.bn_params:
            bn["comm"] = comm
        loss, grads = net.loss(X, y)
        results.append(
            (
                float(loss),
                {k: host(v).copy() for k, v in grads.items()},
                {k: host(v).copy() for k, v in net.state_arrays().items()},
            )
        )
        if comm is not None:
            assert comm.calls == 2 * 3  # per hidden layer: two sums forward, one backward
    (loss_a, grads_a, state_a), (loss_b, grads_b, state_b) = results
    assert loss_b == pytest.approx(loss_a, rel=1e-13)
    for k in grads_a:
        np.testing.assert_allclose(grads_b[k], grads_a[k], rtol=1e-12, atol=1e-13, err_msg=k)
    for k in state_a:
        np.testing.assert_allclose(state_b[k], state_a[k], rtol=1e-12, atol=1e-13, err_msg=k)
