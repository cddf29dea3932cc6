"""First-order update rules, written once against ``xp``.

A rule is an :class:`UpdateRule` object that declares its hyperparameters with
their defaults (:attr:`UpdateRule.defaults`), the state arrays it keeps per
parameter (:attr:`UpdateRule.state_keys`, zeros like ``w`` at first), the step
scalars it derives from its config (:meth:`UpdateRule.scalars`, which also
advances step counters such as Adam's ``t``) and one reference step over
``(w, g, state, scalars)`` (:meth:`UpdateRule.reference`). A backend may run a
rule as one compiled in-place kernel that takes the same scalars
(:meth:`xpdl.backends.Backend.update`); a rule without one runs its reference
step everywhere.

The seed's functional API stays: ``next_w, config = rule(w, dw, config=None)``
for ``sgd``, ``sgd_momentum``, ``rmsprop``, ``adam`` and ``adamw``:

- w: current weights (any shape); dw: gradient of the same shape, dtype and device.
- config: dict of hyperparameters and state; missing entries get defaults, and
  state (velocity, cache, m, v) is created as zeros like ``w`` on w's device.

Rules return a new array and never write into ``w`` or ``dw``.

Adding a rule: one subclass here, registered in :data:`RULES`; optionally a
kernel beside its siblings in :mod:`xpdl.backends.cpu_kernels` / :mod:`xpdl.backends.cuda_kernels`.
"""

from __future__ import annotations

import math
from typing import Any

from xpdl.arrays import namespace


def _positive(value: float) -> bool:
    return value > 0


def _nonnegative(value: float) -> bool:
    return value >= 0


def _fraction(value: float) -> bool:
    return 0 <= value < 1


#: What each hyperparameter must satisfy, and how the error says it.
HYPERPARAMETER_CHECKS = {
    "learning_rate": (_nonnegative, "a finite number >= 0"),
    "momentum": (_fraction, "a number in [0, 1)"),
    "decay_rate": (_fraction, "a number in [0, 1)"),
    "beta1": (_fraction, "a number in [0, 1)"),
    "beta2": (_fraction, "a number in [0, 1)"),
    "epsilon": (_positive, "a finite number > 0"),
    "weight_decay": (_nonnegative, "a finite number >= 0"),
}


class UpdateRule:
    """One first-order update rule (see the module docstring). Subclasses set the class attributes."""

    #: The rule's name in :data:`RULES`, ``Trainer(update_rule=...)`` and checkpoints.
    name: str = ""
    #: Hyperparameters (and step counters) with their defaults.
    defaults: dict[str, Any] = {}
    #: Names of the per-parameter state arrays, in the order kernels take them.
    state_keys: tuple[str, ...] = ()

    def scalars(self, config: dict) -> tuple[float, ...]:
        """The step's scalars from ``config`` (defaults filled), advancing step counters in ``config``."""
        return (float(config["learning_rate"]),)

    def reference(self, xp: Any, w: Any, g: Any, state: tuple, s: tuple[float, ...]) -> tuple[Any, tuple]:
        """One step in ``xp``: returns the new ``w`` and the new state arrays (new arrays, inputs unchanged)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- config
    def fill_defaults(self, config: dict | None) -> dict:
        """``config`` (a new dict for None) with this rule's defaults set where missing."""
        if config is None:
            config = {}
        for k, v in self.defaults.items():
            config.setdefault(k, v)
        return config

    def check_config(self, config: dict, where: str = "updater_config") -> None:
        """Refuse unknown keys and out-of-range hyperparameters, naming the key and what was expected."""
        if not isinstance(config, dict):
            raise TypeError(f"{where}: expected a dict, got {type(config).__name__}")
        known = (*self.defaults, *self.state_keys)
        for key, value in config.items():
            if key not in known:
                raise ValueError(
                    f"{where}: unknown key {key!r} for update rule {self.name!r}; known keys: {', '.join(known)}"
                )
            if key in HYPERPARAMETER_CHECKS:
                ok, expected = HYPERPARAMETER_CHECKS[key]
                if (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or not math.isfinite(value)
                    or not ok(value)
                ):
                    raise ValueError(f"{where}[{key!r}]: expected {expected}, got {value!r}")
        t = config.get("t", 0)
        if "t" in self.defaults and (isinstance(t, bool) or not isinstance(t, int) or t < 0):
            raise ValueError(f"{where}['t']: expected an int >= 0, got {t!r}")

    def state(self, config: dict, w: Any) -> tuple:
        """The state arrays in ``config``, created as zeros like ``w`` where missing; each must match w."""
        arrays = []
        for key in self.state_keys:
            if config.get(key) is None:
                config[key] = namespace(w=w).zeros_like(w)
            if type(config[key]) is not type(w):  # another library or device: say which (same type: a step's fast path)
                namespace(w=w, **{f"config['{key}']": config[key]})
            if tuple(config[key].shape) != tuple(w.shape):
                raise ValueError(
                    f"config['{key}']: expected shape {tuple(w.shape)} like w, got {tuple(config[key].shape)}"
                )
            arrays.append(config[key])
        return tuple(arrays)

    # ---------------------------------------------------------------- the seed's API
    def __call__(self, w: Any, dw: Any, config: dict | None = None) -> tuple[Any, dict]:
        """``next_w, config``: one reference step; ``config`` gets the new state and counters."""
        config = self.fill_defaults(config)
        xp = namespace(w=w, dw=dw)
        state = self.state(config, w)
        next_w, new_state = self.reference(xp, w, dw, state, self.scalars(config))
        config.update(zip(self.state_keys, new_state))
        return next_w, config


