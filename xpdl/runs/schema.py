"""A small declarative schema for JSON documents read from untrusted files (stdlib only).

A schema is a tree of nodes (:class:`Int`, :class:`Number`, :class:`Str`,
:class:`Bool`, :class:`Nullable`, :class:`ListOf`, :class:`Obj`, :class:`MapOf`,
:class:`AnyJSON`); ``node.check(value, where)`` returns the value or raises
:class:`SchemaError` naming the field (``counters.t``, ``history.loss_history[3]``),
what was expected and what came. Booleans are never numbers, NaN and infinity are
never numbers, and every container has a bounded length and depth, so a checked
document can be used field by field without further tests.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class SchemaError(ValueError):
    """A JSON value does not fit its schema; ``where`` is the dotted path of the field."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where or 'the document'}: {message}")
        self.where = where


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


class Node:
    """A schema node: :meth:`check` returns the (normalized) value or raises :class:`SchemaError`."""

    def check(self, value: Any, where: str = "") -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Node):
    """A JSON integer (not a boolean) in ``[min, max]``."""

    min: int | None = None
    max: int | None = None

    def check(self, value: Any, where: str = "") -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(where, f"expected an integer{self._range()}, got {_show(value)}")
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise SchemaError(where, f"expected an integer{self._range()}, got {_show(value)}")
        return value

    def _range(self) -> str:
        if self.min is not None and self.max is not None:
            return f" in [{self.min}, {self.max}]"
        return f" >= {self.min}" if self.min is not None else (f" <= {self.max}" if self.max is not None else "")


@dataclass(frozen=True)
class Number(Node):
    """A finite JSON number (int or float, not a boolean), ``> gt`` / ``>= ge`` / ``<= le`` when given."""

    gt: float | None = None
    ge: float | None = None
    le: float | None = None

    def check(self, value: Any, where: str = "") -> float | int:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        ok = ok and (self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
        ok = ok and (self.le is None or value <= self.le)
        if not ok:
            raise SchemaError(where, f"expected a finite number{self._range()}, got {_show(value)}")
        return value

    def _range(self) -> str:
        parts = [
            f"> {self.gt:g}" if self.gt is not None else "",
            f">= {self.ge:g}" if self.ge is not None else "",
            f"<= {self.le:g}" if self.le is not None else "",
        ]
        return "".join(f" {p}" for p in parts if p)


@dataclass(frozen=True)
class Str(Node):
    """A JSON string of at most ``max_len`` characters, one of ``choices`` or matching ``pattern`` when given."""

    choices: Sequence[str] | None = None
    pattern: str | None = None
    max_len: int = 1000

    def check(self, value: Any, where: str = "") -> str:
        if not isinstance(value, str) or len(value) > self.max_len:
            raise SchemaError(where, f"expected a string of at most {self.max_len} characters, got {_show(value)}")
        if self.choices is not None and value not in self.choices:
            raise SchemaError(where, f"expected one of {list(self.choices)}, got {_show(value)}")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise SchemaError(where, f"expected a string matching {self.pattern!r}, got {_show(value)}")
        return value


@dataclass(frozen=True)
class Bool(Node):
    """``true`` or ``false``."""

    def check(self, value: Any, where: str = "") -> bool:
        if not isinstance(value, bool):
            raise SchemaError(where, f"expected true or false, got {_show(value)}")
        return value


@dataclass(frozen=True)
class Nullable(Node):
    """``null`` or a value of ``node``."""

    node: Node

    def check(self, value: Any, where: str = "") -> Any:
        return None if value is None else self.node.check(value, where)


@dataclass(frozen=True)
class ListOf(Node):
    """A JSON array of ``item`` values, between ``min_len`` and ``max_len`` long."""

    item: Node
    max_len: int = 10_000_000
    min_len: int = 0

    def check(self, value: Any, where: str = "") -> list:
        if not isinstance(value, list):
            raise SchemaError(where, f"expected a list, got {_show(value)}")
        if not self.min_len <= len(value) <= self.max_len:
            raise SchemaError(where, f"expected a list of {self.min_len} to {self.max_len} items, got {len(value)}")
        return [self.item.check(v, f"{where}[{i}]") for i, v in enumerate(value)]


@dataclass(frozen=True)
class Obj(Node):
    """A JSON object with the named ``fields``; those in ``required`` must be present.

    Other keys are refused, unless ``extra`` is given: then keys of up to 100 letters,
    digits and underscores may hold ``extra`` values (room for fields a later version adds).
    """

    fields: Mapping[str, Node]
    required: frozenset[str] | set[str] = field(default_factory=frozenset)
    extra: Node | None = None

    def check(self, value: Any, where: str = "") -> dict:
        if not isinstance(value, dict):
            raise SchemaError(where, f"expected an object, got {_show(value)}")
        missing = sorted(set(self.required) - set(value))
        if missing:
            raise SchemaError(_join(where, missing[0]), "missing")
        unknown = sorted(
            k
            for k in set(value) - set(self.fields)
            if self.extra is None or not re.fullmatch(r"\w{1,100}", k, re.ASCII)
        )
        if unknown:
            raise SchemaError(_join(where, unknown[0]), f"unknown field; expected one of {sorted(self.fields)}")
        return {k: self.fields.get(k, self.extra).check(v, _join(where, k)) for k, v in value.items()}


@dataclass(frozen=True)
class MapOf(Node):
    """A JSON object of at most ``max_len`` keys matching ``key_pattern``, every value a ``value`` node."""

    value: Node
    key_pattern: str = r".{1,200}"
    max_len: int = 10_000

    def check(self, value: Any, where: str = "") -> dict:
        if not isinstance(value, dict):
            raise SchemaError(where, f"expected an object, got {_show(value)}")
        if len(value) > self.max_len:
            raise SchemaError(where, f"expected at most {self.max_len} keys, got {len(value)}")
        for k in value:
            if not re.fullmatch(self.key_pattern, k):
                raise SchemaError(_join(where, k), f"expected a key matching {self.key_pattern!r}")
        return {k: self.value.check(v, _join(where, k)) for k, v in value.items()}


@dataclass(frozen=True)
class AnyJSON(Node):
    """Any JSON value nested at most ``max_depth`` containers deep, with finite numbers only."""

    max_depth: int = 8

    def check(self, value: Any, where: str = "") -> Any:
        stack = [(value, where, 0)]
        while stack:
            v, w, depth = stack.pop()
            if isinstance(v, (dict, list)):
                if depth >= self.max_depth:
                    raise SchemaError(w, f"nested deeper than {self.max_depth} levels")
                items = v.items() if isinstance(v, dict) else enumerate(v)
                stack.extend((x, _join(w, str(k)) if isinstance(v, dict) else f"{w}[{k}]", depth + 1) for k, x in items)
            elif isinstance(v, float) and not math.isfinite(v):
                raise SchemaError(w, f"expected a finite number, got {v}")
        return value


@dataclass(frozen=True)
class Check(Node):
    """``node``, then ``test(value)`` which returns ``""`` when the value is fine, else what was expected."""

    node: Node
    test: Callable[[Any], str]

    def check(self, value: Any, where: str = "") -> Any:
        value = self.node.check(value, where)
        expected = self.test(value)
        if expected:
            raise SchemaError(where, f"expected {expected}, got {_show(value)}")
        return value
