"""FullyConnectedNet: whole-net gradient check, the seed's bugs, input errors, backends."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, assert_grad_close, host

import xpdl
from xpdl.gradient_check import eval_numerical_gradient


def small_net(backend, **kw):
    args = dict(input_dim=6, hidden_dims=[7, 8], num_classes=3, dropout=0.7, use_batchnorm=True,
                reg=0.1, weight_scale=5e-2, seed=1, dtype="float64", backend=backend)
    args.update(kw)
    return xpdl.FullyConnectedNet(**args)


def small_data(n=5, d=6, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(c, size=n)


def test_whole_net_gradient_check_with_batchnorm_dropout_and_reg(backend):
    X, y = small_data()
    net = small_net(backend)
    state = net.rng.get_state()

    def loss(_):
        net.rng.set_state(state)  # the same dropout masks on every evaluation
        return net.loss(X, y)[0]

    net.rng.set_state(state)
    _, grads = net.loss(X, y)
    assert set(grads) == set(net.params)
    for name in sorted(grads):
        numeric = eval_numerical_gradient(loss, net.params[name], verbose=False, h=1e-5)
        assert_grad_close(numeric, grads[name], rel=1e-6, abs_floor=1e-8, what=f"net {name}")


def test_bias_gamma_beta_are_vectors(backend):
    net = small_net(backend)
    for i in (1, 2):
        assert tuple(net.params[f"b{i}"].shape) == (7 if i == 1 else 8,)
        assert tuple(net.params[f"gamma{i}"].shape) == tuple(net.params[f"beta{i}"].shape) == tuple(
            net.params[f"b{i}"].shape)
    assert tuple(net.params["b3"].shape) == (3,)


def test_batchnorm_test_mode_predictions_do_not_depend_on_the_batch(backend):
    """The seed set bn_param[mode] instead of bn_param['mode']: test mode used batch statistics."""
    X, y = small_data(n=40)
    net = small_net(backend, dropout=0)
    for _ in range(3):
        net.loss(X, y)  # train-mode passes fill the running statistics
    alone = host(net.loss(X[:3]))
    together = host(net.loss(X))[:3]
    assert_close(alone, together, rtol=1e-12)
    assert all(bn["mode"] == "test" for bn in net.bn_params)


def test_batchnorm_and_dropout_work_together(backend):
    """The seed's elif dropped batch norm whenever dropout was on."""
    X, y = small_data(n=20)
    net = small_net(backend)
    loss1, grads = net.loss(X, y)
    loss2, _ = net.loss(X, y)
    assert "gamma1" in grads and "gamma2" in grads
    assert float(loss1) != float(loss2)  # a new dropout mask each call
    assert float(np.abs(host(net.bn_params[0]["running_mean"])).sum()) > 0


def test_same_seed_gives_same_initial_weights_on_every_backend(backend):
    ref = xpdl.FullyConnectedNet(input_dim=20, hidden_dims=[9], seed=5, backend="numpy")
    net = xpdl.FullyConnectedNet(input_dim=20, hidden_dims=[9], seed=5, backend=backend)
    for k in ref.params:
        assert np.array_equal(host(net.params[k]), host(ref.params[k]))
        assert host(net.params[k]).dtype == np.float32


def test_same_seed_gives_same_dropout_masks_on_every_backend(backend):
    X, y = small_data(n=16)
    ref = small_net("numpy", use_batchnorm=False, reg=0.0)
    net = small_net(backend, use_batchnorm=False, reg=0.0)
    for _ in range(3):
        assert float(ref.loss(X, y)[0]) == pytest.approx(float(net.loss(X, y)[0]), rel=1e-13)
    assert ref.rng.get_state() == net.rng.get_state()


def test_wrong_feature_count_is_refused_before_state_changes(backend):
    net = small_net(backend)
    state = net.rng.get_state()
    with pytest.raises(ValueError, match=r"X: expected 6 features.*\(4, 5\)"):
        net.loss(np.ones((4, 5)), np.zeros(4, dtype=np.int64))
    assert net.rng.get_state() == state
    assert float(np.abs(host(net.bn_params[0]["running_mean"])).sum()) == 0


@pytest.mark.parametrize("y,error,match", [
    (np.array([0.0, 1.0, 2.0, 1.0, 0.0]), TypeError, "integer class labels"),
    (np.array([0, 1, 3, 1, 0]), ValueError, r"labels in \[0, 3\)"),
    (np.array([0, -1, 2, 1, 0]), ValueError, r"labels in \[0, 3\)"),
    (np.array([0, 1, 2]), ValueError, r"shape \(5,\)"),
])
def test_bad_labels_are_refused_before_state_changes(backend, y, error, match):
    X, _ = small_data()
    net = small_net(backend)
    state = net.rng.get_state()
    with pytest.raises(error, match=match):
        net.loss(X, y)
    assert net.rng.get_state() == state
    assert float(np.abs(host(net.bn_params[0]["running_mean"])).sum()) == 0


def test_arrays_from_another_backend_are_refused(backend):
    import array_api_strict

    net = small_net("numpy")
    with pytest.raises(TypeError, match="X: expected a NumPy array or an array of the net's backend"):
        net.loss(array_api_strict.ones((2, 6), dtype=array_api_strict.float64))


def test_move_between_backends_keeps_predictions(backend):
    X, y = small_data(n=12)
    net = small_net("numpy", dropout=0)
    net.loss(X, y)
    before = host(net.loss(X))
    net.to(backend)
    assert all(backend.owns(v) for v in net.params.values())
    assert backend.owns(net.bn_params[1]["running_var"])
    assert_close(net.loss(X), before, rtol=1e-12)


def test_dropout_zero_means_no_dropout_and_p_is_keep_probability(backend):
    X, y = small_data(n=8)
    net = small_net(backend, dropout=0)
    assert not net.use_dropout and net.dropout_param == {}
    assert float(net.loss(X, y)[0]) == float(net.loss(X, y)[0]) or net.use_batchnorm
    assert small_net(backend, dropout=0.25).dropout_param["p"] == 0.25


@pytest.mark.parametrize("kw,match", [
    ({"dtype": "int32"}, "dtype"), ({"dropout": 1.5}, r"dropout_param\['p'\]"),
    ({"hidden_dims": 5}, "hidden_dims"), ({"input_dim": 0}, "input_dim"), ({"reg": -1}, "reg"),
])
def test_bad_constructor_arguments_are_refused(kw, match):
    with pytest.raises((TypeError, ValueError), match=match):
        small_net("numpy", **kw)