class SGD(UpdateRule):
    """Vanilla SGD: ``w - learning_rate * dw``. Config: learning_rate (1e-2)."""

    name = "sgd"
    defaults = {"learning_rate": 1e-2}

    def reference(self, xp, w, g, state, s):
        (lr,) = s
        return w - lr * g, ()


class SGDMomentum(UpdateRule):
    """SGD with momentum: ``v = momentum * v - learning_rate * dw; w + v``.

    Config: learning_rate (1e-2), momentum (0.9), velocity (zeros like w).
    """

    name = "sgd_momentum"
    defaults = {"learning_rate": 1e-2, "momentum": 0.9}
    state_keys = ("velocity",)

    def scalars(self, config):
        return float(config["learning_rate"]), float(config["momentum"])

    def reference(self, xp, w, g, state, s):
        lr, mu = s
        v = mu * state[0] - lr * g
        return w + v, (v,)


class RMSProp(UpdateRule):
    """RMSProp: ``cache = decay * cache + (1 - decay) * dw**2; w - lr * dw / (sqrt(cache) + eps)``.

    Config: learning_rate (1e-2), decay_rate (0.99), epsilon (1e-8), cache (zeros like w).
    """

    name = "rmsprop"
    defaults = {"learning_rate": 1e-2, "decay_rate": 0.99, "epsilon": 1e-8}
    state_keys = ("cache",)

    def scalars(self, config):
        return float(config["learning_rate"]), float(config["decay_rate"]), float(config["epsilon"])

    def reference(self, xp, w, g, state, s):
        lr, decay, eps = s
        cache = decay * state[0] + (1 - decay) * (g * g)
        return w - lr * g / (xp.sqrt(cache) + eps), (cache,)


class Adam(UpdateRule):
    """Adam with bias correction (Kingma & Ba, 2015).

    ``t += 1; m = b1*m + (1-b1)*dw; v = b2*v + (1-b2)*dw**2;
    w - lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)``.

    Config: learning_rate (1e-3), beta1 (0.9), beta2 (0.999), epsilon (1e-8),
    m and v (zeros like w), t (0). Scalars: ``(lr, b1, b2, eps, 1 - b1**t, 1 - b2**t)``.
    """

    name = "adam"
    defaults = {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "t": 0}
    state_keys = ("m", "v")

    def scalars(self, config):
        config["t"] = t = int(config["t"]) + 1
        b1, b2 = float(config["beta1"]), float(config["beta2"])
        return float(config["learning_rate"]), b1, b2, float(config["epsilon"]), 1.0 - b1**t, 1.0 - b2**t

    def moments(self, xp, g, state, s):
        """The updated first and second moments ``m, v``."""
        _, b1, b2 = s[:3]
        return b1 * state[0] + (1 - b1) * g, b2 * state[1] + (1 - b2) * (g * g)

    def reference(self, xp, w, g, state, s):
        lr, _, _, eps, c1, c2 = s[:6]
        m, v = self.moments(xp, g, state, s)
        return w - lr * (m / c1) / (xp.sqrt(v / c2) + eps), (m, v)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as ``torch.optim.AdamW``.

    ``w = w * (1 - lr * weight_decay)``, then the moments and the step as
    ``torch.optim.AdamW``: ``w - (lr / (1 - b1**t)) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)``.

    Config: Adam's, plus weight_decay (1e-2, PyTorch's default). Scalars: Adam's
    followed by ``weight_decay``.
    """

    name = "adamw"
    defaults = {**Adam.defaults, "weight_decay": 1e-2}

    def scalars(self, config):
        return (*super().scalars(config), float(config["weight_decay"]))

    def reference(self, xp, w, g, state, s):
        lr, _, _, eps, c1, c2, wd = s
        decayed = w * (1 - lr * wd)
        m, v = self.moments(xp, g, state, s)
        return decayed - (lr / c1) * m / (xp.sqrt(v) / math.sqrt(c2) + eps), (m, v)


#: Every rule by name.
RULES: dict[str, UpdateRule] = {r.name: r for r in (SGD(), SGDMomentum(), RMSProp(), Adam(), AdamW())}
UPDATE_RULES = tuple(RULES)
#: Hyperparameter defaults of each rule (views of :data:`RULES`).
DEFAULTS = {name: dict(rule.defaults) for name, rule in RULES.items()}
#: The state arrays each rule keeps in its config (views of :data:`RULES`).
STATE_KEYS = {name: rule.state_keys for name, rule in RULES.items()}

sgd = RULES["sgd"]
sgd_momentum = RULES["sgd_momentum"]
rmsprop = RULES["rmsprop"]
adam = RULES["adam"]
adamw = RULES["adamw"]


def fill_defaults(rule: str, config: dict | None) -> dict:
    """``config`` (a new dict for None) with the defaults of rule ``rule`` set where missing."""
    return get_rule(rule).fill_defaults(config)


def get_rule(name: Any) -> UpdateRule:
    """The rule called ``name`` (an :class:`UpdateRule` passes through); ValueError listing the known rules."""
    if isinstance(name, UpdateRule):
        return name
    if not isinstance(name, str) or name not in RULES:
        raise ValueError(f"update_rule: expected one of {', '.join(UPDATE_RULES)}, got {name!r}")
    return RULES[name]


def get_update_rule(name: Any) -> Any:
    """The update function called ``name`` (a callable passes through); ValueError listing the known rules."""
    if callable(name) and not isinstance(name, str):
        return name
    return get_rule(name)
