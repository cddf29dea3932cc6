"""The search space of ``xpdl tune``: ``--search NAME=...`` specs and the fixed ``xpdl train`` options.

A spec names an ``xpdl train`` option without its dashes and gives either a range
``LOW..HIGH`` (optionally ``:log``), whose bounds are parsed with the option's own
argparse type (an int option gives an integer range, a float option a float
range), or choices ``A/B/C``, each checked with the option's type or choices.
Types and choices come from the training options themselves
(:func:`xpdl.training.options.add_train_options`), so a new train option is searchable without
changes here. Nothing in this module imports Optuna.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: ``xpdl train`` options that ``xpdl tune`` sets itself (per trial, or as its own options).
NOT_TUNABLE = ("help", "out", "resume", "quiet", "seed", "nproc")
#: ``xpdl train`` options that may be fixed for every trial but are not hyperparameters to search:
#: where and how a trial runs, not what it learns.
NOT_SEARCHABLE = ("backend", "data", "data-dir", "download", "checkpoint-every", "split-seed")
#: At most this many choices in one ``--search NAME=A/B/C`` (a search over more is a mistake).
MAX_CHOICES = 1000
#: Spellings of the two values of an on/off option (``--batchnorm`` / ``--no-batchnorm``).
SWITCH_VALUES = {"on": True, "true": True, "yes": True, "off": False, "false": False, "no": False}


class SearchSpaceError(ValueError):
    """A ``--search`` spec or a fixed option that cannot be used; the message is one line."""


def train_parser() -> argparse.ArgumentParser:
    """The parser of the training options (:func:`xpdl.training.options.train_parser`)."""
    from xpdl.training.options import train_parser as parser

    return parser()


def train_actions() -> dict[str, argparse.Action]:
    """The tunable ``xpdl train`` options: option name without dashes (``weight-scale``) -> argparse action."""
    out = {}
    for action in train_parser()._actions:
        if action.dest in NOT_TUNABLE or not action.option_strings:
            continue
        long = next(o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-"))
        out[long[2:]] = action
    return out


def is_switch(action: argparse.Action) -> bool:
    """Whether ``action`` is an on/off option (``--batchnorm`` / ``--no-batchnorm``, ``--download``)."""
    return action.nargs == 0


@dataclass(frozen=True)
class SearchParam:
    """One searched option.

    Attributes:
        name: the option without dashes, e.g. ``lr``; also the Optuna parameter name.
        spec: the text after ``NAME=`` as given, e.g. ``1e-4..1e-2:log``.
        kind: ``"float"``, ``"int"`` or ``"choice"``.
        low, high: range bounds (``kind`` float or int), None for choices.
        log: sample the range uniformly in log space.
        choices: the choice texts (``kind`` choice), e.g. ``("256,256", "512")``.
    """

    name: str
    spec: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.name}={self.spec}"

    def suggest(self, trial: Any) -> Any:
        """This parameter's value for the Optuna ``trial`` (a float, an int or a choice text)."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))


def _convert(action: argparse.Action, name: str, text: str) -> Any:
    """``text`` as option ``--name`` would read it; SearchSpaceError naming the option otherwise."""
    if is_switch(action):
        if text.lower() not in SWITCH_VALUES:
            raise SearchSpaceError(f"--search {name}: expected on or off, got {text!r}")
        return SWITCH_VALUES[text.lower()]
    if action.choices is not None and text not in action.choices:
        raise SearchSpaceError(f"--search {name}: expected one of {', '.join(map(str, action.choices))}, got {text!r}")
    if action.type is None:
        return text
    try:
        return action.type(text)
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise SearchSpaceError(f"--search {name}: {exc}") from None


def parse_search(text: str, actions: Mapping[str, argparse.Action] | None = None) -> SearchParam:
    """Parse ``NAME=LOW..HIGH[:log]`` or ``NAME=A/B/C`` against the ``xpdl train`` options.

    Raises:
        SearchSpaceError: unknown NAME, a bound or choice the option rejects, LOW >= HIGH,
            ``:log`` with LOW <= 0, or a range over an option that is not a number.
    """
    actions = train_actions() if actions is None else actions
    name, sep, spec = text.partition("=")
    name = name.strip().lstrip("-")
    if not sep or not name or not spec:
        raise SearchSpaceError(f"--search: expected NAME=LOW..HIGH[:log] or NAME=A/B/C, got {text!r}")
    if name not in actions or name in NOT_SEARCHABLE:
        train_options = {o.lstrip("-") for a in train_parser()._actions for o in a.option_strings}
        what = (
            "not a hyperparameter (give it as a fixed option)"
            if name in actions
            else "not a hyperparameter (xpdl tune sets it)"
            if name in train_options
            else "not an xpdl train option"
        )
        searchable = sorted(n for n in actions if n not in NOT_SEARCHABLE)
        raise SearchSpaceError(f"--search {name}: {what}; expected one of {', '.join(searchable)}")
    action = actions[name]
    if ".." in spec:
        return _parse_range(name, spec, action)
    if spec.count("/") >= MAX_CHOICES:
        raise SearchSpaceError(f"--search {name}: expected at most {MAX_CHOICES} choices, got {spec.count('/') + 1}")
    choices = tuple(c.strip() for c in spec.split("/"))
    if any(not c for c in choices) or len(set(choices)) != len(choices):
        raise SearchSpaceError(f"--search {name}: expected distinct non-empty choices A/B/C, got {spec!r}")
    for choice in choices:
        _convert(action, name, choice)
    return SearchParam(name, spec, "choice", choices=choices)


