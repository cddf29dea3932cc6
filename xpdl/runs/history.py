"""What a run records as it trains: ``history.json`` and the files of the run folder, kept up to date.

:class:`RunRecorder` is the Trainer's ``on_iteration`` callback that writes a run
folder (:mod:`xpdl.runs.folder`): ``checkpoint.npz`` every ``checkpoint_every``
iterations (default: at every epoch end) and always after the last iteration,
``best.npz`` whenever the validation accuracy improves, ``history.json``
(:func:`history_record`) with every checkpoint, and at the end (also after a
diverged or stopped run) ``history.json`` and ``curves.png``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xpdl.runs.checkpoint import save_checkpoint, save_model
from xpdl.runs.folder import (
    BEST_FILE,
    CHECKPOINT_FILE,
    CURVES_FILE,
    HISTORY_FILE,
    RunFolderError,
    describe_os_error,
    write_json,
)


def best_check(val_acc_history: list[float]) -> int | None:
    """Index of the accuracy check that set the best validation accuracy (the first maximum), or None."""
    return int(np.argmax(val_acc_history)) if val_acc_history else None


def history_record(trainer: Any, settings: dict[str, Any], device: str) -> dict[str, Any]:
    """The JSON document of ``history.json`` for ``trainer`` (pending losses are flushed first).

    Keys: ``settings``, ``device``, ``nproc`` (the ranks that trained), ``batch_size``, ``iterations_per_epoch``,
    ``num_epochs``, ``iterations_done``, ``epochs_done``, ``best_val_acc``,
    ``best_epoch``, ``train_seconds`` (s), ``loss_history`` (one per iteration),
    ``loss_epochs`` (its x coordinates in epochs), ``check_iterations`` /
    ``check_epochs`` (when each accuracy check happened), ``train_acc_history``,
    ``val_acc_history``, ``lr_history`` (learning rate after each check) and
    ``time_history`` (seconds of training at each check).
    """
    trainer.flush_losses()
    ipe = trainer.iterations_per_epoch
    checks = list(trainer.check_iterations)
    best = best_check(trainer.val_acc_history)
    return {
        "settings": settings,
        "device": device,
        "nproc": int(getattr(getattr(trainer, "comm", None), "size", 1)),
        "batch_size": trainer.batch_size,
        "iterations_per_epoch": ipe,
        "num_epochs": trainer.num_epochs,
        "iterations_done": trainer.t,
        "epochs_done": trainer.epoch,
        "best_val_acc": trainer.best_val_acc if best is not None else None,
        "best_epoch": checks[best] / ipe if best is not None else None,
        "train_seconds": trainer.train_seconds,
        "loss_history": list(trainer.loss_history),
        "loss_epochs": [(i + 1) / ipe for i in range(len(trainer.loss_history))],
        "check_iterations": checks,
        "check_epochs": [t / ipe for t in checks],
        "train_acc_history": list(trainer.train_acc_history),
        "val_acc_history": list(trainer.val_acc_history),
        "lr_history": list(trainer.lr_history),
        "time_history": list(trainer.time_history),
    }


class RunRecorder:
    """Writes a run folder as a Trainer trains; pass it as the Trainer's ``on_iteration``.

    Args:
        folder: the run folder (must exist).
        meta: checkpoint metadata: ``settings`` and ``preprocessing`` (see
            :func:`xpdl.runs.checkpoint.save_checkpoint`).
        device: a description of the device, for ``history.json``.
        checkpoint_every: save every this many iterations; None: at every epoch end.
        draw_curves: ``draw_curves(history, path)`` draws ``curves.png`` when the run ends
            (:func:`xpdl.plots.plot_curves`); None draws nothing. This module writes data only.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        meta: dict[str, Any],
        device: str,
        checkpoint_every: int | None = None,
        draw_curves: Callable[[dict[str, Any], Path], Any] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.draw_curves = draw_curves
        self.meta = meta
        self.device = device
        self.checkpoint_every = checkpoint_every
        self._best_saved: Any = None

    def start(self, trainer: Any) -> None:
        """Bring ``best.npz`` in line with a (restored) trainer before training continues."""
        if trainer.best_state:
            self.save_best(trainer)

    def __call__(self, trainer: Any) -> None:
        if trainer.best_state and trainer.best_state is not self._best_saved:
            self.save_best(trainer)
        if self.due(trainer):
            self.save(trainer)

    def due(self, trainer: Any) -> bool:
        """Whether a checkpoint is due after iteration ``trainer.t``."""
        t = trainer.t
        if t >= trainer.num_iterations:
            return True
        every = self.checkpoint_every or trainer.iterations_per_epoch
        return t % every == 0

    def save(self, trainer: Any) -> None:
        """Write ``checkpoint.npz`` and ``history.json`` for the trainer's current state."""
        with self._writing(CHECKPOINT_FILE):
            save_checkpoint(self.folder / CHECKPOINT_FILE, trainer, self.meta)
        with self._writing(HISTORY_FILE):
            write_json(self.folder / HISTORY_FILE, self.history(trainer))

    def _writing(self, name: str) -> _Writing:
        """A context that turns an OSError while writing ``name`` into a :class:`RunFolderError` naming it."""
        return _Writing(self.folder / name)

    def save_best(self, trainer: Any) -> None:
        """Write ``best.npz`` from the trainer's best state, with its accuracy and epoch in ``info``."""
        ipe = trainer.iterations_per_epoch
        best = best_check(trainer.val_acc_history)
        info = {"best_val_acc": trainer.best_val_acc}
        if best is not None:
            info["epoch"] = trainer.check_iterations[best] / ipe
        meta = {**self.meta, "info": info}
        with self._writing(BEST_FILE):
            save_model(self.folder / BEST_FILE, trainer.model, meta, arrays=trainer.best_state)
        self._best_saved = trainer.best_state

    def history(self, trainer: Any) -> dict[str, Any]:
        """:func:`history_record` with this run's settings and device."""
        return history_record(trainer, self.meta.get("settings", {}), self.device)

    def finish(self, trainer: Any) -> Path | None:
        """After training: rewrite ``history.json`` and draw ``curves.png`` (None when no drawer was given)."""
        doc = self.history(trainer)
        with self._writing(HISTORY_FILE):
            write_json(self.folder / HISTORY_FILE, doc)
        if self.draw_curves is None:
            return None
        with self._writing(CURVES_FILE):
            return self.draw_curves(doc, self.folder / CURVES_FILE)


class _Writing:
    """``with _Writing(path):`` turns an OSError (full disk, read-only, no permission) into a RunFolderError."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, OSError):
            raise RunFolderError(f"{self.path}: cannot write: {describe_os_error(exc)}") from None
