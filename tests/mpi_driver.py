"""A small data-parallel training job for tests/test_distributed.py: run it alone or under ``mpiexec -n N``.

``python tests/mpi_driver.py OUT.npz [options]`` trains a net on synthetic data for a
few iterations; every rank saves its final state (weights, batch-norm statistics,
update-rule state, generator state, loss and accuracy histories) to ``OUT.npz``
with ``.rank<R>`` before the suffix. ``--fail-rank R --fail-at T`` raises an
exception in rank R at iteration T; ``--bench`` times steps of the medium net instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import xpdl
from xpdl.parallel import distributed


def synthetic(n: int, d: int, c: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * 2 + 0.5
    y = rng.integers(c, size=n)
    return {"X_train": X[: n - 40], "y_train": y[: n - 40], "X_val": X[n - 40 :], "y_val": y[n - 40 :]}


def state_of(trainer: xpdl.Trainer) -> dict:
    out = {f"model/{k}": np.asarray(v) for k, v in trainer.get_state()["model"].items()}
    for p, config in trainer.updater_configs.items():
        for k, v in config.items():
            if hasattr(v, "shape"):
                out[f"updater/{p}/{k}"] = np.asarray(v)
    out["loss_history"] = np.asarray(trainer.loss_history)
    out["val_acc_history"] = np.asarray(trainer.val_acc_history)
    out["train_acc_history"] = np.asarray(trainer.train_acc_history)
    out["rng"] = np.asarray([json.dumps({k: str(v) for k, v in trainer.model.rng.get_state().items()})])
    return out


def train(args: argparse.Namespace, comm: distributed.Communicator) -> None:
    data = synthetic(args.samples, 12, 5)
    net = xpdl.FullyConnectedNet(
        input_dim=12,
        hidden_dims=[17, 13],
        num_classes=5,
        dropout=args.dropout,
        normalization=args.normalization,
        reg=args.reg,
        weight_scale=0.3,
        seed=3,
        dtype=args.dtype,
        backend=args.backend,
    )

    def on_iteration(tr: xpdl.Trainer) -> None:
        if comm.rank == args.fail_rank and tr.t == args.fail_at:
            raise RuntimeError(f"injected failure in rank {comm.rank} at iteration {tr.t}")

    trainer = xpdl.Trainer(
        net,
        data,
        update_rule=args.rule,
        updater_config={"learning_rate": 1e-2},
        batch_size=args.batch_size,
        num_epochs=args.epochs,
        lr_decay=0.9,
        verbose=False,
        num_train_samples=50,
        comm=comm,
        local_batchnorm=args.local_batchnorm,
        on_iteration=on_iteration,
    )
    trainer.train()
    path = Path(args.out)
    np.savez(path.with_name(f"{path.stem}.rank{comm.rank}{path.suffix}"), **state_of(trainer))


def bench(args: argparse.Namespace, comm: distributed.Communicator) -> None:
    """ms per step of the medium net (3072-1024-1024-10, float32, batch norm, dropout 0.5, Adam) and the allreduce."""
    rng = np.random.default_rng(0)
    n = max(4096, args.batch_size * 4)
    data = {
        "X_train": rng.standard_normal((n, 3072), dtype=np.float32),
        "y_train": rng.integers(10, size=n),
        "X_val": np.zeros((2, 3072), np.float32),
        "y_val": np.zeros(2, np.int64),
    }
    net = xpdl.FullyConnectedNet(
        input_dim=3072,
        hidden_dims=[1024, 1024],
        num_classes=10,
        dropout=0.5,
        use_batchnorm=True,
        weight_scale=0.01,
        seed=0,
        dtype="float32",
        backend="numpy",
    )
    trainer = xpdl.Trainer(
        net,
        data,
        update_rule="adam",
        updater_config={"learning_rate": 1e-3},
        batch_size=args.batch_size,
        num_epochs=1,
        verbose=False,
        comm=comm,
    )
    results = []
    for _ in range(args.repeats):
        for _ in range(3):  # warm up (compilation, buffers)
            trainer._step()
        comm.barrier()
        trainer.allreduce_seconds = 0.0
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer._step()
        seconds = time.perf_counter() - start
        results.append((seconds, trainer.allreduce_seconds))
    if comm.rank == 0:
        for seconds, reduce in results:
            ms = 1e3 * seconds / args.steps
            print(
                f"ranks {comm.size}: {ms:.2f} ms/step, allreduce {1e3 * reduce / args.steps:.2f} ms "
                f"({100 * reduce / seconds:.1f}%), {args.batch_size * args.steps / seconds:,.0f} samples/s"
            )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", nargs="?", default="state.npz")
    p.add_argument("--dtype", default="float64")
    p.add_argument("--normalization", default="batchnorm")
    p.add_argument("--dropout", type=float, default=0.6)
    p.add_argument("--reg", type=float, default=0.01)
    p.add_argument("--rule", default="adam")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--samples", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=30)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--local-batchnorm", action="store_true")
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--fail-at", type=int, default=-1)
    p.add_argument("--bench", action="store_true")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.normalization == "none":
        args.normalization = None
    comm = distributed.init()
    (bench if args.bench else train)(args, comm)


if __name__ == "__main__":
    sys.exit(main())
