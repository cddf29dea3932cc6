"""Update rules: cs231n known answers, state on the weights' device and dtype, no writes into inputs."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, host

from xpdl import updater

N, D = 4, 5
W = np.linspace(-0.4, 0.6, num=N * D).reshape(N, D)
DW = np.linspace(-0.6, 0.4, num=N * D).reshape(N, D)
S1 = np.linspace(0.6, 0.9, num=N * D).reshape(N, D)
S2 = np.linspace(0.7, 0.5, num=N * D).reshape(N, D)


def test_sgd_momentum_known_answer(backend):
    config = {"learning_rate": 1e-3, "velocity": backend.asarray(S1)}
    next_w, config = updater.sgd_momentum(backend.asarray(W), backend.asarray(DW), config)
    expected_w = [
        [0.1406, 0.20738947, 0.27417895, 0.34096842, 0.40775789],
        [0.47454737, 0.54133684, 0.60812632, 0.67491579, 0.74170526],
        [0.80849474, 0.87528421, 0.94207368, 1.00886316, 1.07565263],
        [1.14244211, 1.20923158, 1.27602105, 1.34281053, 1.4096],
    ]
    expected_v = [
        [0.5406, 0.55475789, 0.56891579, 0.58307368, 0.59723158],
        [0.61138947, 0.62554737, 0.63970526, 0.65386316, 0.66802105],
        [0.68217895, 0.69633684, 0.71049474, 0.72465263, 0.73881053],
        [0.75296842, 0.76712632, 0.78128421, 0.79544211, 0.8096],
    ]
    assert_close(next_w, expected_w, rtol=1e-6, atol=1e-8)
    assert_close(config["velocity"], expected_v, rtol=1e-6, atol=1e-8)


def test_rmsprop_known_answer_with_epsilon_outside_the_root(backend):
    config = {"learning_rate": 1e-2, "cache": backend.asarray(S1)}
    next_w, config = updater.rmsprop(backend.asarray(W), backend.asarray(DW), config)
    expected_w = [
        [-0.39223849, -0.34037513, -0.28849239, -0.23659121, -0.18467247],
        [-0.132737, -0.08078555, -0.02881884, 0.02316247, 0.07515774],
        [0.12716641, 0.17918792, 0.23122175, 0.28326742, 0.33532447],
        [0.38739248, 0.43947102, 0.49155973, 0.54365823, 0.59576619],
    ]
    expected_cache = [
        [0.5976, 0.6126277, 0.6277108, 0.64284931, 0.65804321],
        [0.67329252, 0.68859723, 0.70395734, 0.71937285, 0.73484377],
        [0.75037008, 0.7659518, 0.78158892, 0.79728144, 0.81302936],
        [0.82883269, 0.84469141, 0.86060554, 0.87657507, 0.89259999],
    ]
    assert_close(next_w, expected_w, rtol=1e-6, atol=1e-8)
    assert_close(config["cache"], expected_cache, rtol=1e-6, atol=1e-8)


def test_rmsprop_epsilon_is_added_after_the_square_root(backend):
    """The seed computed sqrt(cache + eps): with cache 0 that divides by 1e-4 instead of 1e-8 + 0."""
    w, dw = backend.asarray(np.zeros(1)), backend.asarray(np.full(1, 1e-6))
    config = {"learning_rate": 1.0, "decay_rate": 1.0, "epsilon": 1e-8}
    next_w, _ = updater.rmsprop(w, dw, config)
    assert float(host(next_w)[0]) == pytest.approx(-1e-6 / 1e-8)


def test_adam_known_answer(backend):
    config = {"learning_rate": 1e-2, "m": backend.asarray(S1), "v": backend.asarray(S2), "t": 5}
    next_w, config = updater.adam(backend.asarray(W), backend.asarray(DW), config)
    expected_w = [
        [-0.40094747, -0.34836187, -0.29577703, -0.24319299, -0.19060977],
        [-0.1380274, -0.08544591, -0.03286534, 0.01971428, 0.0722929],
        [0.1248705, 0.17744702, 0.23002243, 0.28259667, 0.33516969],
        [0.38774145, 0.44031188, 0.49288093, 0.54544852, 0.59801459],
    ]
    expected_v = [
        [0.69966, 0.68908382, 0.67851319, 0.66794809, 0.65738853],
        [0.64683452, 0.63628604, 0.6257431, 0.61520571, 0.60467385],
        [0.59414753, 0.58362676, 0.57311152, 0.56260183, 0.55209767],
        [0.54159906, 0.53110598, 0.52061845, 0.51013645, 0.49966],
    ]
    expected_m = [
        [0.48, 0.49947368, 0.51894737, 0.53842105, 0.55789474],
        [0.57736842, 0.59684211, 0.61631579, 0.63578947, 0.65526316],
        [0.67473684, 0.69421053, 0.71368421, 0.73315789, 0.75263158],
        [0.77210526, 0.79157895, 0.81105263, 0.83052632, 0.85],
    ]
    assert_close(next_w, expected_w, rtol=1e-6, atol=1e-8)
    assert_close(config["v"], expected_v, rtol=1e-6, atol=1e-8)
    assert_close(config["m"], expected_m, rtol=1e-6, atol=1e-8)
    assert config["t"] == 6


def test_sgd_known_answer(backend):
    next_w, _ = updater.sgd(backend.asarray(W), backend.asarray(DW), {"learning_rate": 0.5})
    assert_close(next_w, W - 0.5 * DW, rtol=1e-15)


@pytest.mark.parametrize("rule", updater.UPDATE_RULES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_state_lives_with_the_weights_and_inputs_are_not_written(backend, rule, dtype):
    w, dw = backend.asarray(W, dtype=dtype), backend.asarray(DW, dtype=dtype)
    next_w, config = getattr(updater, rule)(w, dw, None)
    next_w, config = getattr(updater, rule)(next_w, dw, config)
    assert_close(w, W.astype(dtype))
    assert_close(dw, DW.astype(dtype))
    assert host(next_w).dtype == np.dtype(dtype)
    for key in ("velocity", "cache", "m", "v"):
        if key in config:
            assert backend.owns(config[key])
            assert host(config[key]).dtype == np.dtype(dtype)


def test_unknown_update_rule_is_refused():
    with pytest.raises(ValueError, match="update_rule.*'adagrad'"):
        updater.get_update_rule("adagrad")


@pytest.mark.parametrize("rule,key", [("sgd_momentum", "velocity"), ("rmsprop", "cache"), ("adam", "m")])
def test_state_of_the_wrong_shape_is_refused(backend, rule, key):
    config = {key: backend.asarray(np.zeros((2, 2)))}
    with pytest.raises(ValueError, match=rf"config\['{key}'\]: expected shape \(4, 5\)"):
        getattr(updater, rule)(backend.asarray(W), backend.asarray(DW), config)


def test_defaults_are_the_seed_defaults():
    assert updater.fill_defaults("adam", None) == {
        "learning_rate": 1e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "epsilon": 1e-8,
        "t": 0,
    }
    assert updater.fill_defaults("rmsprop", {"learning_rate": 5.0})["learning_rate"] == 5.0


# torch.optim.AdamW(lr=1e-2, weight_decay=0.1), one step from zero state on W, DW (torch 2.13, float64)
ADAMW_EXPECTED_W = [
    [-0.3896000002, -0.3370210528, -0.2844421055, -0.2318631581, -0.1792842108],
    [-0.1267052635, -0.0741263161, -0.0215473689, 0.0310315784, 0.0836105255],
    [0.1361894723, 0.1887684163, 0.2213473716, 0.273926317, 0.3265052639],
    [0.3790842111, 0.4316631583, 0.4842421056, 0.5368210529, 0.5894000002],
]


def test_adamw_known_answer_from_torch(backend):
    config = {"learning_rate": 1e-2, "weight_decay": 0.1}
    next_w, config = updater.adamw(backend.asarray(W), backend.asarray(DW), config)
    assert_close(next_w, ADAMW_EXPECTED_W, rtol=1e-8, atol=1e-9)
    assert config["t"] == 1
    assert_close(config["v"], 0.001 * DW**2, rtol=1e-12)


def test_adamw_decay_is_decoupled_from_the_gradient(backend):
    """With a zero gradient Adam leaves w alone while AdamW shrinks it by lr * weight_decay exactly."""
    w, zero = backend.asarray(W), backend.asarray(np.zeros_like(W))
    assert_close(updater.adam(w, zero, {"learning_rate": 0.1})[0], W, rtol=0)
    assert_close(updater.adamw(w, zero, {"learning_rate": 0.1, "weight_decay": 0.5})[0], W * (1 - 0.05), rtol=1e-15)


def test_adamw_equals_torch_over_several_steps():
    torch = pytest.importorskip("torch", reason="torch is not installed: the comparison with torch.optim.AdamW")
    rng = np.random.default_rng(0)
    w0, grads = rng.standard_normal((3, 4)), rng.standard_normal((6, 3, 4))
    p = torch.tensor(w0.copy(), requires_grad=True)
    opt = torch.optim.AdamW([p], lr=3e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.2)
    w, config = w0.copy(), {"learning_rate": 3e-2, "beta1": 0.8, "beta2": 0.95, "epsilon": 1e-6, "weight_decay": 0.2}
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
        w, config = updater.adamw(w, g, config)
    np.testing.assert_allclose(w, p.detach().numpy(), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(
    "config,match",
    [
        (
            {"learnin_rate": 1e-3},
            r"unknown key 'learnin_rate' for update rule 'adam'; known keys: learning_rate, beta1",
        ),
        ({"learning_rate": -1e-3}, r"\['learning_rate'\]: expected a finite number >= 0, got -0.001"),
        ({"learning_rate": "fast"}, r"\['learning_rate'\]: expected a finite number >= 0, got 'fast'"),
        ({"beta1": 1.0}, r"\['beta1'\]: expected a number in \[0, 1\), got 1.0"),
        ({"epsilon": float("nan")}, r"\['epsilon'\]: expected a finite number > 0, got nan"),
        ({"t": None}, r"\['t'\]: expected an int >= 0, got None"),
    ],
)
def test_bad_configs_are_named(config, match):
    with pytest.raises(ValueError, match=match):
        updater.get_rule("adam").check_config(config)


def test_every_rule_declares_its_defaults_and_state():
    for name, rule in updater.RULES.items():
        assert rule.name == name and "learning_rate" in rule.defaults
        assert updater.DEFAULTS[name] == rule.defaults and updater.STATE_KEYS[name] == rule.state_keys
