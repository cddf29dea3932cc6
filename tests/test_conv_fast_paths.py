"""The NumPy backend's compiled conv blocks against the reference twin (Backend's methods): float64 to 1e-12,
float32 to 1e-5, over stride 1 and 2, pad 0, 1 and 3, non-square inputs and filters, one channel, batch 1."""

from __future__ import annotations

import numpy as np
import pytest

from xpdl import cnn
from xpdl.backends import Backend, get_backend
from xpdl.cnn import ConvBlock

# (x shape, filters, (HH, WW), stride, pad, (pool_height, pool_width, pool_stride))
BLOCK_CASES = [
    ((2, 3, 6, 6), 4, (3, 3), 1, 1, (2, 2, 2)),
    ((2, 3, 9, 9), 2, (3, 3), 2, 0, (2, 2, 2)),
    ((1, 2, 5, 8), 3, (3, 5), 1, 1, (2, 2, 1)),
    ((2, 1, 8, 6), 2, (2, 4), 2, 1, (3, 1, 2)),
    ((1, 2, 4, 5), 2, (3, 2), 1, 3, (2, 2, 2)),
    ((3, 1, 5, 5), 1, (1, 1), 2, 0, (3, 3, 1)),
    ((1, 1, 7, 6), 2, (3, 3), 1, 1, (3, 2, 2)),  # 3x2 windows, stride 2: not the 2x2 kernels
]
TOL = {"float64": (1e-12, 1e-13), "float32": (1e-5, 1e-6)}


def _block(norm, stride, pad, pool, groups=1):
    norm_param = {"mode": "train", "momentum": 0.9} if norm == "batchnorm" else {}
    pool_param = {"pool_height": pool[0], "pool_width": pool[1], "stride": pool[2]}
    return ConvBlock(1, norm, norm_param, {"stride": stride, "pad": pad}, pool_param, groups)


def _run(backend, block, x, params, dout):
    h, cache = backend.conv_block_forward(x, params, block, {})
    h = np.array(h)
    dx, grads = backend.conv_block_backward(dout, cache, True, {})
    stats = {k: np.array(v) for k, v in block.norm_param.items() if k.startswith("running")}
    return h, np.array(dx), {k: np.array(v) for k, v in grads.items()}, stats


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("norm", [None, "batchnorm"])
@pytest.mark.parametrize("xs,f,hw,stride,pad,pool", BLOCK_CASES)
def test_compiled_conv_block_matches_the_reference(xs, f, hw, stride, pad, pool, norm, dtype):
    numpy_backend = get_backend("numpy")
    reference = numpy_backend.reference()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(dtype)
    params = {
        "W1": rng.standard_normal((f, xs[1], *hw)).astype(dtype),
        "b1": rng.standard_normal(f).astype(dtype),
        "gamma1": (1 + 0.1 * rng.standard_normal(f)).astype(dtype),
        "beta1": rng.standard_normal(f).astype(dtype),
    }
    probe = _block(norm, stride, pad, pool)
    h, _ = Backend.conv_block_forward(reference, x, params, probe)
    dout = rng.standard_normal(tuple(h.shape)).astype(dtype)
    got = _run(numpy_backend, _block(norm, stride, pad, pool), x, params, dout)
    want = _run(reference, _block(norm, stride, pad, pool), x, params, dout)
    rtol, atol = TOL[dtype]
    assert got[0].dtype == np.dtype(dtype)
    np.testing.assert_allclose(got[0], want[0], rtol=rtol, atol=atol, err_msg="h")
    scale = np.abs(want[1]).max() + 1
    np.testing.assert_allclose(got[1], want[1], rtol=rtol, atol=atol * scale, err_msg="dx")
    assert set(got[2]) == set(want[2])
    for k in want[2]:
        scale = np.abs(want[2][k]).max() + 1
        np.testing.assert_allclose(got[2][k], want[2][k], rtol=rtol, atol=atol * scale, err_msg=k)
    for k in want[3]:
        np.testing.assert_allclose(got[3][k], want[3][k], rtol=rtol, atol=atol, err_msg=k)


def test_ties_go_to_the_first_maximum_as_in_the_reference():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 0] = x[0, 0, 1, 1] = 5.0
    params = {"W1": np.ones((1, 1, 1, 1)), "b1": np.zeros(1)}
    block = _block(None, 1, 0, (2, 2, 2))
    _, cache = get_backend("numpy").conv_block_forward(x, params, block, {})
    dx, _ = get_backend("numpy").conv_block_backward(np.full((1, 1, 2, 2), 3.0), cache, True, {})
    want = np.zeros((4, 4))
    want[1, 0] = 3.0  # the first of the two 5s; the all-zero windows pass nothing through the ReLU
    np.testing.assert_array_equal(np.asarray(dx)[0, 0], want)


@pytest.mark.parametrize("normalization", [None, "batchnorm", "groupnorm"])
def test_fused_and_reference_training_give_the_same_loss_history(monkeypatch, normalization):
    import xpdl

    rng = np.random.default_rng(1)
    y = rng.integers(3, size=40)
    X = rng.standard_normal((40, 1, 8, 8)) + y[:, None, None, None]
    data = {"X_train": X[:32], "y_train": y[:32], "X_val": X[32:], "y_val": y[32:]}
    histories = []
    for fused in ("1", "0"):
        monkeypatch.setenv("XPDL_FUSED", fused)
        net = cnn.ConvNet(
            input_dim=(1, 8, 8), conv_dims=(4, 6), hidden_dims=(8,), num_classes=3,
            normalization=normalization, dropout=0.8, dtype="float64", seed=0, backend="numpy",
        )  # fmt: skip
        tr = xpdl.Trainer(net, data, update_rule="adam", batch_size=8, num_epochs=2, verbose=False, seed=0)
        tr.train()
        histories.append((tr.loss_history, {k: np.array(v) for k, v in net.state_arrays().items()}))
    np.testing.assert_allclose(histories[0][0], histories[1][0], rtol=1e-10)
    for k, v in histories[1][1].items():
        np.testing.assert_allclose(histories[0][1][k], v, rtol=1e-8, atol=1e-10, err_msg=k)
