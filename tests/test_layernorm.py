"""Layer normalization: per-sample statistics, its gradient, and a net that uses it, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, assert_grad_close, host

import xpdl
from xpdl import bn_layers
from xpdl.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array


def _rows(backend, n=4, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return backend.asarray(rng.standard_normal((n, d)) * np.arange(1, n + 1)[:, None] + 5 * np.arange(n)[:, None])


def test_forward_normalizes_each_sample_over_its_features(backend):
    x = _rows(backend)
    out, _ = bn_layers.layernorm_forward(x, backend.asarray(np.ones(6)), backend.asarray(np.zeros(6)), {})
    assert_close(host(out).mean(axis=1), np.zeros(4), atol=1e-12)
    var = host(x).var(axis=1)
    assert_close(host(out).std(axis=1), np.sqrt(var / (var + 1e-5)), rtol=1e-12)  # eps = 1e-5 in the variance


def test_forward_is_the_same_in_training_and_at_test_time_and_keeps_no_state(backend):
    x, gamma, beta = _rows(backend), backend.asarray(np.full(6, 2.0)), backend.asarray(np.full(6, 0.5))
    ln_param = {"eps": 1e-5}
    first, _ = bn_layers.layernorm_forward(x, gamma, beta, ln_param)
    second, _ = bn_layers.layernorm_forward(x, gamma, beta, ln_param)
    assert ln_param == {"eps": 1e-5}
    assert_close(first, second, rtol=0)
    # each row is independent of the others: a batch of one gives that row's output
    alone, _ = bn_layers.layernorm_forward(x[1:2, ...], gamma, beta, ln_param)
    assert_close(host(alone)[0], host(first)[1], rtol=1e-12)


def test_backward_gradient_check(backend):
    x = _rows(backend, n=5, d=7, seed=3)
    rng = np.random.default_rng(4)
    gamma, beta = backend.asarray(rng.standard_normal(7)), backend.asarray(rng.standard_normal(7))
    dout = backend.asarray(rng.standard_normal((5, 7)))

    def f(_):
        return bn_layers.layernorm_forward(x, gamma, beta, {})[0]

    _, cache = bn_layers.layernorm_forward(x, gamma, beta, {})
    dx, dgamma, dbeta = bn_layers.layernorm_backward(dout, cache)
    for name, arr, got in (("dx", x, dx), ("dgamma", gamma, dgamma), ("dbeta", beta, dbeta)):
        numeric = eval_numerical_gradient_array(f, arr, dout)
        assert_grad_close(numeric, got, rel=1e-7, what=f"layernorm_backward {name}")


def test_net_with_layer_norm_gradient_check_and_its_bias_is_not_cancelled(backend):
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((6, 5)), rng.integers(3, size=6)
    net = xpdl.FullyConnectedNet(
        input_dim=5,
        hidden_dims=[7, 6],
        num_classes=3,
        normalization="layernorm",
        dropout=0.8,
        reg=0.05,
        weight_scale=0.5,
        seed=2,
        dtype="float64",
        backend=backend,
    )
    net.params["b1"] = backend.asarray(rng.standard_normal(7))  # a bias that varies across features
    state = net.rng.get_state()

    def loss(_):
        net.rng.set_state(state)
        return net.loss(X, y)[0]

    net.rng.set_state(state)
    _, grads = net.loss(X, y)
    assert set(grads) == set(net.params) and not net.bn_params
    assert float(np.abs(host(grads["b1"])).max()) > 1e-6  # unlike batch norm, layer norm keeps the bias's effect
    for name in sorted(grads):
        numeric = eval_numerical_gradient(loss, net.params[name], verbose=False)
        assert_grad_close(numeric, grads[name], rel=1e-6, abs_floor=1e-8, what=f"layernorm net {name}")


def test_layer_norm_net_trains_with_batch_size_one(backend):
    """Per-sample statistics need no batch: batch size 1 is fine (batch norm refuses it)."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 4)), rng.integers(2, size=20)
    data = {"X_train": X, "y_train": y, "X_val": X, "y_val": y}
    net = xpdl.FullyConnectedNet(
        input_dim=4, hidden_dims=[8], num_classes=2, normalization="layernorm", seed=0, backend=backend
    )
    tr = xpdl.Trainer(net, data, batch_size=1, num_epochs=1, verbose=False)
    tr.train()
    assert len(tr.loss_history) == 20 and all(np.isfinite(tr.loss_history))
    bn = xpdl.FullyConnectedNet(
        input_dim=4, hidden_dims=[8], num_classes=2, normalization="batchnorm", seed=0, backend=backend
    )
    with pytest.raises(ValueError, match="batch_size: batch norm needs at least 2 samples per batch, got 1"):
        xpdl.Trainer(bn, data, batch_size=1)


def test_normalization_argument_and_the_seed_spelling(backend):
    net = xpdl.FullyConnectedNet(input_dim=4, hidden_dims=[3], use_batchnorm=True, backend=backend)
    assert net.normalization == "batchnorm" and net.config()["normalization"] == "batchnorm"
    ln = xpdl.FullyConnectedNet(input_dim=4, hidden_dims=[3], normalization="layernorm", backend=backend)
    assert sorted(ln.state_arrays()) == ["W1", "W2", "b1", "b2", "beta1", "gamma1"]
    with pytest.raises(ValueError, match="normalization: expected one of .* got 'groupnorm'"):
        xpdl.FullyConnectedNet(input_dim=4, normalization="groupnorm", backend=backend)
    with pytest.raises(ValueError, match="use_batchnorm=True contradicts normalization='layernorm'"):
        xpdl.FullyConnectedNet(input_dim=4, use_batchnorm=True, normalization="layernorm", backend=backend)
