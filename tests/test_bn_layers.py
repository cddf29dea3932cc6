"""Batch normalization: statistics, both backward passes, test mode and its errors, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, assert_grad_close, host

from xpdl import bn_layers
from xpdl.gradient_check import eval_numerical_gradient_array


def _data(backend, n=200, d=3, seed=231):
    weights = np.random.default_rng(231)
    w1, w2 = weights.standard_normal((5, 50)), weights.standard_normal((50, d))
    a = np.maximum(0, np.random.default_rng(seed).standard_normal((n, 5)) @ w1) @ w2
    return backend.asarray(a)


def test_train_forward_normalizes_then_scales_and_shifts(backend):
    a = _data(backend)
    gamma = backend.asarray(np.array([1.0, 2.0, 3.0]))
    beta = backend.asarray(np.array([11.0, 12.0, 13.0]))
    out, _ = bn_layers.batchnorm_forward(a, gamma, beta, {"mode": "train"})
    assert_close(host(out).mean(axis=0), [11.0, 12.0, 13.0], rtol=1e-12)
    assert_close(host(out).std(axis=0), [1.0, 2.0, 3.0], rtol=1e-5)


def test_running_statistics_start_at_zero_with_momentum_0_9(backend):
    a = _data(backend)
    ones, zeros = backend.asarray(np.ones(3)), backend.asarray(np.zeros(3))
    bn_param = {"mode": "train"}
    bn_layers.batchnorm_forward(a, ones, zeros, bn_param)
    assert_close(bn_param["running_mean"], 0.1 * host(a).mean(axis=0), rtol=1e-12)
    assert_close(bn_param["running_var"], 0.1 * host(a).var(axis=0), rtol=1e-12)


def test_test_mode_uses_running_averages(backend):
    gamma, beta = backend.asarray(np.ones(3)), backend.asarray(np.zeros(3))
    bn_param = {"mode": "train"}
    for i in range(50):
        bn_layers.batchnorm_forward(_data(backend, seed=i), gamma, beta, bn_param)
    bn_param["mode"] = "test"
    out, _ = bn_layers.batchnorm_forward(_data(backend, seed=999), gamma, beta, bn_param)
    assert np.all(np.abs(host(out).mean(axis=0)) < 0.2)
    assert np.all(np.abs(host(out).std(axis=0) - 1) < 0.2)


@pytest.mark.parametrize("backward", ["batchnorm_backward", "batchnorm_backward_alt"])
def test_backward_gradient_check(backend, backward):
    rng = np.random.default_rng(1)
    n, d = 4, 5
    x = backend.asarray(5 * rng.standard_normal((n, d)) + 12)
    gamma = backend.asarray(rng.standard_normal(d))
    beta = backend.asarray(rng.standard_normal(d))
    dout = backend.asarray(rng.standard_normal((n, d)))
    bn_param = {"mode": "train"}
    f = lambda _: bn_layers.batchnorm_forward(x, gamma, beta, dict(bn_param))[0]
    _, cache = bn_layers.batchnorm_forward(x, gamma, beta, dict(bn_param))
    dx, dgamma, dbeta = getattr(bn_layers, backward)(dout, cache)
    assert_grad_close(eval_numerical_gradient_array(f, x, dout), dx, rel=1e-6, what=f"{backward} dx")
    assert_grad_close(eval_numerical_gradient_array(f, gamma, dout), dgamma, what=f"{backward} dgamma")
    assert_grad_close(eval_numerical_gradient_array(f, beta, dout), dbeta, what=f"{backward} dbeta")


def test_both_backward_passes_agree(backend):
    x = _data(backend, n=64, d=7)
    rng = np.random.default_rng(5)
    gamma, beta = backend.asarray(rng.standard_normal(7)), backend.asarray(rng.standard_normal(7))
    dout = backend.asarray(rng.standard_normal((64, 7)))
    _, cache = bn_layers.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    for a, b in zip(bn_layers.batchnorm_backward(dout, cache), bn_layers.batchnorm_backward_alt(dout, cache)):
        assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_backward_after_test_mode_forward_says_so(backend):
    """The seed failed with an unpacking error here."""
    x = _data(backend)
    ones, zeros = backend.asarray(np.ones(3)), backend.asarray(np.zeros(3))
    _, cache = bn_layers.batchnorm_forward(x, ones, zeros, {"mode": "test"})
    for backward in (bn_layers.batchnorm_backward, bn_layers.batchnorm_backward_alt):
        with pytest.raises(ValueError, match="train-mode forward"):
            backward(x, cache)


def test_unknown_mode_is_refused_before_state_changes(backend):
    x = _data(backend)
    bn_param = {"mode": "eval"}
    with pytest.raises(ValueError, match=r"bn_param\['mode'\].*'eval'"):
        bn_layers.batchnorm_forward(x, backend.asarray(np.ones(3)), backend.asarray(np.zeros(3)), bn_param)
    assert "running_mean" not in bn_param


def test_affine_bn_relu_backward_gradient_check(backend):
    rng = np.random.default_rng(3)
    x = backend.asarray(rng.standard_normal((4, 3, 2)))
    w = backend.asarray(rng.standard_normal((6, 5)))
    b = backend.asarray(rng.standard_normal(5))
    gamma, beta = backend.asarray(rng.standard_normal(5)), backend.asarray(rng.standard_normal(5))
    dout = backend.asarray(rng.standard_normal((4, 5)))
    _, cache = bn_layers.affine_bn_relu_forward(x, w, b, gamma, beta, {"mode": "train"})
    dx, dw, db, dgamma, dbeta = bn_layers.affine_bn_relu_backward(dout, cache)
    f = lambda _: bn_layers.affine_bn_relu_forward(x, w, b, gamma, beta, {"mode": "train"})[0]
    assert_grad_close(eval_numerical_gradient_array(f, x, dout), dx, rel=1e-6, what="affine_bn_relu dx")
    assert_grad_close(eval_numerical_gradient_array(f, w, dout), dw, rel=1e-6, what="affine_bn_relu dw")
    assert_grad_close(eval_numerical_gradient_array(f, gamma, dout), dgamma, what="affine_bn_relu dgamma")
    assert_grad_close(eval_numerical_gradient_array(f, beta, dout), dbeta, what="affine_bn_relu dbeta")
    assert float(np.max(np.abs(host(db)))) < 1e-10  # a bias before batch norm has no effect
