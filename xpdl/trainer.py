"""Trainer: minibatch training of a model with an update rule from :mod:`xpdl.updater`.

Usage (the seed's contract)::

    data = {"X_train": ..., "y_train": ..., "X_val": ..., "y_val": ...}
    model = FullyConnectedNet(hidden_dims=[100, 100], use_batchnorm=True, dropout=0.5)
    trainer = Trainer(model, data, update_rule="adam",
                      updater_config={"learning_rate": 1e-3},
                      lr_decay=0.95, num_epochs=10, batch_size=100, print_every=100)
    trainer.train()

Data given as host NumPy arrays is copied to the model's device once. An epoch
is one pass over a fresh permutation of the training set (without replacement)
in ``N // batch_size`` full batches (the few left-over samples differ from epoch
to epoch). Accuracies are checked after the first iteration and at the end of
every epoch (the last iteration included); the model ends with the parameters
and batch-norm statistics of the best validation accuracy.

Data parallel (``comm=``, a :class:`xpdl.parallel.distributed.Communicator` with more than
one rank): ``batch_size`` is the global batch. Each rank holds the whole dataset,
takes its contiguous slice of each batch of the seed-and-epoch permutation and
computes its share of the gradient of the batch's mean loss; one flat buffer
(every gradient, the loss and, with per-rank batch norm, the running statistics)
is summed with one in-place allreduce and every rank applies the same update, so
the ranks stay bit-identical. Dropout masks are the rows one process would draw
for the whole batch and batch-norm statistics are those of the whole batch (unless
``local_batchnorm``), so the numbers do not depend on the rank count (to rounding).
Accuracy checks split their samples across the ranks and sum the counts.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from xpdl import updater
from xpdl.parallel import distributed
from xpdl.progress import TrainingBar

HISTORY_LISTS = (
    "loss_history",
    "train_acc_history",
    "val_acc_history",
    "lr_history",
    "time_history",
    "check_iterations",
)


class Trainer:
    """Trains ``model`` on ``data`` (see the module docstring).

    Required:
        model: a :class:`xpdl.FullyConnectedNet` (or any object with ``params``,
            ``loss(X, y)``, ``backend``, ``as_input``, ``as_labels`` and ``snapshot``).
        data: dict with ``X_train`` (N_train, d_1, ..., d_k), ``y_train`` (N_train,),
            ``X_val``, ``y_val``.

    Keyword arguments (all optional):
        update_rule: ``"sgd"`` (default), ``"sgd_momentum"``, ``"rmsprop"``, ``"adam"``, ``"adamw"``,
            an :class:`xpdl.updater.UpdateRule`, or a function with the seed's signature.
        updater_config: hyperparameters of the rule (e.g. ``learning_rate``), copied per parameter;
            unknown keys and out-of-range values raise ValueError naming the key.
        lr_decay: learning rate multiplier applied after each epoch (default 1.0).
        batch_size: samples per step (default 100).
        num_epochs: epochs to train (default 10).
        print_every: print the loss every this many iterations (default 10).
        verbose: print progress (default True).
        progress: show one ``tqdm.auto`` progress bar over the run (a widget in
            Jupyter) with the epoch, loss and accuracies (default False).
        seed: seeds epoch shuffles and accuracy subsamples (default 0).
        num_train_samples: training samples used for train accuracy (default 1000).
        num_val_samples: validation samples used (default None: all).
        on_iteration, on_epoch_end: optional callables ``f(trainer)`` run after each
            iteration / after each epoch's accuracy check.
        comm: a :class:`xpdl.parallel.distributed.Communicator` (``xpdl.parallel.distributed.init()``) to train
            data-parallel on its ranks (see the module docstring); default: one process.
        local_batchnorm: with ``comm``, normalize with each rank's own batch statistics
            (faster, other numbers) instead of the whole batch's (default False).

    An unknown keyword argument raises TypeError. ``check_iterations`` records the
    iteration count at each accuracy check, beside ``train_acc_history`` and ``val_acc_history``.
    """

    def __init__(
        self,
        model: Any,
        data: dict,
        *,
        update_rule: str | updater.UpdateRule | Callable = "sgd",
        updater_config: dict | None = None,
        lr_decay: float = 1.0,
        batch_size: int = 100,
        num_epochs: int = 10,
        print_every: int = 10,
        verbose: bool = True,
        progress: bool = False,
        seed: int = 0,
        num_train_samples: int | None = 1000,
        num_val_samples: int | None = None,
        on_iteration: Callable | None = None,
        on_epoch_end: Callable | None = None,
        comm: distributed.Communicator | None = None,
        local_batchnorm: bool = False,
    ) -> None:
        self.model = model
        self.update_rule_name = update_rule
        self.update_rule = updater.get_update_rule(self.update_rule_name)
        self.updater_config = dict(_checked_dict(updater_config or {}, "updater_config"))
        if isinstance(self.update_rule, updater.UpdateRule):
            self.update_rule.check_config(self.updater_config)
        self.lr_decay = _number(lr_decay, "lr_decay", lambda v: v > 0, "a finite number > 0")
        self.batch_size = _count(batch_size, "batch_size", 1)
        self.num_epochs = _count(num_epochs, "num_epochs", 0)
        self.print_every = _count(print_every, "print_every", 1)
        self.verbose = bool(verbose)
        self.progress = bool(progress)
        self.seed = _count(seed, "seed", 0)
        self.num_train_samples = num_train_samples
        self.num_val_samples = num_val_samples
        for name in ("num_train_samples", "num_val_samples"):
            if getattr(self, name) is not None:
                _count(getattr(self, name), name, 1)
        self.on_iteration: Callable | None = on_iteration
        self.on_epoch_end: Callable | None = on_epoch_end
        self.comm = comm or distributed.single_process()
        if not isinstance(self.comm, distributed.Communicator):
            raise TypeError(
                f"comm: expected an xpdl.parallel.distributed.Communicator (xpdl.parallel.distributed.init()), "
                f"got {type(self.comm).__name__}"
            )
        self.local_batchnorm = local_batchnorm
        if not isinstance(self.local_batchnorm, bool):
            raise TypeError(f"local_batchnorm: expected True or False, got {self.local_batchnorm!r}")

        if not isinstance(data, dict):
            raise TypeError(f"data: expected a dict with X_train, y_train, X_val, y_val, got {type(data).__name__}")
        for key in ("X_train", "y_train", "X_val", "y_val"):
            if key not in data:
                raise ValueError(f"data: expected keys X_train, y_train, X_val, y_val; missing {key!r}")
        self._data = {key: data[key] for key in ("X_train", "y_train", "X_val", "y_val")}
        self._place_data()
        if self.X_train.shape[0] == 0:
            raise ValueError("data['X_train']: expected at least one sample, got 0")
        if getattr(model, "use_batchnorm", False) and self.effective_batch_size < 2:
            raise ValueError(
                f"batch_size: batch norm needs at least 2 samples per batch, got "
                f"{self.effective_batch_size} (batch_size={self.batch_size}, "
                f"{self.X_train.shape[0]} training samples)"
            )
        per_rank = 2 if getattr(model, "use_batchnorm", False) and self.local_batchnorm else 1
        if self.effective_batch_size < per_rank * self.comm.size:
            raise ValueError(
                f"batch_size: expected at least {per_rank} sample(s) per rank for {self.comm.size} "
                f"ranks, got a batch of {self.effective_batch_size}"
            )

        self._reset_history()

    def _place_data(self) -> None:
        """Copy (or move) the data to the model's device and dtype; remembers which backend it is on."""
        model, data = self.model, self._data
        self.X_train = model.as_input(data["X_train"])
        self.y_train = model.as_labels(data["y_train"], self.X_train.shape[0])
        self.X_val = model.as_input(data["X_val"])
        self.y_val = model.as_labels(data["y_val"], self.X_val.shape[0])
        self._data_backend = model.backend

    def _follow_model(self) -> None:
        """After ``model.to(...)``: move the data, the update-rule state and the best model to the new backend."""
        backend = self.model.backend
        if self._data_backend is backend:
            return
        self._data = {
            k: backend.to_numpy(v) if hasattr(v, "shape") else v
            for k, v in (
                ("X_train", self.X_train),
                ("y_train", self.y_train),
                ("X_val", self.X_val),
                ("y_val", self.y_val),
            )
        }
        self._place_data()
        self.updater_configs = {
            p: {
                k: (backend.asarray(backend.to_numpy(v), dtype=self.model.dtype) if hasattr(v, "shape") else v)
                for k, v in config.items()
            }
            for p, config in self.updater_configs.items()
        }
        self.best_state = {k: self.model._copy(v) for k, v in self.best_state.items()}
        self._perm_epoch = None
        self._buffers = {}

    def _reset_history(self) -> None:
        self.epoch = 0
        self.t = 0
        self.best_val_acc = -1.0
        self.best_state: dict = {}
        self._buffers: dict = {}
        self.loss_history: list[float] = []
        self.train_acc_history: list[float] = []
        self.val_acc_history: list[float] = []
        self.lr_history: list[float] = []
        self.time_history: list[float] = []
        self.check_iterations: list[int] = []
        self.train_seconds = 0.0
        self._pending_losses: list[tuple[int, Any]] = []
        self.updater_configs = {p: copy.deepcopy(self.updater_config) for p in self.model.params}
        self.allreduce_seconds = 0.0
        self._flat: Any = None

    # ------------------------------------------------------------ one step
    @property
    def iterations_per_epoch(self) -> int:
        """Full batches per epoch: ``max(N_train // batch_size, 1)``."""
        return max(self.X_train.shape[0] // self.batch_size, 1)

    @property
    def num_iterations(self) -> int:
        """Total iterations of :meth:`train`: ``num_epochs * iterations_per_epoch``."""
        return self.num_epochs * self.iterations_per_epoch

    @property
    def effective_batch_size(self) -> int:
        """Samples per step: ``min(batch_size, N_train)``."""
        return min(self.batch_size, self.X_train.shape[0])

    def step(self, X_batch: Any, y_batch: Any) -> Any:
        """One training step (forward, backward, update) on one batch.

        Inputs:
            X_batch: (B, d_1, ..., d_k); y_batch: (B,) integer labels. With ``comm``, the
            whole batch: every rank passes the same one and computes its rows.

        Returns:
            The batch loss as a 0-d array on the model's device (no host synchronization).
        """
        self._follow_model()
        X = self.model.as_input(X_batch)
        if X.shape[0] == 0:
            raise ValueError(f"X_batch: expected at least one sample, got shape {tuple(X.shape)}")
        y = self.model.as_labels(y_batch, X.shape[0], check_range=not self.model.backend.is_gpu)
        if self.distributed:
            first, stop = distributed.shard(X.shape[0], self.comm)
            return self._train_step_shard(X[first:stop, ...], y[first:stop], first, X.shape[0])
        return self._train_step(X, y)

    @property
    def distributed(self) -> bool:
        """True when training data-parallel on more than one rank."""
        return self.comm.size > 1

    @property
    def step_path(self) -> str:
        """Which step implementation runs: ``"numpy-fused"``, ``"cupy-fused-update"`` or ``"reference"``."""
        return self.model.backend.training_ops().step_path

    def _train_step(self, X: Any, y: Any) -> Any:
        """One step on validated device arrays: each layer is updated as soon as its gradients exist."""
        loss, _ = self.model.loss_and_grads(
            X, y, input_grad=False, on_grads=self.apply_gradients, buffers=self._buffers
        )
        return loss

    def _train_step_shard(self, X: Any, y: Any, first: int, total: int) -> Any:
        """A data-parallel step on this rank's rows ``first ..`` of a ``total``-row batch.

        Forward and backward on the rank's rows (dropout rows and synchronized batch
        statistics of the whole batch), then the flat buffer of gradient shares and loss
        share summed over the ranks in one allreduce, the L2 term added once, and the
        same update on every rank.
        """
        model = self.model
        drop = model.dropout_param if getattr(model, "use_dropout", False) else None
        sync = None if self.local_batchnorm else self.comm
        bn_params = getattr(model, "bn_params", [])
        if drop is not None:
            drop["rows"] = (first, total)
        for bn in bn_params:
            bn["comm"] = sync
        try:
            loss, grads = model.loss_and_grads(
                X, y, input_grad=False, buffers=self._buffers, loss_scale=X.shape[0] / total, regularize=False
            )
        finally:
            if drop is not None:
                drop.pop("rows", None)
            for bn in bn_params:
                bn.pop("comm", None)
        loss, grads = self._sum_over_ranks(loss, grads)
        loss = model.add_regularization(loss, grads)
        self.apply_gradients(grads)
        return loss

    def _sum_over_ranks(self, loss: Any, grads: dict) -> tuple[Any, dict]:
        """Sum ``loss`` and ``grads`` over the ranks with one in-place allreduce of one flat buffer.

        The buffer (on the model's device, in its dtype) holds every gradient, the loss,
        and with per-rank batch norm the running statistics, which are averaged. Returns
        the summed loss (0-d) and gradients (views into the buffer, valid until the next step).
        """
        xp = self.model.backend.xp
        bn_params = getattr(self.model, "bn_params", []) if self.local_batchnorm else []
        stats = [(bn, key) for bn in bn_params for key in ("running_mean", "running_var")]
        parts = [(k, grads[k]) for k in sorted(grads)] + [(None, loss)] + [(None, bn[key]) for bn, key in stats]
        sizes = [int(np.prod(a.shape)) for _, a in parts]
        if self._flat is None or self._flat.shape[0] != sum(sizes) or self._flat.dtype != grads[parts[0][0]].dtype:
            self._flat = xp.zeros((sum(sizes),), dtype=grads[parts[0][0]].dtype, device=self.model.backend.device)
        flat = self._flat
        offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        for (_, a), start, stop in zip(parts, offsets, offsets[1:]):
            flat[start:stop] = xp.reshape(a, (-1,))
        tick = time.perf_counter()
        flat = self._flat = self.comm.allreduce(flat)
        self.allreduce_seconds += time.perf_counter() - tick
        views = [xp.reshape(flat[start:stop], a.shape) for (_, a), start, stop in zip(parts, offsets, offsets[1:])]
        summed = {k: v for (k, _), v in zip(parts, views) if k is not None}
        for (bn, key), v in zip(stats, views[len(grads) + 1 :]):
            bn[key] = v / self.comm.size
        return views[len(grads)], summed

    def apply_gradients(self, grads: dict) -> None:
        """Update the parameters named in ``grads`` with their gradients and their own update-rule configs."""
        params, rule = self.model.params, self.update_rule
        if not isinstance(rule, updater.UpdateRule):  # a function with the seed's signature
            for p, g in grads.items():
                params[p], self.updater_configs[p] = rule(params[p], g, self.updater_configs[p])
            return
        ops = self.model.backend.training_ops()
        for p, g in grads.items():
            config = rule.fill_defaults(self.updater_configs[p])
            params[p] = ops.update(rule, params[p], g, config)

    def batch_indices(self, t: int) -> Any:
        """Device indices of the batch of iteration ``t`` (0-based): a slice of the epoch's permutation."""
        epoch, pos = divmod(t, self.iterations_per_epoch)
        if getattr(self, "_perm_epoch", None) != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.X_train.shape[0])
            self._perm = self.model.backend.asarray(perm)
            self._perm_epoch = epoch
        bs = self.effective_batch_size
        return self._perm[pos * bs : (pos + 1) * bs]

    def _step(self) -> None:
        xp = self.model.backend.xp
        idx = self.batch_indices(self.t)
        if self.distributed:
            first, stop = distributed.shard(idx.shape[0], self.comm)
            total, idx = idx.shape[0], idx[first:stop]
        X_batch = xp.take(self.X_train, idx, axis=0)
        y_batch = xp.take(self.y_train, idx, axis=0)
        if self.distributed:
            loss = self._train_step_shard(X_batch, y_batch, first, total)
        else:
            loss = self._train_step(X_batch, y_batch)
        self._pending_losses.append((self.t, loss))
        self.t += 1
        if not self.model.backend.is_gpu:
            self.flush_losses()

    def flush_losses(self) -> None:
        """Move pending device losses into ``loss_history``; stop on a NaN or infinite loss.

        Raises:
            FloatingPointError: naming the iteration; the model is restored to the best
                parameters seen so far first.
        """
        pending, self._pending_losses = self._pending_losses, []
        for t, loss in pending:
            value = float(loss)
            if not math.isfinite(value):
                self.restore_best()
                raise FloatingPointError(
                    f"loss became {value} at iteration {t + 1} (epoch {t // self.iterations_per_epoch + 1}); "
                    f"training stopped and the model holds the best parameters seen so far "
                    f"({self._best_description()}); try a smaller learning rate"
                )
            self.loss_history.append(value)

    # ------------------------------------------------------------ accuracy
    def check_accuracy(self, X: Any, y: Any, num_samples: int | None = None, batch_size: int = 100) -> float:
        """Fraction of ``X`` (N, ...) classified as ``y`` (N,), optionally on a seeded subsample.

        Predictions are made on the model's device in batches of ``batch_size``;
        the subsample (``num_samples`` without replacement) depends on the seed and
        the iteration only, so a resumed run draws the same one. With ``comm``, each rank
        classifies its contiguous share of the samples and the counts are summed.
        """
        X = self.model.as_input(X)
        y = self.model.as_labels(y, X.shape[0], check_range=False)
        xp = self.model.backend.xp
        n = X.shape[0]
        if num_samples is not None and n > num_samples:
            pick = np.random.default_rng([self.seed, self.t, 1]).choice(n, num_samples, replace=False)
            idx = self.model.backend.asarray(pick)
            X, y, n = xp.take(X, idx, axis=0), xp.take(y, idx, axis=0), num_samples
        if n == 0:
            return 0.0
        first, stop = distributed.shard(n, self.comm)
        correct = 0
        for start in range(first, stop, batch_size):
            end = min(start + batch_size, stop)
            scores = self.model.loss(X[start:end, ...])
            correct = correct + xp.sum(xp.astype(xp.argmax(scores, axis=1) == y[start:end], xp.int64))
        if self.distributed:
            return int(self.comm.allreduce(np.array([int(correct)], np.int64))[0]) / n
        return int(correct) / n

    # ------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue training exactly, as host NumPy arrays and plain Python values.

        Keys: ``counters`` (t, epoch, best_val_acc, train_seconds), ``history`` (the
        history lists), ``model`` and ``best`` (:meth:`FullyConnectedNet.state_arrays`
        of the current and best model), ``updater`` (per parameter: its config, arrays
        as NumPy), ``rng`` (the model generator's state).
        """
        self.flush_losses()
        to_host = self.model.backend.to_numpy
        updater_state = {
            p: {k: (to_host(v).copy() if hasattr(v, "shape") else v) for k, v in config.items()}
            for p, config in self.updater_configs.items()
        }
        return {
            "counters": {
                "t": self.t,
                "epoch": self.epoch,
                "best_val_acc": self.best_val_acc,
                "train_seconds": self.train_seconds,
            },
            "history": {name: list(getattr(self, name)) for name in HISTORY_LISTS},
            "model": {k: to_host(v).copy() for k, v in self.model.state_arrays().items()},
            "best": {k: to_host(v).copy() for k, v in self.best_state.items()},
            "updater": updater_state,
            "rng": self.model.rng.get_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`get_state` output (arrays of any backend are moved to the model's).

        Everything is checked (keys, shapes) before the trainer or the model changes.
        """
        if set(state.get("updater", {})) != set(self.model.params):
            raise ValueError(
                f"state['updater']: expected one config per parameter {sorted(self.model.params)}, "
                f"got {sorted(state.get('updater', {}))}"
            )
        for p, config in state["updater"].items():
            for k, v in config.items():
                if hasattr(v, "shape") and tuple(v.shape) != tuple(self.model.params[p].shape):
                    raise ValueError(
                        f"state['updater'][{p!r}][{k!r}]: expected shape "
                        f"{tuple(self.model.params[p].shape)}, got {tuple(v.shape)}"
                    )
        self.model.load_state_arrays(state["model"])
        backend = self.model.backend
        self.updater_configs = {
            p: {
                k: (backend.asarray(backend.to_numpy(v), dtype=self.model.dtype) if hasattr(v, "shape") else v)
                for k, v in config.items()
            }
            for p, config in state["updater"].items()
        }
        self.best_state = {k: self.model._copy(v) for k, v in state.get("best", {}).items()}
        counters = state["counters"]
        self.t, self.epoch = int(counters["t"]), int(counters["epoch"])
        self.best_val_acc = float(counters["best_val_acc"])
        self.train_seconds = float(counters.get("train_seconds", 0.0))
        for name in HISTORY_LISTS:
            setattr(self, name, list(state["history"].get(name, [])))
        if len(self.check_iterations) != len(self.val_acc_history):  # a state saved before they were recorded
            ipe = self.iterations_per_epoch
            self.check_iterations = ([1] + [k * ipe for k in range(1, len(self.val_acc_history) + 1) if k * ipe != 1])[
                : len(self.val_acc_history)
            ]
        self._pending_losses = []
        self.model.rng.set_state(state["rng"])

    # ------------------------------------------------------------ training
    def record_best(self, val_acc: float) -> None:
        """Keep a device copy of the model's params and batch-norm statistics if ``val_acc`` is a new best."""
        if val_acc > self.best_val_acc:
            self.best_val_acc = val_acc
            self.best_state = self.model.snapshot()
            self._start_state = None

    def restore_best(self) -> None:
        """Load the best params and batch-norm statistics seen so far into the model.

        Before the first accuracy check, that is the state :meth:`train` started from.
        """
        best = self.best_state or getattr(self, "_start_state", None)
        if best:
            self.model.load_state_arrays(best)

    def _best_description(self) -> str:
        if self.best_state:
            return f"validation accuracy {self.best_val_acc:.4f}"
        return "no accuracy check had run yet: the parameters training started from"

    def current_learning_rate(self) -> float | None:
        """The learning rate the next step will use (None before the rule set its default)."""
        configs = list(self.updater_configs.values())
        return configs[0].get("learning_rate") if configs else None

    def _epoch_checks(self, epoch_end: bool) -> None:
        self.flush_losses()
        train_acc = self.check_accuracy(self.X_train, self.y_train, num_samples=self.num_train_samples)
        val_acc = self.check_accuracy(self.X_val, self.y_val, num_samples=self.num_val_samples)
        self.train_acc_history.append(train_acc)
        self.val_acc_history.append(val_acc)
        self.lr_history.append(self.current_learning_rate())
        self.time_history.append(self.train_seconds)
        self.check_iterations.append(self.t)
        if self.verbose:
            print(f"(Epoch {self.epoch} / {self.num_epochs}) train acc: {train_acc:f}; val_acc: {val_acc:f}")
        self.record_best(val_acc)
        if epoch_end and self.on_epoch_end is not None:
            self.on_epoch_end(self)

    def train(self) -> None:
        """Train until ``num_iterations``, resuming from ``self.t`` if some were done already.

        Ends with the model holding the parameters of the best validation accuracy. With
        more than one rank, an exception in this rank (Ctrl-C included) other than a
        diverged loss (which every rank sees alike) aborts the whole job
        (:func:`xpdl.parallel.distributed.abort_job`) instead of leaving the other ranks waiting.
        """
        if not self.distributed:
            return self._train()
        try:
            self._train()
        except FloatingPointError:
            raise
        except BaseException as exc:
            distributed.abort_job(self.comm, exc)

    def _train(self) -> None:
        self._follow_model()
        total = self.num_iterations
        start = time.perf_counter() - self.train_seconds
        self._start_state = None if self.best_state else self.model.snapshot()
        if self.t == 0 and not self.val_acc_history and total == 0:
            self._epoch_checks(epoch_end=False)
        bar = TrainingBar(self) if self.progress else None
        while self.t < total:
            self._step()
            self.train_seconds = time.perf_counter() - start
            t = self.t
            if self.verbose and (t - 1) % self.print_every == 0:
                self.flush_losses()
                print(f"(Iteration {t} / {total}) loss: {self.loss_history[-1]:f}")
            epoch_end = t % self.iterations_per_epoch == 0
            if epoch_end:
                self.epoch += 1
                for config in self.updater_configs.values():
                    if "learning_rate" in config:
                        config["learning_rate"] *= self.lr_decay
            if t == 1 or epoch_end:
                self._epoch_checks(epoch_end)
            if self.on_iteration is not None:
                self.on_iteration(self)
            if bar is not None:
                bar(self)
        if bar is not None:
            bar.close()
        self.flush_losses()
        if not self.best_state:
            self.record_best(self.check_accuracy(self.X_val, self.y_val, num_samples=self.num_val_samples))
        self.restore_best()


def _checked_dict(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"{name}: expected a dict, got {type(value).__name__}")
    return value


def _count(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; TypeError/ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def _number(value: Any, name: str, ok: Callable[[float], bool], expected: str) -> float:
    """``value`` as a finite float satisfying ``ok``; TypeError/ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected {expected}, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name}: expected {expected}, got {value}")
    return value
