"""xpdl.backends.cpu_kernels.warm_up: it compiles exactly what a default run calls."""

from __future__ import annotations

import numpy as np
import pytest

from xpdl.backends import numpy_backend as nb

numba = pytest.importorskip("numba")


def test_warm_up_compiles_the_signatures_a_default_step_calls():
    """Every warm-up signature is one a batch-norm + dropout + Adam float32 step uses: nothing compiled in vain."""
    import xpdl
    from xpdl.backends import cpu_kernels

    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 12)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    net = xpdl.FullyConnectedNet(
        input_dim=12,
        hidden_dims=[8, 8],
        num_classes=3,
        dropout=0.8,
        use_batchnorm=True,
        dtype="float32",
        seed=0,
        backend=nb.NumpyBackend(),
    )
    data = {"X_train": X, "y_train": y, "X_val": X[:8], "y_val": y[:8]}
    tr = xpdl.Trainer(net, data, update_rule="adam", batch_size=16, verbose=False, seed=0)
    tr.step(X[:16], y[:16])
    for name, args in cpu_kernels._default_run_arguments().items():
        kernel = getattr(cpu_kernels, name)
        wanted = tuple(numba.typeof(a) for a in args)
        assert wanted in kernel.signatures, (name, wanted, kernel.signatures)


def test_warm_up_runs_every_kernel():
    from xpdl.backends import cpu_kernels

    cpu_kernels.warm_up()  # compiled or loaded; no error
