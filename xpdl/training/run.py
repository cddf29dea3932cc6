"""Training is a function: :class:`TrainingRun` describes a run, :func:`train` runs it and writes its folder.

``xpdl train`` builds a :class:`TrainingRun` from its options, ``xpdl tune`` from a
trial's parameters, and Python users build one themselves:

```python
from xpdl.training import TrainingRun, train

code = train(TrainingRun(hidden_dims=[128], epochs=5, out="runs/small"))
```

Exit codes (what :func:`train` returns): 0 success, 1 training diverged (NaN or
infinite loss), 2 a user error (bad setting, missing dataset, unreadable
checkpoint, unavailable backend, a run folder that cannot be created, locked or
written), 130 interrupted. Every error is one line on stderr, without a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xpdl.backends import ENV_VARIABLE, Backend, BackendUnavailable, default_backend_name, get_backend
from xpdl.cnn import ConvNet
from xpdl.data import DatasetError, default_num_val, load_raw, prepare
from xpdl.fc_net import FullyConnectedNet
from xpdl.parallel import distributed
from xpdl.progress import Progress, choose_mode
from xpdl.runs import CheckpointError, RunFolder, RunFolderError, build_model, load_checkpoint, restore_trainer
from xpdl.runs.atomic import WriteError
from xpdl.runs.folder import describe_os_error
from xpdl.runs.history import RunRecorder
from xpdl.trainer import Trainer
from xpdl.training.options import CHECKPOINT_SPEC, DEFAULTS, MODEL_DEFAULTS, RESUMABLE, SETTINGS_SCHEMA, UsageError


@dataclass
class TrainingRun:
    """One training run: model, data, update rule, schedule, run folder and seed.

    Every setting left ``None`` takes its default (:data:`xpdl.training.options.DEFAULTS`),
    or with ``resume`` the run's saved value. The fields are ``xpdl train``'s options
    (``--hidden-dims 256,256`` is ``hidden_dims=[256, 256]``).

    Attributes:
        data, data_dir, download, num_val: the dataset, where it lives, whether to
            download it, and the validation images held out (None: its usual split).
        model, conv_dims, filter_size: which net (``"fc"``, ``"conv"`` or
            ``"three-layer-conv"``; conv nets take their image shape from the dataset).
        hidden_dims, normalization, batchnorm, dropout, weight_scale, reg, dtype, local_batchnorm:
            the net (normalization ``"batchnorm"``, ``"layernorm"``, ``"groupnorm"`` or ``"none"``;
            batchnorm the seed's spelling of it; dropout the keep probability, 0 = off).
        update_rule, lr, weight_decay, lr_decay, epochs, batch_size, seed, split_seed:
            the optimization (weight_decay for adamw only; lr_decay per epoch).
        backend: a backend name (None: ``XPDL_BACKEND``, else ``auto``).
        checkpoint_every: iterations between checkpoints (None: every epoch end).
        out: the run folder to create (None: ``runs/<timestamp>``); resume: a run
            folder to continue; quiet: print only the final summary line.
    """

    data: str | None = None
    data_dir: str | None = None
    download: bool | None = None
    num_val: int | None = None
    hidden_dims: list[int] | None = None
    normalization: str | None = None
    batchnorm: bool | None = None
    dropout: float | None = None
    weight_scale: float | None = None
    reg: float | None = None
    dtype: str | None = None
    local_batchnorm: bool | None = None
    update_rule: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    lr_decay: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    split_seed: int | None = None
    backend: str | None = None
    checkpoint_every: int | None = None
    out: str | None = None
    resume: str | None = None
    quiet: bool = False
    model: str | None = None
    conv_dims: list[int] | None = None
    filter_size: int | None = None

    @classmethod
    def from_namespace(cls, args: TrainingRun) -> TrainingRun:
        """The run described by parsed ``xpdl train`` options."""
        values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
        values["quiet"] = bool(values["quiet"])
        return cls(**values)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TrainingRun:
        """The run with these settings (keys with dashes or underscores: ``"hidden-dims"`` or ``"hidden_dims"``).

        Raises:
            ValueError: a key that is no field (the message lists the fields).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for key, value in options.items():
            name = key.replace("-", "_")
            if name not in names:
                raise ValueError(f"{key}: not a training setting; expected one of {', '.join(sorted(names))}")
            values[name] = value
        return cls(**values)


def new_settings(args: TrainingRun) -> dict[str, Any]:
    """A new run's settings: the defaults, overridden by the options given.

    The backend is ``--backend``, else ``XPDL_BACKEND``, else ``auto``.
    """
    fold_batchnorm_option(args)
    model_defaults = MODEL_DEFAULTS.get(getattr(args, "model", None) or DEFAULTS["model"], {})
    settings = {
        k: (v if (v := getattr(args, k, None)) is not None else model_defaults.get(k, default))
        for k, default in DEFAULTS.items()
    }
    if args.backend is None:
        settings["backend"] = env_backend_name()
    if settings["weight_decay"] is not None and settings["update_rule"] != "adamw":
        raise UsageError(
            f"--weight-decay: only --update-rule adamw decays weights, got --update-rule "
            f"{settings['update_rule']} (use --reg for an L2 penalty)"
        )
    try:
        SETTINGS_SCHEMA.check(settings, "settings")  # what the options' parsers checked, for runs built in Python
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return settings


def fold_batchnorm_option(args: TrainingRun) -> None:
    """``--batchnorm`` / ``--no-batchnorm`` as ``--normalization batchnorm`` / ``none``; a contradiction is refused."""
    flag = getattr(args, "batchnorm", None)
    if flag is None:
        return
    implied = "batchnorm" if flag else "none"
    if getattr(args, "normalization", None) not in (None, implied):
        raise UsageError(f"--{'' if flag else 'no-'}batchnorm contradicts --normalization {args.normalization}")
    args.normalization = implied


def _normalization(settings: dict[str, Any]) -> str | None:
    """The ``normalization`` argument of :class:`FullyConnectedNet` for a run's settings."""
    return None if settings["normalization"] == "none" else settings["normalization"]


def migrate_settings(saved: dict[str, Any]) -> dict[str, Any]:
    """Settings saved before ``normalization`` existed: ``batchnorm: true/false`` becomes it."""
    saved = dict(saved)
    if "batchnorm" in saved:
        flag = saved.pop("batchnorm")
        saved.setdefault("normalization", "batchnorm" if flag else "none")
    return saved


def env_backend_name() -> str:
    """The backend ``XPDL_BACKEND`` names (``auto`` when unset); UsageError naming the variable otherwise."""
    try:
        return default_backend_name()
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def resumed_settings(saved: dict[str, Any], args: TrainingRun) -> dict[str, Any]:
    """A resumed run's settings: the saved ones, with the options ``--resume`` may change.

    Raises:
        UsageError: an option that defines the run was given with a different value.
    """
    fold_batchnorm_option(args)
    settings = {**DEFAULTS, **migrate_settings(saved)}
    conflicts = []
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is None:
            continue
        if key in RESUMABLE:
            settings[key] = value
        elif value != settings[key]:
            conflicts.append(f"--{key.replace('_', '-')} (saved {settings[key]!r}, given {value!r})")
    if conflicts:
        raise UsageError(
            f"--resume continues a run with its saved settings; these cannot change: "
            f"{', '.join(conflicts)}. Start a new run to change them."
        )
    if args.out is not None:
        raise UsageError("--out cannot be combined with --resume: a resumed run writes into its own folder")
    return settings


def trainer_options(settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :class:`Trainer` for a run's settings."""
    config = {"learning_rate": settings["lr"]}
    if settings.get("weight_decay") is not None:
        config["weight_decay"] = settings["weight_decay"]
    return {
        "update_rule": settings["update_rule"],
        "updater_config": config,
        "lr_decay": settings["lr_decay"],
        "batch_size": settings["batch_size"],
        "num_epochs": settings["epochs"],
        "seed": settings["seed"],
        "verbose": False,
        "comm": distributed.init(),
        "local_batchnorm": bool(settings["local_batchnorm"]),
    }


def open_backend(name: str | None, option: str = "--backend") -> Backend:
    """The backend called ``name`` (None: ``XPDL_BACKEND`` or ``auto``); UsageError saying why it cannot run here.

    The message names where the name came from: ``option`` or the ``XPDL_BACKEND`` variable.
    """
    source = f"{option} {name}" if name is not None else f"{ENV_VARIABLE}={os.environ.get(ENV_VARIABLE, '')}"
    if name is None:
        env_backend_name()  # a bad variable is reported as such
    try:
        return get_backend(name)
    except (BackendUnavailable, ValueError) as exc:
        text = str(exc)
        raise UsageError(text if text.startswith(ENV_VARIABLE) else f"{source}: {text}") from None


def check_backend_before_start(name: str | None, option: str = "--backend") -> None:
    """UsageError when backend ``name`` (None: ``XPDL_BACKEND``) cannot run, checked before ranks or workers start.

    ``auto`` always runs. A CuPy name is refused here only when CuPy is not installed:
    this process opens no GPU (the ranks and workers check their devices themselves).
    """
    resolved = name if name is not None else env_backend_name()
    if resolved == "auto":
        return
    if resolved.startswith("cupy"):
        import importlib.util

        if importlib.util.find_spec("cupy") is None:
            open_backend(name, option)  # the backend's own message, naming the option or the variable
        return
    open_backend(name, option)


def auto_num_val(name: str, num_train: int) -> int:
    """Validation images for a dataset of ``num_train`` training images: its usual split, at most a quarter."""
    return max(1, min(default_num_val(name), num_train // 4))


def load_data(settings: dict[str, Any]) -> dict[str, Any]:
    """The run's dataset, split (``num_val``) and preprocessed with its seed and dtype.

    Raises:
        UsageError: ``--data-dir`` is a file or cannot be read or written, or the dataset
            has too few training images for the validation split.
    """
    name, data_dir = settings["data"], Path(settings["data_dir"])
    raw = read_raw(name, data_dir, bool(settings["download"]))
    n = len(raw["y_train"])
    if n < 2:
        raise UsageError(
            f"--data {name}: {data_dir} holds {n} training images; training needs at least 2 "
            "(some for training, one or more for validation)"
        )
    num_val = settings["num_val"] or auto_num_val(name, n)
    if num_val >= n:
        raise UsageError(
            f"--num-val {num_val}: expected fewer than the {n} training images of {name} (in {data_dir}), got {num_val}"
        )
    split_seed = settings["seed"] if settings.get("split_seed") is None else settings["split_seed"]
    return prepare(raw, num_val=num_val, seed=split_seed, dtype=settings["dtype"])


def read_raw(name: str, data_dir: Path, download: bool) -> dict[str, Any]:
    """:func:`load_raw`, with file-system problems of ``--data-dir`` as one-line UsageErrors."""
    if name != "digits" and data_dir.exists() and not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir}: exists and is not a folder")
    try:
        return load_raw(name, data_dir=data_dir, download=download)
    except OSError as exc:
        raise UsageError(
            f"--data-dir {data_dir}: cannot {'download into' if download else 'read'} it: {describe_os_error(exc)}"
        ) from None


def preprocessing_meta(data: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint keeps to preprocess new data like the training data."""
    return {
        "dataset": data["name"],
        "scale": float(data["scale"]),
        "mean_image": data["mean_image"],
        "image_shape": list(data["image_shape"]),
        "classes": list(data["classes"]),
    }


def build_trainer(settings: dict[str, Any], data: dict[str, Any], backend: Backend) -> Trainer:
    """The net and trainer of a new run; a setting they refuse is a UsageError."""
    model, norm = settings.get("model", "fc"), settings["normalization"]
    if (model == "fc" and norm == "groupnorm") or (model != "fc" and norm == "layernorm"):
        kinds = "fully-connected nets (--model fc)" if norm == "layernorm" else "conv nets (--model conv)"
        raise UsageError(
            f"--normalization {norm}: only {kinds} have it; --model {model} takes "
            + ("batchnorm, layernorm or none" if model == "fc" else "batchnorm, groupnorm or none")
        )
    try:
        if model != "fc":
            return Trainer(build_conv_net(settings, data, backend), data, **trainer_options(settings))
        net = FullyConnectedNet(
            input_dim=int(data["X_train"].shape[1]),
            hidden_dims=settings["hidden_dims"],
            num_classes=int(data["num_classes"]),
            dropout=settings["dropout"],
            normalization=_normalization(settings),
            reg=settings["reg"],
            weight_scale=settings["weight_scale"],
            seed=settings["seed"],
            dtype=settings["dtype"],
            backend=backend,
        )
        return Trainer(net, data, **trainer_options(settings))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"these settings cannot train: {exc}") from None


def build_conv_net(settings: dict[str, Any], data: dict[str, Any], backend: Backend) -> ConvNet:
    """The :class:`xpdl.ConvNet` of ``--model conv`` or ``three-layer-conv``, shaped by the dataset's images.

    xpdl's datasets hold (H, W, C) images flattened, so the net reads them channels-last.
    """
    h, w, c = (int(s) for s in data["image_shape"])
    if settings["model"] == "three-layer-conv" and len(settings["conv_dims"]) != 1:
        raise ValueError(f"conv_dims: three-layer-conv has one conv layer, got {settings['conv_dims']}")
    if settings["model"] == "three-layer-conv" and len(settings["hidden_dims"]) != 1:
        raise ValueError(f"hidden_dims: three-layer-conv has one hidden layer, got {settings['hidden_dims']}")
    return ConvNet(
        input_dim=(c, h, w),
        conv_dims=settings["conv_dims"],
        filter_size=settings["filter_size"],
        hidden_dims=settings["hidden_dims"],
        num_classes=int(data["num_classes"]),
        normalization=_normalization(settings),
        dropout=settings["dropout"],
        reg=settings["reg"],
        weight_scale=settings["weight_scale"],
        seed=settings["seed"],
        dtype=settings["dtype"],
        backend=backend,
        channels_last=True,
    )


@dataclass
class Session:
    """Everything one ``xpdl train`` invocation works with."""

    run: RunFolder
    settings: dict[str, Any]
    data: dict[str, Any]
    backend: Backend
    trainer: Trainer
    recorder: RunRecorder
    resumed: bool

    @property
    def folder(self) -> Path:
        """The run folder."""
        return self.run.path


def start_session(args: TrainingRun) -> Session:
    """Set up a new run from the options; the run folder is taken last, once everything else worked."""
    settings = new_settings(args)
    comm = distributed.init()
    name = distributed.rank_backend_name(settings["backend"], comm) if comm.size > 1 else args.backend
    backend = open_backend(name)
    data = load_data(settings)
    trainer = build_trainer(settings, data, backend)
    try:
        run = _on_root_folder(comm, lambda: RunFolder.create(args.out))
    except RunFolderError as exc:
        raise UsageError(str(exc)) from None
    return _session(run, settings, data, backend, trainer, resumed=False)


def _on_root_folder(comm: distributed.Communicator, take: Callable[[], RunFolder]) -> RunFolder:
    """Rank 0 takes (and locks) the run folder; the other ranks get a view of it that writes nothing."""
    if comm.size == 1:
        return take()
    holder: list[RunFolder] = []
    path = distributed.on_root(comm, lambda: str(holder.append(take()) or holder[0].path))
    return holder[0] if holder else RunFolder.view(Path(path))


def resume_session(args: TrainingRun) -> Session:
    """Set up a run continued from its ``checkpoint.npz`` (the folder is locked first)."""
    comm = distributed.init()
    try:
        run = _on_root_folder(comm, lambda: RunFolder.resume(args.resume)[0])
        ckpt_path = RunFolder.checkpoint_of(args.resume)
    except RunFolderError as exc:
        raise UsageError(str(exc)) from None
    try:
        return _resume(run, ckpt_path, args)
    except BaseException:
        run.release()
        raise


def _resume(run: RunFolder, ckpt_path: Path, args: TrainingRun) -> Session:
    ckpt = load_checkpoint(ckpt_path, CHECKPOINT_SPEC)
    if ckpt["kind"] != "training":
        raise UsageError(f"--resume {args.resume}: {ckpt_path} is a model file, not a training checkpoint")
    settings = resumed_settings(ckpt["settings"], args)
    backend = open_backend(
        distributed.rank_backend_name(settings["backend"], distributed.init()),
        option="--backend" if args.backend else "saved backend",
    )
    data = load_data(settings)
    saved_mean = ckpt["preprocessing"].get("mean_image")
    if saved_mean is not None and not np.array_equal(saved_mean, data["mean_image"]):
        print(
            f"xpdl: warning: the {settings['data']} training data differs from the run's "
            "(its mean image changed); the continuation will not match an uninterrupted run",
            file=sys.stderr,
        )
    try:
        trainer = Trainer(build_model(ckpt, backend, seed=settings["seed"]), data, **trainer_options(settings))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--resume {args.resume}: the saved settings cannot train here: {exc}") from None
    restore_trainer(ckpt, trainer)
    done = trainer.t / trainer.iterations_per_epoch
    if trainer.t > trainer.num_iterations:
        raise UsageError(
            f"--epochs {settings['epochs']}: the run has done {done:.4g} epochs already; "
            "expected a total of at least that many"
        )
    return _session(run, settings, data, backend, trainer, resumed=True)


def _session(
    run: RunFolder, settings: dict[str, Any], data: dict[str, Any], backend: Backend, trainer: Trainer, resumed: bool
) -> Session:
    from xpdl.plots import plot_curves  # matplotlib is imported when the curves are drawn

    meta = {"settings": settings, "preprocessing": preprocessing_meta(data)}
    recorder = RunRecorder(
        run.path, meta, backend.describe(), checkpoint_every=settings["checkpoint_every"], draw_curves=plot_curves
    )
    if distributed.init().rank != 0:  # rank 0 writes the run folder
        recorder.save = recorder.save_best = recorder.finish = lambda trainer: None
    return Session(run, settings, data, backend, trainer, recorder, resumed)


class CallbackFailed(Exception):
    """Carries an exception raised by :func:`train`'s ``epoch_callback`` past the error handling."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def train(run: TrainingRun, epoch_callback: Callable[[Trainer], None] | None = None) -> int:
    """Train (or resume) ``run``, write its run folder and print a summary; returns the exit code.

    It writes the run folder exactly as ``xpdl train``. ``epoch_callback(trainer)``
    is called after every epoch's accuracy check (once that epoch's files are
    written); an exception it raises propagates to the caller after the run folder
    has been finalized (``history.json`` and ``curves.png`` written, the lock released).
    """
    try:
        return run_command("train", lambda: run_training(run, epoch_callback), quiet=run.quiet)
    except CallbackFailed as exc:
        raise exc.error from None


def run_training(run: TrainingRun, epoch_callback: Callable[[Trainer], None] | None = None) -> int:
    """:func:`train` without the error reporting: user errors raise (:class:`UsageError`, ...)."""
    run = dataclasses.replace(run)  # the settings below fold options into it; the caller's stays as given
    comm = distributed.init(quiet_others=True)
    session = resume_session(run) if run.resume else start_session(run)
    with session.run:
        trainer = session.trainer
        if session.resumed and trainer.t >= trainer.num_iterations:
            session.recorder.finish(trainer)  # in case the run was stopped while drawing its curves
            print(
                f"{session.folder}: the run is complete ({plural(trainer.epoch, 'epoch')}); "
                f"pass --epochs N with N > {trainer.epoch} to train further"
            )
            return 0
        if not run.quiet:
            print(header(session))
        t0 = trainer.t
        seconds = train_with_progress(session, Progress(choose_mode(run.quiet)), epoch_callback)
        if seconds is None:
            return 130
        session.recorder.finish(trainer)
        if comm.rank == 0:
            from xpdl.plots import write_weights  # matplotlib loads only when a run ends

            write_weights(session.folder, trainer.model, session.data["image_shape"])
        print(summary(session, trainer.t - t0, seconds))
        return 0


def train_with_progress(
    session: Session, progress: Progress, epoch_callback: Callable[[Trainer], None] | None = None
) -> float | None:
    """Train with the run folder's recorder and ``progress`` called after every iteration.

    ``epoch_callback(trainer)`` runs after every epoch's accuracy check, once that
    epoch's files are written. NumPy's floating-point warnings are silenced: a
    diverging loss is reported once, by the Trainer.

    Returns:
        Wall-clock seconds of :meth:`Trainer.train`, or None after Ctrl-C.

    Raises:
        FloatingPointError: training diverged; ``history.json`` and ``curves.png`` are
            written up to the failure first.
        CallbackFailed: ``epoch_callback`` raised; the run folder is finalized first.
        RunFolderError: a run file could not be written; a new run that has no
            checkpoint yet is removed.
    """
    trainer = session.trainer

    def on_iteration(tr: Trainer) -> None:
        session.recorder(tr)
        progress(tr)
        if epoch_callback is not None and tr.t % tr.iterations_per_epoch == 0:
            try:
                epoch_callback(tr)
            except Exception as exc:
                raise CallbackFailed(exc) from exc

    trainer.on_iteration = on_iteration
    start = time.perf_counter()
    try:
        with np.errstate(all="ignore"):
            session.recorder.start(trainer)
            trainer.train()
    except KeyboardInterrupt:
        progress.close()
        _interrupted(session)
        return None
    except (FloatingPointError, CallbackFailed):
        progress.close()
        with np.errstate(all="ignore"):
            session.recorder.finish(trainer)
        raise
    except RunFolderError as exc:
        progress.close()
        raise UsageError(_write_failure(session, exc)) from None
    finally:
        progress.close()
    return time.perf_counter() - start


def _interrupted(session: Session) -> None:
    """After Ctrl-C: say how to continue, or remove a new run that saved no checkpoint yet."""
    t = session.trainer.t
    if session.run.holds_checkpoint():
        print(
            f"\ninterrupted at iteration {t}; continue from the last checkpoint with: "
            f"xpdl train --resume {session.folder}",
            file=sys.stderr,
        )
        return
    session.run.discard()
    print(
        f"\ninterrupted at iteration {t}, before the first checkpoint; nothing was kept ({session.folder} removed)"
        if session.run.created
        else f"\ninterrupted at iteration {t}, before the first checkpoint; nothing was kept",
        file=sys.stderr,
    )


def _write_failure(session: Session, exc: RunFolderError) -> str:
    """The message for a run file that could not be written; a new run without a checkpoint is removed."""
    if session.run.holds_checkpoint():
        return (
            f"{exc}; the last checkpoint is intact: continue with xpdl train --resume {session.folder} "
            "once the problem is fixed"
        )
    session.run.discard()
    return f"{exc}; nothing of the run was kept"


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def describe_net(net: FullyConnectedNet) -> str:
    """E.g. ``64-256-256-10, batch norm, dropout keep 0.8, float32``, from the net's actual config.

    Normalization and dropout act on hidden layers only, so a net without any has neither.
    """
    config = net.config()
    hidden = config["hidden_dims"]
    parts = ["-".join(str(d) for d in [config["input_dim"], *hidden, config["num_classes"]])]
    if config.get("model") == "conv":
        k = config["filter_size"]
        convs = "-".join(f"conv{k}x{k}:{f}" for f in config["conv_dims"])
        parts = [
            "x".join(map(str, config["input_dim"]))
            + f"-{convs}-"
            + "-".join(map(str, [*hidden, config["num_classes"]]))
        ]
        if config.get("normalization"):
            parts.append({"batchnorm": "spatial batch norm", "groupnorm": "group norm"}[config["normalization"]])
    norm = config.get("normalization")
    if hidden and norm:
        parts.append({"batchnorm": "batch norm", "layernorm": "layer norm"}.get(norm, str(norm)))
    if hidden and config["dropout"]:
        parts.append(f"dropout keep {config['dropout']:g}")
    if config["reg"]:
        parts.append(f"reg {config['reg']:g}")
    parts.append(config["dtype"])
    return ", ".join(parts)


def batch_used(trainer: Trainer) -> int:
    """Samples per step: ``min(batch_size, training images)``."""
    return min(trainer.batch_size, int(trainer.X_train.shape[0]))


def header(session: Session) -> str:
    """Two lines saying what is trained, on what, and where it is saved."""
    s, tr, data = session.settings, session.trainer, session.data
    n_train, n_val, n_test = (len(data[k]) for k in ("y_train", "y_val", "y_test"))
    verb = (
        f"resuming {session.folder} at epoch {tr.t / tr.iterations_per_epoch:.4g}"
        if session.resumed
        else f"run {session.folder}"
    )
    batch = batch_used(tr)
    batch_text = (
        f"batch {batch}"
        if batch == tr.batch_size
        else f"batch {batch} (all {n_train} training images; --batch-size {tr.batch_size})"
    )
    ranks = tr.comm.size
    where = session.backend.describe() + (f", {ranks} ranks (--nproc {ranks})" if ranks > 1 else "")
    return (
        f"{verb}: {s['data']} ({n_train} train / {n_val} val / {n_test} test) on {where}\n"
        f"net {describe_net(tr.model)}; {s['update_rule']} lr {s['lr']:g} decay {s['lr_decay']:g}, "
        f"{batch_text}, {plural(s['epochs'], 'epoch')} x {plural(tr.iterations_per_epoch, 'iteration')}"
    )


def summary(session: Session, iterations: int, seconds: float) -> str:
    """The final line: best validation accuracy, test accuracy, wall time, samples per second, device."""
    tr, data = session.trainer, session.data
    test_acc = float(np.mean(tr.model.predict(data["X_test"]) == data["y_test"])) if len(data["y_test"]) else 0.0
    doc = session.recorder.history(tr)
    rate = iterations * batch_used(tr) / seconds if seconds > 0 else 0.0
    timing = f"{plural(iterations, 'iteration')} in {seconds:.1f} s ({rate:,.0f} samples/s)"
    if session.resumed:  # the totals, as the epoch lines count them, then this session's share
        timing = (
            f"{plural(tr.t, 'iteration')} in {tr.train_seconds:.1f} s in all ({iterations} in {seconds:.1f} s "
            f"since the resume, {rate:,.0f} samples/s)"
        )
    return (
        f"best val acc {tr.best_val_acc:.4f} (epoch {doc['best_epoch']:.3g}), test acc {test_acc:.4f}; "
        f"{timing} on {session.backend.describe()}; saved in {session.folder}/"
    )


def run_command(command: str, run: Callable[[], int], quiet: bool = False) -> int:
    """Run one command; user errors become one line on stderr and exit code 2 (see the module docstring)."""
    try:
        with _quiet_backend_notes(quiet):
            return run()
    except (UsageError, DatasetError, CheckpointError, RunFolderError) as exc:
        print(f"xpdl {command}: error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"xpdl {command}: training diverged: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nxpdl {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # whatever read the output stopped reading (xpdl evaluate RUN | head): no traceback
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter's final flush must not fail again
        return 141
    except OSError as exc:  # a file that cannot be written (WriteError names it) or read
        print(
            f"xpdl {command}: error: {exc if isinstance(exc, WriteError) else describe_os_error(exc)}", file=sys.stderr
        )
        return 2


@contextlib.contextmanager
def _quiet_backend_notes(quiet: bool) -> Iterator[None]:
    """Under ``--quiet``, silence the backend's one-line note (``XPDL_QUIET=1``) for the command's duration."""
    if not quiet:
        yield
        return
    before = os.environ.get("XPDL_QUIET")
    os.environ["XPDL_QUIET"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("XPDL_QUIET", None)
        else:
            os.environ["XPDL_QUIET"] = before
