"""ConvNet and ThreeLayerConvNet: whole-net gradient checks, same numbers on every backend, Trainer, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, assert_grad_close, host

import xpdl
from xpdl import cnn
from xpdl.gradient_check import eval_numerical_gradient
from xpdl.runs.checkpoint import restore_trainer, save_checkpoint, save_model
from xpdl.runs.net_checkpoint import build_model, load_checkpoint


def images(n=4, shape=(2, 4, 4), c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)), rng.integers(c, size=n)


def tiny(backend, **kw):
    args = dict(
        input_dim=(2, 4, 4),
        conv_dims=(3, 4),
        hidden_dims=(5,),
        num_classes=3,
        reg=0.1,
        dtype="float64",
        seed=1,
        backend=backend,
    )
    args.update(kw)
    return cnn.ConvNet(**args)


@pytest.mark.parametrize("normalization", [None, "batchnorm", "groupnorm"])
def test_whole_convnet_gradient_check(backend, normalization):
    X, y = images()
    net = tiny(backend, normalization=normalization, groups=1 if normalization == "groupnorm" else None)
    _, grads = net.loss(X, y)
    assert set(grads) == set(net.params)
    for name in sorted(grads):
        numeric = eval_numerical_gradient(lambda _: net.loss(X, y)[0], net.params[name], verbose=False, h=1e-5)
        assert_grad_close(numeric, grads[name], rel=1e-6, abs_floor=1e-8, what=f"convnet {normalization} {name}")


def test_convnet_with_dropout_gradient_check(backend):
    X, y = images()
    net = tiny(backend, conv_dims=(3,), dropout=0.6)
    state = net.rng.get_state()

    def loss(_):
        net.rng.set_state(state)
        return net.loss(X, y)[0]

    net.rng.set_state(state)
    _, grads = net.loss(X, y)
    for name in sorted(grads):
        numeric = eval_numerical_gradient(loss, net.params[name], verbose=False, h=1e-5)
        assert_grad_close(numeric, grads[name], rel=1e-6, abs_floor=1e-8, what=f"convnet dropout {name}")


def test_three_layer_convnet_has_cs231n_shapes_and_gradients(backend):
    X, y = images(n=3, shape=(3, 6, 6))
    net = cnn.ThreeLayerConvNet(
        input_dim=(3, 6, 6), num_filters=3, filter_size=3, hidden_dim=4, num_classes=3,
        weight_scale=1e-1, reg=0.05, dtype="float64", seed=0, backend=backend,
    )  # fmt: skip
    shapes = {k: tuple(v.shape) for k, v in net.params.items()}
    assert shapes == {"W1": (3, 3, 3, 3), "b1": (3,), "W2": (27, 4), "b2": (4,), "W3": (4, 3), "b3": (3,)}
    scores = net.loss(X)
    assert tuple(scores.shape) == (3, 3)
    _, grads = net.loss(X, y)
    for name in sorted(grads):
        numeric = eval_numerical_gradient(lambda _: net.loss(X, y)[0], net.params[name], verbose=False, h=1e-5)
        assert_grad_close(numeric, grads[name], rel=1e-6, abs_floor=1e-8, what=f"three-layer {name}")


def test_three_layer_convnet_initial_loss_is_log_c():
    X, y = images(n=20, shape=(3, 8, 8), c=10)
    net = cnn.ThreeLayerConvNet(input_dim=(3, 8, 8), dtype="float64", seed=0, backend="numpy")
    loss, _ = net.loss(X, y)
    assert abs(float(loss) - np.log(10)) < 1e-3


@pytest.mark.parametrize("normalization", [None, "batchnorm", "groupnorm"])
def test_same_seed_same_net_masks_and_loss_history_on_every_backend(backend, other_backend, normalization):
    X, y = images(n=24, shape=(1, 4, 4))
    histories = []
    for be in (backend, other_backend):
        net = cnn.ConvNet(
            input_dim=(1, 4, 4), conv_dims=(3, 4), hidden_dims=(6,), num_classes=3,
            normalization=normalization, dropout=0.8, dtype="float64", seed=5, backend=be,
        )  # fmt: skip
        data = {"X_train": X[:16], "y_train": y[:16], "X_val": X[16:], "y_val": y[16:]}
        tr = xpdl.Trainer(net, data, update_rule="adam", batch_size=4, num_epochs=2, verbose=False, seed=2)
        tr.train()
        histories.append((tr.loss_history, {k: host(v) for k, v in net.params.items()}))
    np.testing.assert_allclose(histories[0][0], histories[1][0], rtol=1e-12)
    for k, v in histories[0][1].items():
        np.testing.assert_allclose(v, histories[1][1][k], rtol=1e-10, atol=1e-13, err_msg=k)


def test_he_init_scales_with_fan_in():
    net = cnn.ConvNet(input_dim=(3, 32, 32), conv_dims=(64,), hidden_dims=(256,), seed=0, backend="numpy")
    assert abs(host(net.params["W1"]).std() - np.sqrt(2 / 27)) < 0.02
    assert abs(host(net.params["W2"]).std() - np.sqrt(2 / (64 * 16 * 16))) < 1e-3


def test_batchnorm_bias_gradient_is_zero_and_running_stats_are_state(backend):
    X, y = images()
    net = tiny(backend, normalization="batchnorm")
    _, grads = net.loss(X, y)
    assert not np.any(host(grads["b1"])) and not np.any(host(grads["b2"]))
    state = net.state_arrays()
    assert tuple(state["bn2.running_mean"].shape) == (4,)
    assert set(cnn.state_shapes(net.config())) == set(state)
    assert all(tuple(state[k].shape) == s for k, s in cnn.state_shapes(net.config()).items())


def test_predict_and_moving_between_backends(backend, other_backend):
    X, _ = images(n=7)
    net = tiny(backend, normalization="batchnorm")
    before = net.predict(X, batch_size=3)
    assert before.shape == (7,) and before.dtype == np.int64
    net.to(other_backend)
    np.testing.assert_array_equal(net.predict(X), before)


def make_trainer(backend="numpy", num_epochs=2, **kw):
    X, y = images(n=40, shape=(1, 4, 4))
    X = X + y[:, None, None, None]
    data = {"X_train": X[:30], "y_train": y[:30], "X_val": X[30:], "y_val": y[30:]}
    net = cnn.ConvNet(
        input_dim=(1, 4, 4), conv_dims=(3,), hidden_dims=(5,), num_classes=3,
        normalization="batchnorm", dropout=0.8, seed=1, backend=backend,
    )  # fmt: skip
    return xpdl.Trainer(
        net, data, update_rule="adam", updater_config={"learning_rate": 1e-2}, batch_size=8,
        num_epochs=num_epochs, verbose=False, seed=3, **kw,
    )  # fmt: skip


def test_checkpoint_round_trip_and_exact_resume(tmp_path, backend):
    whole = make_trainer(num_epochs=4)
    whole.train()

    def save_at_epoch_2(trainer):
        if trainer.epoch == 2:
            save_checkpoint(tmp_path / "ck.npz", trainer, {})

    make_trainer(num_epochs=4, on_epoch_end=save_at_epoch_2).train()
    ck = load_checkpoint(tmp_path / "ck.npz")
    assert ck["config"]["model"] == "conv"
    resumed = restore_trainer(ck, make_trainer(num_epochs=4))
    resumed.train()
    assert resumed.loss_history == whole.loss_history
    for k, v in whole.model.state_arrays().items():
        assert np.array_equal(host(resumed.model.state_arrays()[k]), host(v)), k
    net = build_model(ck, backend)
    assert isinstance(net, cnn.ConvNet)
    path = save_model(tmp_path / "model.npz", whole.model, {})
    loaded = build_model(load_checkpoint(path), backend)
    X, _ = images(n=6, shape=(1, 4, 4))
    np.testing.assert_array_equal(loaded.predict(X), whole.model.predict(X))


def test_three_layer_convnet_checkpoint_rebuilds_as_the_same_convnet(tmp_path):
    net = cnn.ThreeLayerConvNet(input_dim=(1, 4, 4), num_filters=2, filter_size=3, hidden_dim=3, seed=0)
    path = save_model(tmp_path / "m.npz", net, {})
    loaded = build_model(load_checkpoint(path), "numpy")
    X, _ = images(n=5, shape=(1, 4, 4))
    assert_close(loaded.loss(X), host(net.loss(X)), rtol=0)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"input_dim": (3, 32)}, r"input_dim: expected \(C, H, W\)"),
        ({"input_dim": (1, 8, 8), "conv_dims": (4, 4, 4, 4)}, r"conv_dims: 4 blocks .* divisible by 16"),
        ({"filter_size": 4}, r"filter_size: expected an odd size"),
        ({"normalization": "layernorm"}, r"normalization: expected one of"),
        ({"normalization": "groupnorm", "groups": 3, "conv_dims": (4, 8)}, r"groups: .* 3 does not divide \[4, 8\]"),
        ({"weight_scale": "xavier"}, r"weight_scale"),
        ({"weight_scale": -1.0}, r"weight_scale: expected 'he' or a finite number > 0"),
    ],
)
def test_bad_constructor_arguments_are_refused(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cnn.ConvNet(**kw)


def test_exported_from_the_package():
    assert xpdl.ConvNet is cnn.ConvNet and xpdl.ThreeLayerConvNet is cnn.ThreeLayerConvNet


def test_weights_plot_draws_the_first_conv_layers_filters(tmp_path):
    from xpdl import plots

    net = cnn.ConvNet(input_dim=(3, 8, 8), conv_dims=(5,), hidden_dims=(4,), seed=0, backend="numpy")
    fig = plots.weights(net, (8, 8, 3))
    assert fig.axes[0].get_title().startswith("First conv layer: 5 filters, 3x3")
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (2 * 4 + 1, 3 * 4 + 1, 3)  # 2 rows x 3 columns of 3x3 RGB filters, 1-pixel borders
    path = plots.write_weights(tmp_path, net, (8, 8, 3))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="1 or 3 input channels"):
        plots.weights(np.zeros((4, 2, 3, 3)), (8, 8, 1))


def test_channels_last_nets_read_hwc_images(backend):
    rng = np.random.default_rng(3)
    nchw = rng.standard_normal((4, 3, 4, 4))
    nhwc = nchw.transpose(0, 2, 3, 1)
    first = tiny(backend, input_dim=(3, 4, 4))
    last = tiny(backend, input_dim=(3, 4, 4), channels_last=True)
    assert_close(last.as_input(nhwc.reshape(4, -1)), host(first.as_input(nchw)), rtol=0)
    assert_close(last.loss(nhwc), host(first.loss(nchw)), rtol=1e-12)
    assert last.config()["channels_last"] is True
