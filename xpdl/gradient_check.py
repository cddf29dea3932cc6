"""Numerical gradients by centred differences, for checking backward passes (cs231n helpers).

Work on arrays of any backend: ``x`` is perturbed in place one element at a time
(``x[idx] = value``, which NumPy, CuPy and the Array API all support) and
restored afterwards. Use float64 arrays; results are host NumPy arrays.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from xpdl.host import to_numpy


def _indices(shape: tuple[int, ...]) -> Any:
    return itertools.product(*(range(s) for s in shape))


def eval_numerical_gradient(f: Callable[[Any], Any], x: Any, verbose: bool = True, h: float = 1e-5) -> np.ndarray:
    """Gradient of scalar ``f`` at ``x``: ``(f(x + h e_i) - f(x - h e_i)) / 2h`` for every element i.

    ``f`` takes ``x`` (and may ignore it, reading ``x`` through a closure); ``x`` is
    modified in place during the evaluation and restored. Returns a NumPy array
    of x's shape.
    """
    grad = np.zeros(tuple(x.shape), dtype=np.float64)
    for idx in _indices(tuple(x.shape)):
        old = float(x[idx])
        x[idx] = old + h
        fxph = float(f(x))
        x[idx] = old - h
        fxmh = float(f(x))
        x[idx] = old
        grad[idx] = (fxph - fxmh) / (2 * h)
        if verbose:
            print(idx, grad[idx])
    return grad


def eval_numerical_gradient_array(f: Callable[[Any], Any], x: Any, df: Any, h: float = 1e-5) -> np.ndarray:
    """Gradient of ``sum(f(x) * df)`` at ``x`` for an array-valued ``f``; a NumPy array of x's shape."""
    df_host = to_numpy(df)
    grad = np.zeros(tuple(x.shape), dtype=np.float64)
    for idx in _indices(tuple(x.shape)):
        old = float(x[idx])
        x[idx] = old + h
        pos = to_numpy(f(x)).copy()
        x[idx] = old - h
        neg = to_numpy(f(x)).copy()
        x[idx] = old
        grad[idx] = np.sum((pos - neg) * df_host) / (2 * h)
    return grad


def rel_error(x: Any, y: Any) -> float:
    """Largest elementwise relative error ``|x - y| / max(1e-8, |x| + |y|)`` between two arrays of any backend."""
    a = np.asarray(to_numpy(x), dtype=np.float64)
    b = np.asarray(to_numpy(y), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"x and y: expected the same shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))
