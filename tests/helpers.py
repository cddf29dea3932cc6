"""Small helpers shared by the tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from xpdl.backend import to_numpy
from xpdl.gradient_check import rel_error


def host(a: Any) -> np.ndarray:
    return np.asarray(to_numpy(a))


def assert_close(actual: Any, desired: Any, rtol: float = 1e-7, atol: float = 0.0) -> None:
    np.testing.assert_allclose(host(actual), host(desired), rtol=rtol, atol=atol)


GRAD_ERRORS: list[tuple[float, str]] = []


def assert_grad_close(numeric: Any, analytic: Any, rel: float = 1e-7, abs_floor: float = 1e-8,
                      what: str = "") -> float:
    """cs231n-style check: relative error below ``rel`` unless both are ~0 (absolute error below ``abs_floor``).

    Returns the relative error.
    """
    err = rel_error(numeric, analytic)
    GRAD_ERRORS.append((err, what))
    abs_err = float(np.max(np.abs(host(numeric) - host(analytic)))) if host(numeric).size else 0.0
    assert err < rel or abs_err < abs_floor, f"relative error {err:.3g}, absolute error {abs_err:.3g}"
    return err
