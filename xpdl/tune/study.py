"""The Optuna side of ``xpdl tune``: storages, samplers, pruners, the trial budget and dead-trial recovery.

Imported only when ``xpdl tune`` runs (it imports Optuna, an extra:
``pip install "xpdl[tune]"``).

The study keeps everything a worker needs in its user attribute ``xpdl_tune``
(:data:`CONFIG_KEY`): the fixed ``xpdl train`` options, the ``--search`` specs,
sampler, pruner, seed and the trial budget, so ``--join`` needs only the storage
URL and the study name.

The budget counts trials that are waiting, running or finished, except failed
trials that were re-queued (their retry counts instead) and trials a worker
created after the budget was reached (user attribute ``surplus``).
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

CONFIG_KEY = "xpdl_tune"
JOURNAL_FILE = "journal.log"
#: Seconds between a worker's heartbeats on a database, and until a silent trial counts as dead.
HEARTBEAT_INTERVAL, GRACE_PERIOD = 10, 60
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "asha", "none")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def is_database_url(spec: str) -> bool:
    """Whether a storage spec is an SQLAlchemy URL (``postgresql+psycopg2://...``) rather than a journal file."""
    return "://" in spec


def open_storage(spec: str) -> optuna.storages.BaseStorage:
    """The storage ``spec``: an SQLAlchemy URL (with heartbeats) or the path of a journal file."""
    if not is_database_url(spec):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(os.fspath(spec)))
    with warnings.catch_warnings():  # heartbeats and their retry callback are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback_class = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        if callback_class is not None:
            retry = {"heartbeat_stale_trial_callback": callback_class()}
        else:  # Optuna before 4.9
            retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback()}
        return optuna.storages.RDBStorage(
            spec,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            grace_period=GRACE_PERIOD,
            engine_kwargs={"pool_pre_ping": True},
            **retry,
        )


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """``tpe`` (with ``constant_liar``, so parallel workers avoid each other's running points) or ``random``."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler: expected one of {', '.join(SAMPLERS)}, got {name!r}")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """``median`` (after 4 trials, from epoch 3), ``asha`` (successive halving) or ``none``."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner: expected one of {', '.join(PRUNERS)}, got {name!r}")


def create_study(storage: optuna.storages.BaseStorage, name: str, config: dict[str, Any]) -> optuna.Study:
    """Create the study (maximizing validation accuracy) with its settings, once, before any worker starts."""
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    study.set_user_attr(CONFIG_KEY, config)
    return study


def load_study(
    storage: optuna.storages.BaseStorage, name: str, sampler: Any = None, pruner: Any = None
) -> optuna.Study:
    """The existing study ``name``; KeyError saying so if there is none."""
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        held = ", ".join(names) or "none"
        raise KeyError(f"--study {name}: no such study in the storage (it holds: {held})") from None


def study_config(study: optuna.Study) -> dict[str, Any]:
    """The ``xpdl tune`` settings stored with the study; ValueError if it was not made by ``xpdl tune``."""
    config = study.user_attrs.get(CONFIG_KEY)
    if not isinstance(config, dict):
        raise ValueError(f"--study {study.study_name}: was not created by xpdl tune (no {CONFIG_KEY} settings)")
    return config


def set_budget(study: optuna.Study, trials: int) -> None:
    """Store a new trial budget with the study's settings."""
    study.set_user_attr(CONFIG_KEY, {**study_config(study), "trials": int(trials)})


def worker_name(pid: int | None = None) -> str:
    """``host:pid`` of a worker process (default: this one)."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def retried_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of failed trials that were queued again (Optuna's ``retry_history`` system attribute)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that use up the budget: all but re-queued failures and surplus trials."""
    retried = retried_numbers(trials)
    return [
        t
        for t in trials
        if not t.user_attrs.get("surplus") and not (t.state == TrialState.FAIL and t.number in retried)
    ]


def visible(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials to report: all but the surplus ones."""
    return [t for t in trials if not t.user_attrs.get("surplus")]


def has_work(study: optuna.Study) -> bool:
    """Whether a worker should ask for another trial: budget left, or a queued (retried) trial waiting."""
    trials = study.get_trials(deepcopy=False)
    waiting = any(t.state == TrialState.WAITING for t in trials)
    return waiting or len(counted(trials)) < study_config(study)["trials"]


def is_surplus(study: optuna.Study, number: int) -> bool:
    """Whether trial ``number`` was created after the budget was used up by trials before it."""
    before = [t for t in counted(study.get_trials(deepcopy=False)) if t.number < number]
    return len(before) >= study_config(study)["trials"]


def fail_and_requeue(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    """Mark a running ``trial`` failed (user attribute ``error``) and queue a new trial with its parameters."""
    storage = study._storage
    if trial.state == TrialState.RUNNING:
        storage.set_trial_user_attr(trial._trial_id, "error", reason)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    elif trial.state != TrialState.FAIL:
        return
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            system_attrs={"failed_trial": history[0], "retry_history": history},
        )
    )


def recover(study: optuna.Study, reason: str, is_dead: Callable[[FrozenTrial], bool] = lambda t: True) -> list[int]:
    """Fail and re-queue every RUNNING trial for which ``is_dead(trial)``; returns their numbers."""
    dead = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if is_dead(t)]
    for trial in dead:
        fail_and_requeue(study, trial, reason)
    return [t.number for t in dead]


def fail_stale(study: optuna.Study) -> None:
    """On a database: fail and re-queue trials whose worker stopped sending heartbeats."""
    if isinstance(study._storage, optuna.storages.RDBStorage):
        optuna.storages.fail_stale_trials(study)