def _parse_range(name: str, spec: str, action: argparse.Action) -> SearchParam:
    body, _, scale = spec.partition(":")
    if scale not in ("", "log"):
        raise SearchSpaceError(f"--search {name}: expected LOW..HIGH or LOW..HIGH:log, got {spec!r}")
    low_text, _, high_text = body.partition("..")
    low, high = _convert(action, name, low_text.strip()), _convert(action, name, high_text.strip())
    kinds = {type(v) for v in (low, high)}
    if kinds not in ({int}, {float}):
        raise SearchSpaceError(
            f"--search {name}: a range needs a numeric option, --{name} takes "
            f"{action.metavar or 'a value'} (give choices A/B/C instead)"
        )
    if not low < high:
        raise SearchSpaceError(f"--search {name}: expected LOW < HIGH, got {spec!r}")
    if scale == "log" and low <= 0:
        raise SearchSpaceError(f"--search {name}: a log range needs LOW > 0, got {spec!r}")
    return SearchParam(name, spec, "int" if kinds == {int} else "float", low, high, log=scale == "log")


def parse_space(specs: Iterable[str] | Mapping[str, Any], fixed: Mapping[str, Any] = ()) -> list[SearchParam]:
    """Parse every spec (``"lr=1e-4..1e-2:log"`` strings, or a mapping ``{"lr": "1e-4..1e-2:log"}``).

    Raises:
        SearchSpaceError: a bad spec, a name searched twice, or a name also in ``fixed``
            (option names with dashes or underscores).
    """
    if isinstance(specs, Mapping):
        specs = [
            f"{k.replace('_', '-')}={'/'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
            for k, v in specs.items()
        ]
    actions = train_actions()
    space = [parse_search(s, actions) for s in specs]
    names = [p.name for p in space]
    for name in names:
        if names.count(name) > 1:
            raise SearchSpaceError(f"--search {name}: searched twice; give each option once")
        if name in {k.replace("_", "-") for k in fixed}:
            raise SearchSpaceError(
                f"--search {name}: also given as a fixed option --{name}; give it either fixed or searched"
            )
    if not space:
        raise SearchSpaceError("--search: expected at least one NAME=LOW..HIGH[:log] or NAME=A/B/C")
    return space


def fixed_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """Check fixed ``xpdl train`` settings (keys with dashes or underscores) and return them by option name.

    Values may be what the option parses to or its text (``hidden_dims=[64]`` or ``"64"``).

    Raises:
        SearchSpaceError: an unknown or untunable option, or a value the option rejects.
    """
    actions = train_actions()
    out = {}
    for key, value in values.items():
        name = key.replace("_", "-")
        if name not in actions:
            raise SearchSpaceError(
                f"{key}: not a fixed xpdl train option for tune; expected one of {', '.join(sorted(actions))}"
            )
        action = actions[name]
        if isinstance(value, str) or (is_switch(action) and not isinstance(value, bool)):
            value = _convert(action, name, str(value))
        elif isinstance(value, (list, tuple)):
            value = _convert(action, name, ",".join(map(str, value)))
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def option_argv(name: str, value: Any, actions: Mapping[str, argparse.Action] | None = None) -> list[str]:
    """The ``xpdl train`` arguments setting option ``name`` to ``value`` (parsed value or choice text)."""
    action = (train_actions() if actions is None else actions)[name]
    if is_switch(action):
        on = SWITCH_VALUES[value.lower()] if isinstance(value, str) else bool(value)
        if isinstance(action, argparse.BooleanOptionalAction):
            return [f"--{name}" if on else f"--no-{name}"]
        return [f"--{name}"] if on else []
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value)) or "none"
    return [f"--{name}", repr(value) if isinstance(value, float) else str(value)]


def option_value(name: str, value: Any, actions: Mapping[str, argparse.Action] | None = None) -> Any:
    """The parsed value of option ``name`` for ``value`` (a parsed value or a choice's text)."""
    action = (train_actions() if actions is None else actions)[name]
    if is_switch(action):
        return SWITCH_VALUES[value.lower()] if isinstance(value, str) else bool(value)
    if isinstance(value, str):
        return _convert(action, name, value)
    return list(value) if isinstance(value, tuple) else value


def options_argv(values: Mapping[str, Any]) -> list[str]:
    """:func:`option_argv` for every item of ``values`` (option name -> value), in order."""
    actions = train_actions()
    return [arg for name, value in values.items() for arg in option_argv(name, value, actions)]


def given_fixed(args: argparse.Namespace) -> dict[str, Any]:
    """The ``xpdl train`` options given on a ``xpdl tune`` command line: option name -> parsed value."""
    return {
        name: getattr(args, a.dest) for name, a in train_actions().items() if getattr(args, a.dest, None) is not None
    }
