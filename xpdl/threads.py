"""How many threads xpdl's CPU work uses: one policy for the BLAS, the compiled kernels, ranks and workers.

- **Budget.** ``XPDL_THREADS`` when set (a positive integer), else the cores this
  process may run on. ``xpdl train --nproc N`` and ``xpdl tune --workers N`` give each
  process ``budget // N`` (at least 1) through ``XPDL_THREADS`` and the BLAS/OpenMP
  variables (:func:`xpdl.parallel.launch.thread_environment`).
- **Matrix products.** A net whose products all have fewer than :data:`SMALL_PRODUCT`
  multiply-adds (``m * k * n``) runs them on one BLAS thread; once a larger product
  comes, every product runs on the whole budget (as before this policy), until
  :data:`SMALL_STREAK` small products in a row (a smaller net in the same process)
  bring it back to one. On small products a second thread saves little, its
  spinning between products takes a core from the kernels and from other
  processes, and on a busy machine a split product waits for its slowest thread;
  switching back and forth within a step of a large net measured no better than
  staying at the budget. Figures in ``docs/performance.md``.
- **Compiled kernels** (:mod:`xpdl.backends.cpu_kernels`, C++ built at install) run on the
  calling thread: they start no thread pool.
- **Hands off** when the user chose: with ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``,
  ``MKL_NUM_THREADS`` or ``BLIS_NUM_THREADS`` set and ``XPDL_THREADS`` not, xpdl never
  changes the BLAS thread count.

The BLAS is reached through threadpoolctl; without it (or without a BLAS it knows)
nothing is changed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

#: Products with fewer multiply-adds than this (``m * k * n``) are small.
SMALL_PRODUCT = 1 << 24

#: After a large product, this many small ones in a row go back to one BLAS thread.
SMALL_STREAK = 64

#: Variables by which a user sets the BLAS thread count; when one is set (and XPDL_THREADS is not),
#: xpdl leaves the BLAS alone.
USER_BLAS_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:
        return os.cpu_count() or 1


def env_threads(environ: Any = None) -> int | None:
    """``XPDL_THREADS`` as a positive integer, None when unset; ValueError naming it when malformed."""
    environ = os.environ if environ is None else environ
    raw = environ.get("XPDL_THREADS", "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"XPDL_THREADS: expected a positive integer, got {raw!r}")
    return value


def thread_budget(environ: Any = None, cores: int | None = None) -> int:
    """The threads this process may use: ``XPDL_THREADS`` when set, else the usable cores."""
    given = env_threads(environ)
    if given is not None:
        return given
    return usable_cores() if cores is None else cores


def manages_blas(environ: Any = None) -> bool:
    """False when the user set a BLAS/OpenMP thread count and not ``XPDL_THREADS``: their choice stands."""
    environ = os.environ if environ is None else environ
    if environ.get("XPDL_THREADS", "").strip():
        return True
    return not any(environ.get(name, "").strip() for name in USER_BLAS_VARIABLES)


def is_small(m: int, k: int, n: int) -> bool:
    """Whether an (m, k) @ (k, n) product is small (:data:`SMALL_PRODUCT`)."""
    return m * k * n < SMALL_PRODUCT


class BlasThreads:
    """Sets the BLAS thread count before each matrix product, calling the library only when it changes."""

    def __init__(self, environ: Any = None) -> None:
        try:
            self.budget = thread_budget(environ)
        except ValueError as exc:  # training goes on with the cores; the message names the variable
            print(f"xpdl: {exc}; using {usable_cores()} threads", file=sys.stderr)
            self.budget = usable_cores()
        self._controllers: list[Any] | None = None if manages_blas(environ) else []
        self.current: int | None = None
        self.small_streak = SMALL_STREAK  # small products in a row; a process starts on one thread

    def _blas(self) -> list[Any]:
        if self._controllers is None:
            try:
                from threadpoolctl import ThreadpoolController

                self._controllers = list(ThreadpoolController().select(user_api="blas").lib_controllers)
            except Exception:  # no threadpoolctl, or a BLAS it cannot drive: leave the BLAS as it is
                self._controllers = []
        return self._controllers

    def set(self, threads: int) -> None:
        """Use ``threads`` BLAS threads from now on (nothing happens when xpdl does not manage the BLAS)."""
        if threads == self.current:
            return
        self.current = threads
        for controller in self._blas():
            controller.set_num_threads(threads)

    def for_product(self, m: int, k: int, n: int) -> None:
        """Set the thread count for an (m, k) @ (k, n) product (the policy in the module docstring)."""
        if is_small(m, k, n):
            self.small_streak += 1
            if self.small_streak >= SMALL_STREAK:
                self.set(1)
        else:
            self.small_streak = 0
            self.set(self.budget)


_BLAS: BlasThreads | None = None


def blas() -> BlasThreads:
    """The process-wide :class:`BlasThreads` (made on first use, from the environment then)."""
    global _BLAS
    if _BLAS is None:
        _BLAS = BlasThreads()
    return _BLAS


def matmul(a: Any, b: Any, out: Any) -> Any:
    """``np.matmul(a, b, out=out)`` for 2-D NumPy arrays, on the BLAS threads the policy gives it."""
    blas().for_product(a.shape[0], a.shape[1], b.shape[1])
    return np.matmul(a, b, out=out)
