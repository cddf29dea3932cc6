"""FullyConnectedNet: whole-net gradient check, the seed's bugs, input errors, backends."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, assert_grad_close, host

import xpdl
from xpdl.gradient_check import eval_numerical_gradient


def small_net(backend, **kw):
    args = dict(
        input_dim=6,
        hidden_dims=[7, 8],
        num_classes=3,
        dropout=0.7,
        use_batchnorm=True,
        reg=0.1,
        weight_scale=5e-2,
        seed=1,
        dtype="float64",
        backend=backend,
    )
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
        assert (
            tuple(net.params[f"gamma{i}"].shape)
            == tuple(net.params[f"beta{i}"].shape)
            == tuple(net.params[f"b{i}"].shape)
        )
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


def test_same_seed_gives_same_initial_weights_on_every_backend(backend, other_backend):
    ref = xpdl.FullyConnectedNet(input_dim=20, hidden_dims=[9], seed=5, backend=other_backend)
    net = xpdl.FullyConnectedNet(input_dim=20, hidden_dims=[9], seed=5, backend=backend)
    for k in ref.params:
        assert np.array_equal(host(net.params[k]), host(ref.params[k]))
        assert host(net.params[k]).dtype == np.float32


def test_same_seed_gives_same_dropout_masks_on_every_backend(backend, other_backend):
    X, y = small_data(n=16)
    ref = small_net(other_backend, use_batchnorm=False, reg=0.0)
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


@pytest.mark.parametrize(
    "y,error,match",
    [
        (np.array([0.0, 1.0, 2.0, 1.0, 0.0]), TypeError, "integer class labels"),
        (np.array([0, 1, 3, 1, 0]), ValueError, r"labels in \[0, 3\)"),
        (np.array([0, -1, 2, 1, 0]), ValueError, r"labels in \[0, 3\)"),
        (np.array([0, 1, 2]), ValueError, r"shape \(5,\)"),
    ],
)
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
    state = net.rng.get_state()
    assert float(net.loss(X, y)[0]) == float(net.loss(X, y)[0])  # no mask: the same loss twice
    assert net.rng.get_state() == state  # and nothing drawn
    assert small_net(backend, dropout=0.25).dropout_param["p"] == 0.25


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"dtype": "int32"}, "dtype"),
        ({"dropout": 1.5}, r"dropout_param\['p'\]"),
        ({"hidden_dims": 5}, "hidden_dims"),
        ({"input_dim": 0}, "input_dim"),
        ({"reg": -1}, "reg"),
    ],
)
def test_bad_constructor_arguments_are_refused(kw, match):
    with pytest.raises((TypeError, ValueError), match=match):
        small_net("numpy", **kw)


@pytest.mark.parametrize(
    "kw,error,match",
    [
        ({"weight_scale": -1}, ValueError, "weight_scale: expected a finite number > 0, got -1.0"),
        ({"weight_scale": 0}, ValueError, "weight_scale: expected a finite number > 0, got 0.0"),
        ({"weight_scale": "0.1"}, TypeError, "weight_scale: expected a number, got '0.1'"),
        ({"reg": float("nan")}, ValueError, "reg: expected a finite number, got nan"),
        ({"reg": -0.1}, ValueError, r"reg: expected a finite number >= 0, got -0.1"),
        ({"dropout": 1.5}, ValueError, r"dropout_param\['p'\]: expected a keep probability in \(0, 1\], got 1.5"),
        ({"hidden_dims": 5}, TypeError, "hidden_dims: expected a list of positive ints, got 5"),
        ({"hidden_dims": [4, 0]}, ValueError, r"hidden_dims\[\]: expected a positive int, got 0"),
        ({"input_dim": 1e12}, ValueError, "input_dim: expected a positive int, got 1000000000000.0"),
        ({"dtype": "float16"}, ValueError, r"dtype: expected one of \('float32', 'float64'\), got 'float16'"),
    ],
)
def test_nonsense_arguments_are_refused_naming_the_argument(backend, kw, error, match):
    with pytest.raises(error, match=match):
        small_net(backend, **kw)


def test_empty_batches_and_zero_prediction_batches_are_refused_clearly(backend):
    net = small_net(backend)
    with pytest.raises(ValueError, match=r"X: expected at least one sample for a training loss, got shape \(0, 6\)"):
        net.loss(np.zeros((0, 6)), np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match="batch_size: expected a positive int, got 0"):
        net.predict(np.zeros((3, 6)), batch_size=0)
    assert net.predict(np.zeros((0, 6))).shape == (0,)


def test_check_config_and_state_shapes_allocate_nothing():
    from xpdl.fc_net import check_config, state_shapes

    cfg = check_config(input_dim=10**9, hidden_dims=[10**9], num_classes=10, use_batchnorm=True)
    assert cfg["normalization"] == "batchnorm"
    shapes = state_shapes(cfg)  # a net of 10**18 weights: only its shapes are computed
    assert shapes["W1"] == (10**9, 10**9) and shapes["bn1.running_var"] == (10**9,)
    assert sorted(state_shapes({**cfg, "normalization": "layernorm"})) == ["W1", "W2", "b1", "b2", "beta1", "gamma1"]
    with pytest.raises(TypeError):
        state_shapes({**cfg, "bogus": 1})


def test_host_data_is_cast_to_the_nets_dtype_before_it_is_copied(backend):
    net = small_net(backend, dtype="float32")
    X = net.as_input(np.arange(12, dtype=np.int64).reshape(2, 6))
    assert backend.owns(X) and host(X).dtype == np.float32
    with pytest.raises(TypeError, match="X: expected a numeric array, got dtype <U1"):
        net.as_input(np.array([list("abcdef")]))
