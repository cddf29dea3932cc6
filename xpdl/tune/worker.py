"""One ``xpdl tune`` worker process: asks the study for trials and runs each as an ``xpdl train`` run.

Started by :mod:`xpdl.tune.driver` as ``python -m xpdl tune --worker ...`` with its BLAS
thread counts already in its environment. Each trial writes a normal run folder
``OUT/trials/trial-NNNN`` (``xpdl evaluate`` works on it), trains with seed
``seed + trial number`` (but splits off the validation set with ``seed`` alone,
so every trial is scored on the same split), and reports the validation
accuracy after every epoch, so the pruner can stop it (the run folder is still finished). Its value is the
run's best validation accuracy. The worker stops when the study's budget is used
up; after Ctrl-C (SIGINT) it fails and re-queues its running trial and exits 130.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from xpdl.training import TrainingRun, train
from xpdl.tune import study as ts
from xpdl.tune.space import SearchParam, option_argv, option_value, options_argv, parse_space, train_actions

TRIALS_DIR = "trials"


class TrainFailed(Exception):
    """The trial's ``xpdl train`` run ended with an error (exit code 1 or 2)."""


class Surplus(Exception):
    """The trial was created after the budget was used up (another worker got there first)."""


def trial_folder(out: Path, number: int) -> Path:
    """The run folder of trial ``number`` under the tune folder ``out``."""
    return out / TRIALS_DIR / f"trial-{number:04d}"


#: Signals that stop a worker like Ctrl-C: its trial is failed and queued again, its run folder finished.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()))


class StopRequest:
    """Whether a stop signal came, and where it may interrupt the worker.

    A KeyboardInterrupt raised by a signal handler lands wherever the interpreter is:
    in a weak-reference callback or a finalizer it is printed and dropped, in a C
    extension's initialization it becomes an ImportError, in Optuna's journal-lock
    release a FileNotFoundError. So the handler only raises while a trial trains
    (``armed``, once per trial: the run's own cleanup after Ctrl-C is not interrupted
    again; never inside the study's storage, :meth:`held`), :meth:`check` raises it at
    the safe points (before a trial, at each epoch's end, between trials) when it was
    dropped or came elsewhere, and after a stop any error counts as the interrupt.
    """

    def __init__(self) -> None:
        self.requested = False
        self.armed = False

    def on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Within: a stop signal is only recorded (the caller checks after)."""
        armed, self.armed = self.armed, False
        try:
            yield
        finally:
            self.armed = armed and not self.requested

    def check(self) -> None:
        """Raise KeyboardInterrupt if a stop signal came."""
        if self.requested:
            self.armed = False
            raise KeyboardInterrupt

    def ignore_more(self) -> None:
        """Ignore further stop signals: the worker is stopping (the terminal and the driver both send one)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    def install(self) -> None:
        """Handle the stop signals from now on, then let through those blocked while the worker started."""
        self.requested = self.armed = False
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.on_signal)
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


STOP = StopRequest()


