"""Training progress: a tqdm bar per epoch, one line per epoch, or nothing; one bar for a whole run.

:func:`choose_mode` picks ``"bar"`` when the stream is a terminal, ``"lines"``
when it is a file or a pipe (logs stay readable), ``"quiet"`` on request.
A :class:`Progress` (the command line's) is called after every iteration (the
Trainer's ``on_iteration``); :class:`TrainingBar` is the one bar of
``Trainer(..., progress=True)``. Both read only host values, so they never wait
for the GPU except to read the losses at most every ``flush_seconds``.

Bars come from ``tqdm.auto``: a widget in a Jupyter notebook with ipywidgets
installed, a text bar in a terminal, and a text bar without tqdm's warning about
ipywidgets in a notebook that lacks them (:func:`tqdm_class`).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

MODES = ("bar", "lines", "quiet")
#: The bar's loss and accuracies are refreshed at most this often (seconds).
POSTFIX_SECONDS = 0.1


def tqdm_class() -> Any:
    """``tqdm.auto.tqdm`` where ipywidgets can draw a widget, else the text bar ``tqdm.tqdm``.

    ``tqdm.auto`` in a notebook without ipywidgets warns ("IProgress not found. Please
    update jupyter and ipywidgets") and draws text anyway; the text bar is drawn here
    without that warning (``pip install ipywidgets`` brings the widget).
    """
    import importlib.util

    if importlib.util.find_spec("ipywidgets") is None:
        from tqdm import tqdm

        return tqdm
    from tqdm.auto import tqdm

    return tqdm


def choose_mode(quiet: bool, stream: TextIO | None = None) -> str:
    """``"quiet"`` if asked, else ``"bar"`` on a terminal (with tqdm installed) and ``"lines"`` otherwise."""
    if quiet:
        return "quiet"
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is None or not isatty():
        return "lines"
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return "lines"
    return "bar"


def epoch_summary(trainer: Any) -> dict[str, float | None]:
    """Mean loss of the current epoch's iterations so far, and the latest accuracies and learning rate."""
    ipe = trainer.iterations_per_epoch
    start = ((max(trainer.t, 1) - 1) // ipe) * ipe
    losses = trainer.loss_history[start : trainer.t]
    return {
        "loss": sum(losses) / len(losses) if losses else None,
        "train_acc": trainer.train_acc_history[-1] if trainer.train_acc_history else None,
        "val_acc": trainer.val_acc_history[-1] if trainer.val_acc_history else None,
        "lr": trainer.lr_history[-1] if trainer.lr_history else None,
    }


def format_epoch_line(trainer: Any) -> str:
    """One line for the epoch that just ended, e.g. ``epoch  3/20  loss 0.2345  train acc 0.9810 ...``."""
    s = epoch_summary(trainer)
    width = len(str(trainer.num_epochs))
    epoch = -(-trainer.t // trainer.iterations_per_epoch)
    parts = [
        f"epoch {epoch:>{width}}/{trainer.num_epochs}",
        _fmt("loss", s["loss"], ".4f"),
        _fmt("train acc", s["train_acc"], ".4f"),
        _fmt("val acc", s["val_acc"], ".4f"),
        _fmt("lr", s["lr"], ".2e"),
        f"{trainer.train_seconds:.1f} s",
    ]
    return "  ".join(p for p in parts if p)


def _fmt(label: str, value: float | None, spec: str) -> str:
    return "" if value is None else f"{label} {value:{spec}}"


class PostfixThrottle:
    """When a progress bar's postfix is redrawn: at an epoch end, else every ``POSTFIX_SECONDS`` s.

    Reading pending losses (a wait for the GPU) happens at most every ``flush_seconds`` s.
    """

    def __init__(self, flush_seconds: float) -> None:
        self.flush_seconds = flush_seconds
        self._last_flush = self._last_postfix = time.perf_counter()

    def refresh(self, bar: Any, trainer: Any, postfix: Any, epoch_end: bool) -> None:
        """Set ``bar``'s postfix to ``postfix(trainer)`` if it is due."""
        now = time.perf_counter()
        if not (epoch_end or now - self._last_postfix > POSTFIX_SECONDS):
            return
        if epoch_end or now - self._last_flush > self.flush_seconds:
            trainer.flush_losses()
            self._last_flush = now
        bar.set_postfix_str(postfix(trainer), refresh=epoch_end)
        self._last_postfix = now


class Progress:
    """Reports training progress; call it after every iteration and :meth:`close` at the end.

    Args:
        mode: ``"bar"`` (tqdm bar per epoch with running loss and last accuracies),
            ``"lines"`` (one line per epoch) or ``"quiet"``.
        stream: where to write (default stdout).
        flush_seconds: on a GPU, read pending losses for the bar at most this often.
    """

    def __init__(self, mode: str, stream: TextIO | None = None, flush_seconds: float = 0.5) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        self.mode = mode
        self.stream = sys.stdout if stream is None else stream
        self.flush_seconds = flush_seconds
        self._bar: Any = None
        self._bar_epoch = -1
        self._throttle = PostfixThrottle(flush_seconds)

    def __call__(self, trainer: Any) -> None:
        epoch_end = trainer.t % trainer.iterations_per_epoch == 0 or trainer.t >= trainer.num_iterations
        if self.mode == "lines" and epoch_end:
            print(format_epoch_line(trainer), file=self.stream, flush=True)
        elif self.mode == "bar":
            self._update_bar(trainer, epoch_end)

    def _update_bar(self, trainer: Any, epoch_end: bool) -> None:
        ipe = trainer.iterations_per_epoch
        epoch, pos = divmod(trainer.t - 1, ipe)
        if self._bar is None or self._bar_epoch != epoch:
            self._open_bar(trainer, epoch, pos)
        self._bar.update(1)
        self._throttle.refresh(self._bar, trainer, self._postfix, epoch_end)
        if epoch_end:
            self.close()

    def _open_bar(self, trainer: Any, epoch: int, pos: int) -> None:
        tqdm = tqdm_class()

        self.close()
        width = len(str(trainer.num_epochs))
        self._bar = tqdm(
            total=trainer.iterations_per_epoch,
            initial=pos,
            file=self.stream,
            leave=True,
            desc=f"epoch {epoch + 1:>{width}}/{trainer.num_epochs}",
            unit="it",
            mininterval=0.1,
        )
        self._bar_epoch = epoch

    @staticmethod
    def _postfix(trainer: Any) -> str:
        s = epoch_summary(trainer)
        parts = [_fmt("loss", s["loss"], ".4f"), _fmt("train", s["train_acc"], ".3f"), _fmt("val", s["val_acc"], ".3f")]
        return ", ".join(p for p in parts if p)

    def close(self) -> None:
        """Close the open bar, if any."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._bar_epoch = -1


class TrainingBar:
    """One progress bar over all of a Trainer's iterations, for ``Trainer(..., progress=True)``.

    Made when :meth:`Trainer.train` starts (a resumed trainer starts the bar at
    ``trainer.t``), called after every iteration, closed at the end. Its postfix
    shows the epoch, the mean loss of the epoch so far and the latest train /
    validation accuracy.

    Args:
        trainer: the :class:`xpdl.Trainer` about to train.
        flush_seconds: on a GPU, read pending losses for the postfix at most this often.
    """

    def __init__(self, trainer: Any, flush_seconds: float = 0.5) -> None:
        tqdm = tqdm_class()

        self.flush_seconds = flush_seconds
        self._bar = tqdm(
            total=trainer.num_iterations, initial=trainer.t, desc="training", unit="it", mininterval=0.1, leave=True
        )
        self._throttle = PostfixThrottle(flush_seconds)

    def __call__(self, trainer: Any) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        epoch_end = trainer.t % trainer.iterations_per_epoch == 0
        self._throttle.refresh(self._bar, trainer, self.postfix, epoch_end)
        if trainer.t >= trainer.num_iterations:
            self.close()

    @staticmethod
    def postfix(trainer: Any) -> str:
        """E.g. ``epoch 3/20, loss 0.1234, train 0.981, val 0.960``."""
        s = epoch_summary(trainer)
        epoch = -(-trainer.t // trainer.iterations_per_epoch)
        parts = [
            f"epoch {epoch}/{trainer.num_epochs}",
            _fmt("loss", s["loss"], ".4f"),
            _fmt("train", s["train_acc"], ".3f"),
            _fmt("val", s["val_acc"], ".3f"),
        ]
        return ", ".join(p for p in parts if p)

    def close(self) -> None:
        """Close the bar (again: a no-op)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
