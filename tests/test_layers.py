"""affine, relu and softmax: known answers (cs231n values) and gradient checks on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, assert_grad_close, host

from xpdl import layers
from xpdl.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array


def test_affine_forward_known_answer(backend):
    x = np.linspace(-0.1, 0.5, num=2 * 120).reshape(2, 4, 5, 6)
    w = np.linspace(-0.2, 0.3, num=3 * 120).reshape(120, 3)
    b = np.linspace(-0.3, 0.1, num=3)
    out, _ = layers.affine_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b))
    correct = np.array([[1.49834967, 1.70660132, 1.91485297], [3.25553199, 3.5141327, 3.77273342]])
    assert_close(out, correct, rtol=1e-7)


def test_relu_forward_known_answer(backend):
    x = np.linspace(-0.5, 0.5, num=12).reshape(3, 4)
    out, _ = layers.relu_forward(backend.asarray(x))
    correct = np.array(
        [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.04545455, 0.13636364], [0.22727273, 0.31818182, 0.40909091, 0.5]]
    )
    assert_close(out, correct, rtol=1e-6)


def test_affine_backward_gradient_check(backend):
    rng = np.random.default_rng(231)
    x = backend.asarray(rng.standard_normal((10, 2, 3)))
    w = backend.asarray(rng.standard_normal((6, 5)))
    b = backend.asarray(rng.standard_normal(5))
    dout = backend.asarray(rng.standard_normal((10, 5)))
    _, cache = layers.affine_forward(x, w, b)
    dx, dw, db = layers.affine_backward(dout, cache)
    assert tuple(dx.shape) == (10, 2, 3) and tuple(dw.shape) == (6, 5) and tuple(db.shape) == (5,)
    assert_grad_close(
        eval_numerical_gradient_array(lambda _: layers.affine_forward(x, w, b)[0], x, dout), dx, what="affine dx"
    )
    assert_grad_close(
        eval_numerical_gradient_array(lambda _: layers.affine_forward(x, w, b)[0], w, dout), dw, what="affine dw"
    )
    assert_grad_close(
        eval_numerical_gradient_array(lambda _: layers.affine_forward(x, w, b)[0], b, dout), db, what="affine db"
    )


def test_relu_backward_gradient_check(backend):
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((10, 10)))
    dout = backend.asarray(rng.standard_normal((10, 10)))
    dx = layers.relu_backward(dout, layers.relu_forward(x)[1])
    numeric = eval_numerical_gradient_array(lambda _: layers.relu_forward(x)[0], x, dout)
    assert_grad_close(numeric, dx, rel=1e-9, what="relu dx")


def test_relu_backward_leaves_dout_unchanged(backend):
    """The seed's relu_backward zeroed the caller's dout in place."""
    x = backend.asarray(np.array([[-1.0, 2.0], [3.0, -4.0]]))
    dout = backend.asarray(np.ones((2, 2)))
    dx = layers.relu_backward(dout, x)
    assert_close(dout, np.ones((2, 2)))
    assert_close(dx, np.array([[0.0, 1.0], [1.0, 0.0]]))


def test_affine_relu_backward_gradient_check(backend):
    rng = np.random.default_rng(1)
    x = backend.asarray(rng.standard_normal((2, 3, 4)))
    w = backend.asarray(rng.standard_normal((12, 10)))
    b = backend.asarray(rng.standard_normal(10))
    dout = backend.asarray(rng.standard_normal((2, 10)))
    _, cache = layers.affine_relu_forward(x, w, b)
    dx, dw, db = layers.affine_relu_backward(dout, cache)
    f = lambda _: layers.affine_relu_forward(x, w, b)[0]
    assert_grad_close(eval_numerical_gradient_array(f, x, dout), dx, what="affine_relu dx")
    assert_grad_close(eval_numerical_gradient_array(f, w, dout), dw, what="affine_relu dw")
    assert_grad_close(eval_numerical_gradient_array(f, b, dout), db, what="affine_relu db")


def test_softmax_loss_known_answer_and_gradient(backend):
    rng = np.random.default_rng(2)
    num_classes, n = 10, 50
    x = backend.asarray(0.001 * rng.standard_normal((n, num_classes)))
    y = backend.asarray(rng.integers(num_classes, size=n))
    loss, dx = layers.softmax_loss(x, y)
    assert abs(float(loss) - np.log(num_classes)) < 5e-3
    numeric = eval_numerical_gradient(lambda _: layers.softmax_loss(x, y)[0], x, verbose=False)
    assert_grad_close(numeric, dx, rel=1e-7, what="softmax dx")


def test_softmax_loss_stays_finite_for_large_logit_gaps(backend):
    """The seed took log(probs) and returned inf once a probability underflowed to 0."""
    x = backend.asarray(np.array([[0.0, 1000.0], [2000.0, 0.0]]))
    y = backend.asarray(np.array([0, 1]))
    loss, dx = layers.softmax_loss(x, y)
    assert float(loss) == pytest.approx(1500.0)
    assert np.all(np.isfinite(host(dx)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layers_keep_dtype(backend, dtype):
    x = backend.asarray(np.ones((3, 4)), dtype=dtype)
    w = backend.asarray(np.ones((4, 2)), dtype=dtype)
    b = backend.asarray(np.ones(2), dtype=dtype)
    out, cache = layers.affine_relu_forward(x, w, b)
    assert host(out).dtype == np.dtype(dtype)
    loss, dx = layers.softmax_loss(out, backend.asarray(np.array([0, 1, 0])))
    assert host(dx).dtype == np.dtype(dtype)
    for g in layers.affine_relu_backward(dx, cache):
        assert host(g).dtype == np.dtype(dtype)


def test_affine_forward_rejects_mismatched_features(backend):
    with pytest.raises(ValueError, match="expected 5 features"):
        layers.affine_forward(
            backend.asarray(np.ones((2, 4))), backend.asarray(np.ones((5, 3))), backend.asarray(np.ones(3))
        )
