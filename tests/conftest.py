"""Backend parameterization: every test that takes ``backend`` runs on each available backend.

numpy and array_api_strict always run; cupy runs where a CUDA device works and is
skipped with the reason otherwise. Restrict with ``--backend NAME`` (repeatable)
or ``XPDL_TEST_BACKENDS=numpy,cupy``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from xpdl.backends import get_backend, probe_cupy

ALL_BACKENDS = ("numpy", "array_api_strict", "cupy")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        action="append",
        default=None,
        choices=ALL_BACKENDS,
        help="run backend-parameterized tests on this backend only (repeatable)",
    )


def selected_backends(config: pytest.Config) -> tuple[str, ...]:
    chosen = config.getoption("--backend")
    if chosen:
        return tuple(chosen)
    env = os.environ.get("XPDL_TEST_BACKENDS")
    if env:
        return tuple(b.strip() for b in env.split(",") if b.strip())
    return ALL_BACKENDS


FLOAT_DTYPES = ("float64", "float32")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parameterize ``backend_name`` over the selected backends and ``dtype`` over both float dtypes.

    A test taking both runs on every (backend, dtype) pair, as scikit-learn's array API tests do.
    """
    if "backend_name" in metafunc.fixturenames:
        metafunc.parametrize("backend_name", selected_backends(metafunc.config))
    explicit = [m.args[0] for m in metafunc.definition.iter_markers("parametrize")]
    named = {n.strip() for a in explicit for n in (a.split(",") if isinstance(a, str) else a)}
    if "dtype" in metafunc.fixturenames and "dtype" not in named:
        metafunc.parametrize("dtype", FLOAT_DTYPES)


@pytest.fixture
def backend(backend_name: str):
    """The :class:`xpdl.backends.Backend` under test; cupy is skipped with the reason where it cannot run."""
    if backend_name == "cupy":
        why = probe_cupy(0)
        if why:
            pytest.skip(f"cupy backend not testable here: {why}")
    return get_backend(backend_name)


@pytest.fixture
def other_backend(backend):
    """A backend other than ``backend`` to compare it with: NumPy for every other one, array_api_strict for NumPy."""
    return get_backend("array_api_strict" if backend.name == "numpy" else "numpy")


def float_tol(dtype: str) -> float:
    """Relative tolerance about 100 x machine epsilon of ``dtype``."""
    return 100 * float(np.finfo(dtype).eps)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print the skip reasons once each, with their counts, and the largest gradient-check error."""
    from helpers import GRAD_ERRORS

    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"skipped {count}: {reason}")

    if GRAD_ERRORS:
        worst = max(GRAD_ERRORS, key=lambda e: e[0])
        terminalreporter.write_line(
            f"gradient checks: {len(GRAD_ERRORS)} arrays, largest relative error {worst[0]:.2e} ({worst[1]})"
        )
