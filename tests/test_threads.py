"""The thread policy (xpdl.threads) and the environment ranks and workers get (xpdl.parallel.launch)."""

from __future__ import annotations

import numpy as np
import pytest

from xpdl import threads
from xpdl.parallel import launch


def test_budget_is_xpdl_threads_else_the_cores():
    assert threads.thread_budget({}, cores=6) == 6
    assert threads.thread_budget({"XPDL_THREADS": "3"}, cores=6) == 3
    assert threads.thread_budget({"XPDL_THREADS": " "}, cores=6) == 6


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5"])
def test_malformed_xpdl_threads_names_the_variable(raw):
    with pytest.raises(ValueError, match="XPDL_THREADS"):
        threads.thread_budget({"XPDL_THREADS": raw})


def test_user_blas_settings_are_left_alone_unless_xpdl_threads_is_set():
    assert threads.manages_blas({})
    for name in threads.USER_BLAS_VARIABLES:
        assert not threads.manages_blas({name: "2"})
        assert threads.manages_blas({name: "2", "XPDL_THREADS": "2"})


def test_small_products():
    assert threads.is_small(1, 1, threads.SMALL_PRODUCT - 1)
    assert not threads.is_small(1, 1, threads.SMALL_PRODUCT)
    assert not threads.is_small(256, 3072, 1024)


class _Recorder:
    def __init__(self):
        self.calls = []

    def set_num_threads(self, n):
        self.calls.append(n)


def test_small_nets_run_on_one_thread_large_ones_on_the_budget():
    bt = threads.BlasThreads({"XPDL_THREADS": "2"})
    rec = _Recorder()
    bt._controllers = [rec]
    small, large = (64, 64, 256), (256, 3072, 1024)
    for _ in range(10):  # a small net: one thread, set once
        bt.for_product(*small)
    assert rec.calls == [1]
    for _ in range(3):  # a large net: its small products stay on the budget too
        bt.for_product(*large)
        bt.for_product(*small)
    assert rec.calls == [1, 2]
    for _ in range(threads.SMALL_STREAK):  # then a small net again
        bt.for_product(*small)
    assert rec.calls == [1, 2, 1]


def test_blas_threads_does_nothing_when_the_user_chose():
    bt = threads.BlasThreads({"OPENBLAS_NUM_THREADS": "2"})
    assert bt._blas() == []
    bt.for_product(1024, 1024, 1024)  # no library to call, no error


def test_matmul_is_numpy_matmul():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 7)), rng.standard_normal((7, 3))
    out = np.empty((5, 3))
    assert threads.matmul(a, b, out) is out
    np.testing.assert_array_equal(out, np.matmul(a, b))
    at = rng.standard_normal((7, 5)).T  # a transposed view, as the backward pass passes
    np.testing.assert_allclose(threads.matmul(at, b, np.empty((5, 3))), at @ b, rtol=1e-12)


def test_ranks_and_workers_share_the_budget(monkeypatch):
    monkeypatch.delenv("XPDL_THREADS", raising=False)
    env = launch.thread_environment(2, 2)
    assert env["XPDL_THREADS"] == env["OPENBLAS_NUM_THREADS"] == env["NUMBA_NUM_THREADS"] == "1"
    assert launch.thread_environment(3, 8)["XPDL_THREADS"] == "2"
    monkeypatch.setenv("XPDL_THREADS", "4")  # the user's budget is shared, not the core count
    assert launch.thread_environment(2, 16)["XPDL_THREADS"] == "2"


def test_malformed_budget_falls_back_to_the_cores(capsys):
    bt = threads.BlasThreads({"XPDL_THREADS": "lots"})
    assert bt.budget == threads.usable_cores()
    assert "XPDL_THREADS" in capsys.readouterr().err