class Objective:
    """``objective(trial)``: one training run (a :class:`TrainingRun`) with the trial's parameters.

    Returns the run's best validation accuracy.
    """

    def __init__(self, study: optuna.Study, out: Path, config: dict[str, Any]) -> None:
        self.study, self.out, self.config = study, out, config
        self.space: list[SearchParam] = parse_space(config["search"], config["fixed"])
        self.fixed_argv = options_argv(config["fixed"])
        self.actions = train_actions()
        self.current: optuna.Trial | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        self.current = trial
        if ts.is_surplus(self.study, trial.number):
            trial.set_user_attr("surplus", True)
            raise Surplus(f"trial {trial.number}: the budget of {self.config['trials']} trials is used up")
        params = {p.name: p.suggest(trial) for p in self.space}
        folder = trial_folder(self.out, trial.number)
        trial.set_user_attr("worker", ts.worker_name())
        trial.set_user_attr("run", str(folder.relative_to(self.out)))
        options = {
            **{name: option_value(name, v, self.actions) for name, v in self.config["fixed"].items()},
            **{name: option_value(name, v, self.actions) for name, v in params.items()},
            "seed": self.config["seed"] + trial.number,
            "out": str(folder),
            "quiet": True,
        }
        options.setdefault("split-seed", self.config["seed"])  # every trial is scored on the same validation split
        print(f"trial {trial.number}: xpdl train {' '.join(self.command_line(params, options))}", flush=True)
        run = TrainingRun.from_options(options)
        STOP.check()
        STOP.armed = True
        try:
            code = train(run, epoch_callback=lambda trainer: self.report(trial, trainer))
        except optuna.TrialPruned as exc:  # the run folder is finished; say so, as a completed run does
            print(f"trial {trial.number}: pruned after {exc}; run folder {folder}", flush=True)
            raise
        finally:
            STOP.armed = False
        sys.stdout.flush()
        if code == 0:
            return float(json.loads((folder / "history.json").read_text())["best_val_acc"])
        if code == 130 or STOP.requested:  # a stop signal may surface as another error in the run (see StopRequest)
            raise KeyboardInterrupt
        reason = "training diverged" if code == 1 else f"xpdl train exited with code {code}"
        trial.set_user_attr("error", f"{reason} (see the worker log)")
        raise TrainFailed(reason)

    def command_line(self, params: dict[str, Any], options: dict[str, Any]) -> list[str]:
        """The ``xpdl train`` options of a trial, as the worker log shows them."""
        argv = [
            *self.fixed_argv,
            *(a for name, v in params.items() for a in option_argv(name, v, self.actions)),
            "--seed",
            str(options["seed"]),
            "--out",
            options["out"],
            "--quiet",
        ]
        if "--split-seed" not in self.fixed_argv:
            argv += ["--split-seed", str(options["split-seed"])]
        return argv

    @staticmethod
    def report(trial: optuna.Trial, trainer: Any) -> None:
        """After an epoch: stop if a stop signal came; report the validation accuracy; raise TrialPruned
        if the pruner says so."""
        STOP.check()
        with STOP.held():  # a signal does not interrupt the study's storage (Optuna's journal lock)
            trial.report(float(trainer.val_acc_history[-1]), int(trainer.epoch))
            prune = trial.should_prune()
        STOP.check()
        if prune:
            raise optuna.TrialPruned(f"epoch {trainer.epoch} (val acc {trainer.val_acc_history[-1]:.4f})")


def _preload() -> None:
    """Import what every trial needs once, so trial seconds measure training, not imports."""
    import xpdl.backends.cpu_kernels  # noqa: F401  (the compiled kernels)
    import xpdl.plots  # noqa: F401  (curves.png: matplotlib and its Agg extension, loaded before any trial trains)
    import xpdl.training.run  # noqa: F401


def run_worker(storage_spec: str, study_name: str, out: str | Path, sampler_seed: int) -> int:
    """Work on the study until its budget is used up. Returns 0, or 130 after Ctrl-C (or SIGTERM, SIGHUP)."""
    STOP.install()
    storage = ts.open_storage(storage_spec)
    config = ts.study_config(ts.load_study(storage, study_name))
    study = ts.load_study(
        storage, study_name, ts.make_sampler(config["sampler"], sampler_seed), ts.make_pruner(config["pruner"])
    )
    objective = Objective(study, Path(out), config)
    _preload()
    try:
        while not STOP.requested and ts.has_work(study):
            study.optimize(objective, n_trials=1, catch=(Surplus, TrainFailed))
        STOP.check()
    except BaseException as exc:
        # after a stop signal, any error is how the interrupt surfaced (a KeyboardInterrupt raised inside
        # a library's cleanup can come out as another exception)
        if not (isinstance(exc, KeyboardInterrupt) or STOP.requested):
            raise
        STOP.ignore_more()
        if objective.current is not None:
            frozen = study._storage.get_trial(objective.current._trial_id)
            interrupted = frozen.state == TrialState.FAIL and not {"error", "surplus"} & set(frozen.user_attrs)
            if frozen.state == TrialState.RUNNING or interrupted:
                ts.fail_and_requeue(study, frozen, "interrupted")
        return 130
    return 0
