"""Convolution, max pooling, spatial batch/group norm and the conv sandwich layers, on every backend.

Known answers: cs231n's published ``correct_out`` for ``conv_forward_naive`` and
``max_pool_forward_naive``; PyTorch's ``torch.nn.functional`` where torch is installed;
float64 gradient checks of every layer; the fast pairs against the naive pairs.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, assert_grad_close, host

from xpdl import bn_layers, conv_layers
from xpdl.gradient_check import eval_numerical_gradient_array

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed: no live torch.nn.functional comparison")

CS231N_CONV_OUT = np.array(
    [
        [
            [[-0.08759809, -0.10987781], [-0.18387192, -0.2109216]],
            [[0.21027089, 0.21661097], [0.22847626, 0.23004637]],
            [[0.50813986, 0.54309974], [0.64082444, 0.67101435]],
        ],
        [
            [[-0.98053589, -1.03143541], [-1.19128892, -1.24695841]],
            [[0.69108355, 0.66880383], [0.59480972, 0.56776003]],
            [[2.36270298, 2.36904306], [2.38090835, 2.38247847]],
        ],
    ]
)
CS231N_POOL_OUT = np.array(
    [
        [
            [[-0.26315789, -0.24842105], [-0.20421053, -0.18947368]],
            [[-0.14526316, -0.13052632], [-0.08631579, -0.07157895]],
            [[-0.02736842, -0.01263158], [0.03157895, 0.04631579]],
        ],
        [
            [[0.09052632, 0.10526316], [0.14947368, 0.16421053]],
            [[0.20842105, 0.22315789], [0.26736842, 0.28210526]],
            [[0.32631579, 0.34105263], [0.38526316, 0.4]],
        ],
    ]
)

# (x shape, w shape, stride, pad): stride 1 and 2, pad 0, 1 and 3, non-square inputs and
# filters, one channel, batch 1.
CONV_CASES = [
    ((2, 3, 5, 5), (4, 3, 3, 3), 1, 1),
    ((2, 3, 7, 7), (2, 3, 3, 3), 2, 0),
    ((1, 2, 5, 7), (3, 2, 3, 5), 1, 0),
    ((2, 1, 6, 4), (2, 1, 2, 4), 2, 1),
    ((1, 2, 4, 5), (2, 2, 3, 2), 1, 3),
    ((3, 1, 5, 5), (1, 1, 1, 1), 2, 0),
]
POOL_CASES = [
    ((2, 3, 4, 4), 2, 2, 2),
    ((1, 2, 6, 4), 3, 2, 1),
    ((2, 1, 5, 7), 3, 3, 2),
    ((1, 1, 6, 9), 2, 3, 2),
]


def _rng(seed=0):
    return np.random.default_rng(seed)


def _conv_inputs(backend, xs, ws, dtype="float64", seed=0):
    r = _rng(seed)
    x = backend.asarray(r.standard_normal(xs), dtype=dtype)
    w = backend.asarray(r.standard_normal(ws), dtype=dtype)
    b = backend.asarray(r.standard_normal(ws[0]), dtype=dtype)
    return x, w, b


# ----------------------------------------------------------------------------- known answers
def test_conv_forward_naive_matches_cs231n(backend):
    x = backend.asarray(np.linspace(-0.1, 0.5, num=96).reshape(2, 3, 4, 4))
    w = backend.asarray(np.linspace(-0.2, 0.3, num=144).reshape(3, 3, 4, 4))
    b = backend.asarray(np.linspace(-0.1, 0.2, num=3))
    for forward in (conv_layers.conv_forward_naive, conv_layers.conv_forward_fast):
        out, _ = forward(x, w, b, {"stride": 2, "pad": 1})
        assert_close(out, CS231N_CONV_OUT, rtol=1e-7, atol=1e-8)


def test_max_pool_forward_matches_cs231n(backend):
    x = backend.asarray(np.linspace(-0.3, 0.4, num=96).reshape(2, 3, 4, 4))
    pool = {"pool_width": 2, "pool_height": 2, "stride": 2}
    for forward in (conv_layers.max_pool_forward_naive, conv_layers.max_pool_forward_fast):
        out, _ = forward(x, pool)
        assert_close(out, CS231N_POOL_OUT, rtol=1e-7, atol=1e-8)


@needs_torch
@pytest.mark.parametrize("xs,ws,stride,pad", CONV_CASES)
def test_conv_forward_and_backward_match_torch(backend, xs, ws, stride, pad):
    x, w, b = _conv_inputs(backend, xs, ws)
    out, cache = conv_layers.conv_forward_fast(x, w, b, {"stride": stride, "pad": pad})
    dout = backend.asarray(_rng(9).standard_normal(tuple(out.shape)))
    dx, dw, db = conv_layers.conv_backward_fast(dout, cache)
    tx, tw, tb = (torch.tensor(host(a), requires_grad=True) for a in (x, w, b))
    tout = F.conv2d(tx, tw, tb, stride=stride, padding=pad)
    tout.backward(torch.tensor(host(dout)))
    for mine, theirs in ((out, tout), (dx, tx.grad), (dw, tw.grad), (db, tb.grad)):
        assert_close(mine, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)


@needs_torch
@pytest.mark.parametrize("xs,ph,pw,stride", POOL_CASES)
def test_max_pool_matches_torch(backend, xs, ph, pw, stride):
    x = backend.asarray(_rng(3).standard_normal(xs))
    pool = {"pool_height": ph, "pool_width": pw, "stride": stride}
    out, cache = conv_layers.max_pool_forward_fast(x, pool)
    dout = backend.asarray(_rng(4).standard_normal(tuple(out.shape)))
    dx = conv_layers.max_pool_backward_fast(dout, cache)
    tx = torch.tensor(host(x), requires_grad=True)
    tout = F.max_pool2d(tx, (ph, pw), stride=stride)
    tout.backward(torch.tensor(host(dout)))
    assert_close(out, tout.detach().numpy(), rtol=0, atol=0)
    assert_close(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-15)


@needs_torch
def test_spatial_norms_match_torch(backend):
    r = _rng(5)
    xh = 3 * r.standard_normal((3, 6, 4, 5)) + 2
    gh, bh = r.standard_normal(6), r.standard_normal(6)
    x, gamma, beta = (backend.asarray(a) for a in (xh, gh, bh))
    out, _ = bn_layers.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    want = F.batch_norm(torch.tensor(xh), None, None, torch.tensor(gh), torch.tensor(bh), training=True, eps=1e-5)
    assert_close(out, want.numpy(), rtol=1e-10, atol=1e-12)
    out, _ = bn_layers.spatial_groupnorm_forward(x, gamma, beta, 3, {})
    want = F.group_norm(torch.tensor(xh), 3, torch.tensor(gh), torch.tensor(bh), eps=1e-5)
    assert_close(out, want.numpy(), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- fast vs naive
@pytest.mark.parametrize("xs,ws,stride,pad", CONV_CASES)
def test_conv_fast_matches_naive(backend, xs, ws, stride, pad):
    x, w, b = _conv_inputs(backend, xs, ws)
    param = {"stride": stride, "pad": pad}
    out_n, cache_n = conv_layers.conv_forward_naive(x, w, b, param)
    out_f, cache_f = conv_layers.conv_forward_fast(x, w, b, param)
    assert_close(out_f, out_n, rtol=1e-12, atol=1e-13)
    dout = backend.asarray(_rng(7).standard_normal(tuple(out_n.shape)))
    for got, want in zip(conv_layers.conv_backward_fast(dout, cache_f), conv_layers.conv_backward_naive(dout, cache_n)):
        assert_close(got, want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("xs,ph,pw,stride", POOL_CASES)
def test_max_pool_fast_matches_naive(backend, xs, ph, pw, stride):
    x = backend.asarray(_rng(2).standard_normal(xs))
    pool = {"pool_height": ph, "pool_width": pw, "stride": stride}
    out_n, cache_n = conv_layers.max_pool_forward_naive(x, pool)
    out_f, cache_f = conv_layers.max_pool_forward_fast(x, pool)
    assert_close(out_f, out_n, rtol=0, atol=0)
    dout = backend.asarray(_rng(8).standard_normal(tuple(out_n.shape)))
    assert_close(
        conv_layers.max_pool_backward_fast(dout, cache_f),
        conv_layers.max_pool_backward_naive(dout, cache_n),
        rtol=1e-15,
        atol=0,
    )


@pytest.mark.parametrize("pair", ["naive", "fast"])
def test_max_pool_tie_gradient_goes_to_the_first_maximum(backend, pair):
    forward = getattr(conv_layers, f"max_pool_forward_{pair}")
    backward = getattr(conv_layers, f"max_pool_backward_{pair}")
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 0] = x[0, 0, 1, 1] = 5.0  # window (0, 0): ties at (1, 0) and (1, 1)
    x[0, 0, 2:, 2:] = 7.0  # window (1, 1): all four tie
    out, cache = forward(backend.asarray(x), {"pool_height": 2, "pool_width": 2, "stride": 2})
    dx = host(backward(backend.asarray(np.full((1, 1, 2, 2), 3.0)), cache))
    want = np.zeros((4, 4))
    want[1, 0] = 3.0  # first maximum in row-major order
    want[0, 2] = 3.0  # window (0, 1) is all zeros: its first element
    want[2, 0] = 3.0  # window (1, 0) likewise
    want[2, 2] = 3.0
    assert_close(dx[0, 0], want, rtol=0)


# ----------------------------------------------------------------------------- gradient checks (float64)
def _check(backend, f, inputs, dout, analytic, what):
    for name, arr in inputs.items():
        num = eval_numerical_gradient_array(lambda _: f(), arr, dout)
        assert_grad_close(num, analytic[name], rel=1e-7, abs_floor=1e-8, what=f"{what} d{name}")


@pytest.mark.parametrize("pair", ["naive", "fast"])
@pytest.mark.parametrize("stride,pad", [(1, 1), (2, 1)])
def test_conv_backward_gradient_check(backend, pair, stride, pad):
    x, w, b = _conv_inputs(backend, (2, 2, 5, 5), (3, 2, 3, 3), seed=stride)
    forward = getattr(conv_layers, f"conv_forward_{pair}")
    backward = getattr(conv_layers, f"conv_backward_{pair}")
    param = {"stride": stride, "pad": pad}
    out, cache = forward(x, w, b, param)
    dout = backend.asarray(_rng(1).standard_normal(tuple(out.shape)))
    dx, dw, db = backward(dout, cache)
    _check(backend, lambda: forward(x, w, b, param)[0], {"x": x, "w": w, "b": b}, dout,
           {"x": dx, "w": dw, "b": db}, f"conv_{pair}")  # fmt: skip


@pytest.mark.parametrize("pair", ["naive", "fast"])
def test_max_pool_backward_gradient_check(backend, pair):
    x = backend.asarray(_rng(3).standard_normal((2, 2, 7, 6) if pair == "fast" else (2, 2, 6, 6)))
    forward = getattr(conv_layers, f"max_pool_forward_{pair}")
    backward = getattr(conv_layers, f"max_pool_backward_{pair}")
    pool = {"pool_height": 3, "pool_width": 2, "stride": 2} if pair == "fast" else {"stride": 2}
    pool = {"pool_height": 2, "pool_width": 2, "stride": 2, **pool}
    out, cache = forward(x, pool)
    dout = backend.asarray(_rng(2).standard_normal(tuple(out.shape)))
    _check(backend, lambda: forward(x, pool)[0], {"x": x}, dout, {"x": backward(dout, cache)}, f"pool_{pair}")


def test_spatial_batchnorm_gradient_check(backend):
    r = _rng(4)
    x = backend.asarray(4 * r.standard_normal((2, 3, 4, 5)) + 10)
    gamma, beta = backend.asarray(r.standard_normal(3)), backend.asarray(r.standard_normal(3))
    dout = backend.asarray(r.standard_normal((2, 3, 4, 5)))
    f = lambda: bn_layers.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})[0]
    _, cache = bn_layers.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    dx, dg, db = bn_layers.spatial_batchnorm_backward(dout, cache)
    _check(backend, f, {"x": x, "gamma": gamma, "beta": beta}, dout, {"x": dx, "gamma": dg, "beta": db}, "sbn")


def test_spatial_batchnorm_running_statistics_and_test_mode(backend):
    r = _rng(6)
    xh = 2 * r.standard_normal((4, 3, 2, 2)) + 5
    x = backend.asarray(xh)
    gamma, beta = backend.asarray(np.ones(3)), backend.asarray(np.zeros(3))
    bn_param = {"mode": "train", "momentum": 0.9}
    bn_layers.spatial_batchnorm_forward(x, gamma, beta, bn_param)
    assert tuple(bn_param["running_mean"].shape) == (3,)
    assert_close(bn_param["running_mean"], 0.1 * xh.mean(axis=(0, 2, 3)), rtol=1e-12)
    assert_close(bn_param["running_var"], 0.1 * xh.var(axis=(0, 2, 3)), rtol=1e-12)
    bn_param["mode"] = "test"
    out, _ = bn_layers.spatial_batchnorm_forward(x, gamma, beta, bn_param)
    mean, var = 0.1 * xh.mean(axis=(0, 2, 3)), 0.1 * xh.var(axis=(0, 2, 3))
    want = (xh - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
    assert_close(out, want, rtol=1e-12)


def test_spatial_groupnorm_gradient_check(backend):
    r = _rng(5)
    x = backend.asarray(4 * r.standard_normal((2, 6, 4, 5)) + 10)
    gamma, beta = backend.asarray(r.standard_normal(6)), backend.asarray(r.standard_normal(6))
    dout = backend.asarray(r.standard_normal((2, 6, 4, 5)))
    f = lambda: bn_layers.spatial_groupnorm_forward(x, gamma, beta, 2, {})[0]
    _, cache = bn_layers.spatial_groupnorm_forward(x, gamma, beta, 2, {})
    dx, dg, db = bn_layers.spatial_groupnorm_backward(dout, cache)
    _check(backend, f, {"x": x, "gamma": gamma, "beta": beta}, dout, {"x": dx, "gamma": dg, "beta": db}, "sgn")


@pytest.mark.parametrize("layer", ["conv_relu", "conv_relu_pool", "conv_bn_relu"])
def test_sandwich_layers_gradient_check(backend, layer):
    r = _rng(11)
    x, w, b = _conv_inputs(backend, (2, 3, 4, 4), (3, 3, 3, 3), seed=12)
    gamma, beta = backend.asarray(r.standard_normal(3)), backend.asarray(r.standard_normal(3))
    conv = {"stride": 1, "pad": 1}
    pool = {"pool_height": 2, "pool_width": 2, "stride": 2}
    forward = getattr(conv_layers, f"{layer}_forward")
    backward = getattr(conv_layers, f"{layer}_backward")
    args = {
        "conv_relu": lambda: (x, w, b, conv),
        "conv_relu_pool": lambda: (x, w, b, conv, pool),
        "conv_bn_relu": lambda: (x, w, b, gamma, beta, conv, {"mode": "train"}),
    }[layer]
    out, cache = forward(*args())
    dout = backend.asarray(r.standard_normal(tuple(out.shape)))
    grads = backward(dout, cache)
    names = ["x", "w", "b", "gamma", "beta"][: len(grads)]
    arrays = {"x": x, "w": w, "b": b, "gamma": gamma, "beta": beta}
    inputs = {k: arrays[k] for k in names if not (layer == "conv_bn_relu" and k == "b")}
    _check(backend, lambda: forward(*args())[0], inputs, dout, dict(zip(names, grads)), layer)


# ----------------------------------------------------------------------------- float32
def test_float32_fast_conv_matches_float64(backend):
    x, w, b = _conv_inputs(backend, (2, 3, 6, 5), (4, 3, 3, 2), dtype="float32")
    out32, _ = conv_layers.conv_forward_fast(x, w, b, {"stride": 1, "pad": 1})
    assert host(out32).dtype == np.float32
    x64, w64, b64 = (backend.asarray(host(a), dtype="float64") for a in (x, w, b))
    out64, _ = conv_layers.conv_forward_naive(x64, w64, b64, {"stride": 1, "pad": 1})
    np.testing.assert_allclose(host(out32), host(out64), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "xs,ws,param,match",
    [
        ((2, 3, 5, 5), (2, 3, 3, 3), {"stride": 2, "pad": 0}, None),  # tiles: 5 - 3 = 2, stride 2
        ((2, 3, 6, 6), (2, 3, 3, 3), {"stride": 2, "pad": 0}, r"w: a filter height of 3 does not tile .* 6"),
        ((2, 3, 5, 5), (2, 4, 3, 3), {"stride": 1, "pad": 0}, r"w: expected 3 input channels"),
        ((2, 3, 5, 5), (2, 3, 3, 3), {"stride": 0, "pad": 0}, r"conv_param\['stride'\]: expected an integer >= 1"),
        ((2, 3, 5, 5), (2, 3, 3, 3), {"stride": 1, "pad": -1}, r"conv_param\['pad'\]: expected an integer >= 0"),
        ((2, 3, 5, 5), (2, 3, 3, 3), {"stride": 1.5, "pad": 0}, r"conv_param\['stride'\]"),
        ((2, 3, 5, 5), (2, 3, 3, 3), {"stride": 1, "pad": "1"}, r"conv_param\['pad'\]"),
        ((2, 3, 5, 5), (2, 3, 6, 6), {"stride": 1, "pad": 0}, r"w: a filter height of 6"),
        ((3, 5, 5), (2, 3, 3, 3), {"stride": 1, "pad": 0}, r"x: expected a 4-D"),
        ((2, 3, 5, 5), (2, 3, 3), {"stride": 1, "pad": 0}, r"w: expected a 4-D"),
    ],
)
@pytest.mark.parametrize("pair", ["naive", "fast"])
def test_conv_bad_input_raises_naming_the_argument(backend, xs, ws, param, match, pair):
    x = backend.asarray(np.zeros(xs))
    w = backend.asarray(np.zeros(ws))
    b = backend.asarray(np.zeros(ws[0]))
    forward = getattr(conv_layers, f"conv_forward_{pair}")
    if match is None:
        forward(x, w, b, param)
        return
    with pytest.raises(ValueError, match=match):
        forward(x, w, b, param)


@pytest.mark.parametrize(
    "xs,param,match",
    [
        ((1, 1, 5, 4), {"pool_height": 2, "pool_width": 2, "stride": 2}, r"pool height of 2 does not tile .* 5"),
        ((1, 1, 4, 4), {"pool_height": 2, "pool_width": 2, "stride": -1}, r"pool_param\['stride'\]"),
        ((1, 1, 4, 4), {"pool_height": 2, "pool_width": 5, "stride": 1}, r"pool width of 5"),
        ((1, 4, 4), {"pool_height": 2, "pool_width": 2, "stride": 2}, r"x: expected a 4-D"),
    ],
)
@pytest.mark.parametrize("pair", ["naive", "fast"])
def test_pool_bad_input_raises_naming_the_argument(backend, xs, param, match, pair):
    with pytest.raises(ValueError, match=match):
        getattr(conv_layers, f"max_pool_forward_{pair}")(backend.asarray(np.zeros(xs)), param)


def test_groupnorm_bad_groups_and_shapes(backend):
    x = backend.asarray(np.zeros((2, 6, 3, 3)))
    g, b = backend.asarray(np.ones(6)), backend.asarray(np.zeros(6))
    for G in (4, 0, 2.0, True):
        with pytest.raises(ValueError, match=r"G: expected a positive integer that divides the C = 6"):
            bn_layers.spatial_groupnorm_forward(x, g, b, G, {})
    with pytest.raises(ValueError, match=r"gamma: expected shape \(6,\)"):
        bn_layers.spatial_groupnorm_forward(x, backend.asarray(np.ones((1, 6, 1, 1))), b, 2, {})
    with pytest.raises(ValueError, match=r"x: expected a 4-D"):
        bn_layers.spatial_batchnorm_forward(backend.asarray(np.zeros((2, 6))), g, b, {"mode": "train"})
