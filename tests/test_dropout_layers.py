"""Dropout: keep-probability semantics, masks on the input's device, seeds and gradients, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, assert_grad_close, host

from xpdl import dropout_layers
from xpdl.gradient_check import eval_numerical_gradient_array
from xpdl.rng import Generator


@pytest.mark.parametrize("p", [0.25, 0.4, 0.7])
def test_train_mode_keeps_a_fraction_p_and_preserves_the_mean(backend, p):
    x = backend.asarray(np.random.default_rng(231).standard_normal((500, 500)) + 10)
    out, _ = dropout_layers.dropout_forward(x, {"mode": "train", "p": p, "seed": 123})
    kept = np.mean(host(out) != 0)
    assert abs(kept - p) < 0.01
    assert abs(host(out).mean() - host(x).mean()) < 0.1


def test_test_mode_is_identity(backend):
    x = backend.asarray(np.arange(12.0).reshape(3, 4))
    out, cache = dropout_layers.dropout_forward(x, {"mode": "test", "p": 0.3})
    assert_close(out, np.arange(12.0).reshape(3, 4))
    assert_close(dropout_layers.dropout_backward(x, cache), host(x))


def test_same_seed_gives_same_mask_and_leaves_global_state_alone(backend):
    x = backend.asarray(np.ones((40, 50)))
    np.random.seed(7)
    before = np.random.random()
    np.random.seed(7)
    a, _ = dropout_layers.dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 42})
    b, _ = dropout_layers.dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 42})
    assert np.random.random() == before  # the seed's np.random.seed(...) changed this
    assert np.array_equal(host(a), host(b))
    c, _ = dropout_layers.dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 43})
    assert not np.array_equal(host(a), host(c))


def test_generator_in_param_advances_between_calls(backend):
    x = backend.asarray(np.ones((30, 30)))
    param = {"mode": "train", "p": 0.5, "rng": Generator(5)}
    a, _ = dropout_layers.dropout_forward(x, param)
    b, _ = dropout_layers.dropout_forward(x, param)
    assert not np.array_equal(host(a), host(b))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mask_has_the_input_dtype(backend, dtype):
    """The seed built a float64 mask for float32 input."""
    x = backend.asarray(np.ones((8, 8)), dtype=dtype)
    out, (_, mask) = dropout_layers.dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 1})
    assert host(mask).dtype == np.dtype(dtype)
    assert host(out).dtype == np.dtype(dtype)
    assert set(np.unique(host(mask))) <= {0.0, 2.0}


def test_backward_gradient_check(backend):
    rng = np.random.default_rng(231)
    x = backend.asarray(rng.standard_normal((10, 10)) + 10)
    dout = backend.asarray(rng.standard_normal((10, 10)))
    param = {"mode": "train", "p": 0.2, "seed": 123}
    _, cache = dropout_layers.dropout_forward(x, param)
    dx = dropout_layers.dropout_backward(dout, cache)
    numeric = eval_numerical_gradient_array(lambda _: dropout_layers.dropout_forward(x, param)[0], x, dout)
    assert_grad_close(numeric, dx, rel=1e-9, what="dropout dx")


def test_affine_relu_dropout_backward_gradient_check(backend):
    rng = np.random.default_rng(4)
    x = backend.asarray(rng.standard_normal((4, 6)))
    w = backend.asarray(rng.standard_normal((6, 5)))
    b = backend.asarray(rng.standard_normal(5))
    dout = backend.asarray(rng.standard_normal((4, 5)))
    param = {"mode": "train", "p": 0.6, "seed": 9}
    _, cache = dropout_layers.affine_relu_dropout_forward(x, w, b, param)
    dx, dw, db = dropout_layers.affine_relu_dropout_backward(dout, cache)
    f = lambda _: dropout_layers.affine_relu_dropout_forward(x, w, b, param)[0]
    assert_grad_close(eval_numerical_gradient_array(f, x, dout), dx, what="affine_relu_dropout dx")
    assert_grad_close(eval_numerical_gradient_array(f, w, dout), dw, what="affine_relu_dropout dw")
    assert_grad_close(eval_numerical_gradient_array(f, b, dout), db, what="affine_relu_dropout db")


@pytest.mark.parametrize("p", [0, -0.1, 1.5, float("nan")])
def test_keep_probability_outside_0_1_is_refused(backend, p):
    with pytest.raises(ValueError, match=r"dropout_param\['p'\]"):
        dropout_layers.dropout_forward(backend.asarray(np.ones(3)), {"mode": "train", "p": p})


def test_unknown_mode_is_refused(backend):
    with pytest.raises(ValueError, match=r"dropout_param\['mode'\]"):
        dropout_layers.dropout_forward(backend.asarray(np.ones(3)), {"mode": "Train", "p": 0.5})


def test_keep_probability_one_keeps_everything(backend):
    x = backend.asarray(np.arange(6.0))
    out, _ = dropout_layers.dropout_forward(x, {"mode": "train", "p": 1, "seed": 0})
    assert_close(out, np.arange(6.0))
