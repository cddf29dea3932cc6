"""Small helpers shared by the tests."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from xpdl.backends import dtype_name, to_numpy
from xpdl.gradient_check import rel_error


def host(a: Any) -> np.ndarray:
    return np.asarray(to_numpy(a))


def assert_close(actual: Any, desired: Any, rtol: float | None = None, atol: float = 0.0) -> None:
    """Namespace, dtype, shape, then values, as SciPy's ``xp_assert_close``.

    ``desired`` is an array (its namespace and dtype must be ``actual``'s; a host NumPy
    array stands for values only when ``actual`` lives elsewhere) or host data (a list or
    scalar: values and shape). ``rtol`` defaults to 100 x the machine epsilon of
    ``actual``'s dtype.
    """
    a = host(actual)
    if array_api_compat.is_array_api_obj(desired) and not (
        isinstance(desired, np.ndarray) and not isinstance(actual, np.ndarray)
    ):
        got, want = array_api_compat.array_namespace(actual), array_api_compat.array_namespace(desired)
        assert got.__name__ == want.__name__, f"namespace {got.__name__}, expected {want.__name__}"
        assert dtype_name(actual.dtype) == dtype_name(desired.dtype), (
            f"dtype {dtype_name(actual.dtype)}, expected {dtype_name(desired.dtype)}"
        )
    d = host(desired) if array_api_compat.is_array_api_obj(desired) else np.asarray(desired)
    assert a.shape == d.shape, f"shape {a.shape}, expected {d.shape}"
    if rtol is None:
        rtol = 100 * float(np.finfo(a.dtype).eps) if np.issubdtype(a.dtype, np.floating) else 0.0
    np.testing.assert_allclose(a, d, rtol=rtol, atol=atol)


GRAD_ERRORS: list[tuple[float, str]] = []


def assert_grad_close(numeric: Any, analytic: Any, rel: float = 1e-7, abs_floor: float = 1e-8, what: str = "") -> float:
    """cs231n-style check: relative error below ``rel`` unless both are ~0 (absolute error below ``abs_floor``).

    Returns the relative error.
    """
    err = rel_error(numeric, analytic)
    GRAD_ERRORS.append((err, what))
    abs_err = float(np.max(np.abs(host(numeric) - host(analytic)))) if host(numeric).size else 0.0
    assert err < rel or abs_err < abs_floor, f"relative error {err:.3g}, absolute error {abs_err:.3g}"
    return err


def run_cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    """Exit code (argparse's SystemExit included), stdout and stderr of ``xpdl argv``, run in this process."""
    from xpdl import cli

    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err
