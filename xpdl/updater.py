"""First-order update rules, written once against ``xp``.

Each rule has the form ``next_w, config = rule(w, dw, config=None)``:

- w: current weights (any shape); dw: gradient of the same shape, dtype and device.
- config: dict of hyperparameters and state; missing entries get defaults, and
  state (velocity, cache, m, v) is created as zeros like ``w`` on w's device.

Rules return a new array and never write into ``w`` or ``dw``.
"""

from __future__ import annotations

from typing import Any

from xpdl.arrays import namespace

UPDATE_RULES = ("sgd", "sgd_momentum", "rmsprop", "adam")

#: Hyperparameter defaults of each rule (filled into a config where missing).
DEFAULTS = {
    "sgd": {"learning_rate": 1e-2},
    "sgd_momentum": {"learning_rate": 1e-2, "momentum": 0.9},
    "rmsprop": {"learning_rate": 1e-2, "decay_rate": 0.99, "epsilon": 1e-8},
    "adam": {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "t": 0},
}

#: The state arrays each rule keeps in its config (zeros like ``w`` at first).
STATE_KEYS = {"sgd": (), "sgd_momentum": ("velocity",), "rmsprop": ("cache",), "adam": ("m", "v")}


def fill_defaults(rule: str, config: dict | None) -> dict:
    """``config`` (a new dict for None) with the defaults of ``rule`` set where missing."""
    if config is None:
        config = {}
    for k, v in DEFAULTS[rule].items():
        config.setdefault(k, v)
    return config


def _state(config: dict, key: str, w: Any, xp: Any) -> Any:
    """``config[key]``, created as zeros like ``w`` when missing; it must match w's shape and device."""
    if config.get(key) is None:
        config[key] = xp.zeros_like(w)
    namespace(w=w, **{f"config['{key}']": config[key]})
    if tuple(config[key].shape) != tuple(w.shape):
        raise ValueError(f"config['{key}']: expected shape {tuple(w.shape)} like w, got {tuple(config[key].shape)}")
    return config[key]


def sgd(w: Any, dw: Any, config: dict | None = None) -> tuple[Any, dict]:
    """Vanilla SGD: ``w - learning_rate * dw``. Config: learning_rate (1e-2)."""
    config = fill_defaults("sgd", config)
    namespace(w=w, dw=dw)
    return w - config["learning_rate"] * dw, config


def sgd_momentum(w: Any, dw: Any, config: dict | None = None) -> tuple[Any, dict]:
    """SGD with momentum: ``v = momentum * v - learning_rate * dw; w + v``.

    Config: learning_rate (1e-2), momentum (0.9), velocity (zeros like w).
    """
    config = fill_defaults("sgd_momentum", config)
    xp = namespace(w=w, dw=dw)
    v = config["momentum"] * _state(config, "velocity", w, xp) - config["learning_rate"] * dw
    config["velocity"] = v
    return w + v, config


def rmsprop(w: Any, dw: Any, config: dict | None = None) -> tuple[Any, dict]:
    """RMSProp: ``cache = decay * cache + (1 - decay) * dw**2; w - lr * dw / (sqrt(cache) + eps)``.

    Config: learning_rate (1e-2), decay_rate (0.99), epsilon (1e-8), cache (zeros like w).
    """
    config = fill_defaults("rmsprop", config)
    xp = namespace(w=w, dw=dw)
    decay = config["decay_rate"]
    cache = decay * _state(config, "cache", w, xp) + (1 - decay) * (dw * dw)
    config["cache"] = cache
    return w - config["learning_rate"] * dw / (xp.sqrt(cache) + config["epsilon"]), config


def adam(w: Any, dw: Any, config: dict | None = None) -> tuple[Any, dict]:
    """Adam with bias correction (Kingma & Ba, 2015).

    ``t += 1; m = b1*m + (1-b1)*dw; v = b2*v + (1-b2)*dw**2;
    w - lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)``.

    Config: learning_rate (1e-3), beta1 (0.9), beta2 (0.999), epsilon (1e-8),
    m and v (zeros like w), t (0).
    """
    config = fill_defaults("adam", config)
    xp = namespace(w=w, dw=dw)
    beta1, beta2 = config["beta1"], config["beta2"]
    m = beta1 * _state(config, "m", w, xp) + (1 - beta1) * dw
    v = beta2 * _state(config, "v", w, xp) + (1 - beta2) * (dw * dw)
    t = config["t"] + 1
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    config.update(m=m, v=v, t=t)
    return w - config["learning_rate"] * m_hat / (xp.sqrt(v_hat) + config["epsilon"]), config


def get_update_rule(name: Any) -> Any:
    """The update function called ``name``; ValueError listing the known rules otherwise."""
    if callable(name):
        return name
    if name not in UPDATE_RULES:
        raise ValueError(f"update_rule: expected one of {UPDATE_RULES}, got {name!r}")
    return globals()[name]
