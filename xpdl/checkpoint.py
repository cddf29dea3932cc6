"""Checkpoints: one ``.npz`` file that holds a model, or everything needed to continue training it.

File layout (format ``"xpdl-checkpoint"``, version :data:`FORMAT_VERSION`). Every
entry is a plain NumPy array; the file is read with ``np.load(allow_pickle=False)``,
so loading a checkpoint never runs code.

- ``meta.json``: uint8 array holding UTF-8 JSON: format, version, ``kind``
  (``"training"`` or ``"model"``), the net's ``config`` (architecture and dtype),
  ``preprocessing`` (dataset name, pixel ``scale``, ``image_shape``, ``classes``),
  the run ``settings``, free-form ``info``, and a manifest ``arrays`` giving the
  shape, dtype and CRC-32 of every other entry. ``training`` files add
  ``update_rule``, ``counters`` (t, epoch, best_val_acc, train_seconds),
  ``history`` (the Trainer's lists), the scalar part of every parameter's
  update-rule config, and ``rng`` (Philox key and counter as decimal strings:
  they are 128- and 256-bit integers).
- ``model/<name>``: :meth:`FullyConnectedNet.state_arrays` (params and
  ``bn{i}.running_mean/var``) in the net's dtype.
- ``best/<name>``: the same for the best validation accuracy (``training`` only).
- ``updater/<param>/<key>``: update-rule arrays (``m``, ``v``, ``velocity``,
  ``cache``) of every parameter (``training`` only).
- ``preprocessing/mean_image``: (D,) mean of the scaled training split.

Files are written atomically (:func:`atomic_write`): a crash or ``SIGKILL``
during a save leaves the previous file intact. A truncated, corrupted or foreign
file raises :class:`CheckpointError` naming the file and the problem, before any
model or trainer is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from xpdl.atomic import atomic_write
from xpdl.backend import Backend
from xpdl.fc_net import FullyConnectedNet

FORMAT_NAME = "xpdl-checkpoint"
FORMAT_VERSION = 1
META_ENTRY = "meta.json"
KINDS = ("training", "model")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted, foreign or inconsistent."""


# ---------------------------------------------------------------- temporaries
def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files left in ``folder`` by a save that was killed; returns them."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in stale:
        with contextlib.suppress(OSError):
            p.unlink()
    return stale


# ---------------------------------------------------------------- saving
def save_checkpoint(path: str | os.PathLike[str], trainer: Any, meta: dict[str, Any]) -> Path:
    """Save everything needed to continue ``trainer`` exactly (kind ``"training"``).

    Args:
        path: the ``.npz`` file to write (atomically).
        trainer: a :class:`xpdl.Trainer` whose model is a :class:`FullyConnectedNet`.
        meta: ``settings`` (dict, the run's settings), ``preprocessing`` (``dataset``,
            ``scale``, ``image_shape``, ``classes``, ``mean_image`` (D,) array) and
            optionally ``info`` (dict); all JSON-serializable except ``mean_image``.

    Call it where the trainer's state is consistent: between iterations (its
    ``on_iteration`` or ``on_epoch_end`` callback), not after :meth:`Trainer.train`
    has returned (the model then holds the best parameters, not the current ones).
    """
    state = trainer.get_state()
    arrays = _group("model", state["model"]) | _group("best", state["best"])
    scalars: dict[str, dict[str, Any]] = {}
    for p, config in state["updater"].items():
        scalars[p] = {}
        for k, v in config.items():
            if hasattr(v, "shape") and not isinstance(v, np.generic):
                arrays[f"updater/{p}/{k}"] = np.asarray(v)
            else:
                scalars[p][k] = v.item() if isinstance(v, np.generic) else v
    rule = trainer.update_rule_name
    header = {
        "kind": "training",
        "update_rule": rule if isinstance(rule, str) else getattr(rule, "__name__", str(rule)),
        "counters": state["counters"],
        "history": state["history"],
        "updater_scalars": scalars,
        "rng": {k: str(int(v)) for k, v in state["rng"].items()},
    }
    return _write(path, trainer.model.config(), arrays, header, meta)


def save_model(path: str | os.PathLike[str], model: FullyConnectedNet, meta: dict[str, Any],
               arrays: dict[str, Any] | None = None) -> Path:
    """Save a model alone (kind ``"model"``): ``arrays`` (default: ``model.state_arrays()``) and ``meta``.

    ``arrays`` lets a caller save other weights of the same architecture, e.g. the
    trainer's ``best_state``; arrays of any backend are copied to the host.
    """
    state = model.state_arrays() if arrays is None else arrays
    host = {k: np.asarray(model.backend.to_numpy(v)) for k, v in state.items()}
    return _write(path, model.config(), _group("model", host), {"kind": "model"}, meta)


def _group(prefix: str, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    return {f"{prefix}/{k}": np.asarray(v) for k, v in arrays.items()}


def _write(path: str | os.PathLike[str], config: dict, arrays: dict[str, np.ndarray], header: dict,
           meta: dict[str, Any]) -> Path:
    """Assemble ``meta.json`` (with the array manifest) and write the archive atomically."""
    preprocessing = dict(meta.get("preprocessing") or {})
    mean_image = preprocessing.pop("mean_image", None)
    if mean_image is not None:
        arrays["preprocessing/mean_image"] = np.asarray(mean_image)
    from xpdl import __version__

    doc = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **header, "config": config,
           "preprocessing": preprocessing, "settings": meta.get("settings") or {},
           "info": meta.get("info") or {}, "xpdl_version": __version__,
           "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "arrays": {name: _describe(a) for name, a in arrays.items()}}
    entries = {META_ENTRY: np.frombuffer(json.dumps(doc).encode("utf-8"), dtype=np.uint8), **arrays}
    return atomic_write(path, lambda f: np.savez(f, **entries))


def _describe(a: np.ndarray) -> dict[str, Any]:
    return {"shape": list(a.shape), "dtype": a.dtype.str, "crc32": _crc32(a)}


def _crc32(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1)) if a.size else 0


# ---------------------------------------------------------------- loading
def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a checkpoint; nothing is built or changed.

    Returns:
        dict with ``path``, ``kind``, ``version``, ``config`` (net constructor
        arguments), ``model`` (name -> host array), ``preprocessing`` (with
        ``mean_image`` as a (D,) array or None), ``settings``, ``info``,
        ``saved_at``, ``xpdl_version``; ``training`` files add ``best``,
        ``updater`` ({param: {key: array or scalar}}), ``update_rule``,
        ``counters``, ``history`` and ``rng`` ({"key": int, "counter": int}).

    Raises:
        CheckpointError: the file is missing, not an ``.npz`` archive, truncated,
            corrupted (CRC mismatch), written by another program or a newer format,
            or its arrays do not fit its architecture. The message names the file.
    """
    path = Path(path)
    entries = _read_entries(path)
    doc = _read_meta(path, entries)
    _check_manifest(path, doc, entries)
    try:
        ckpt = _unpack(doc, entries)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: inconsistent checkpoint metadata: {type(exc).__name__}: {exc}") from None
    ckpt["path"] = str(path)
    _check_shapes(path, ckpt)
    return ckpt


def _read_entries(path: Path) -> dict[str, np.ndarray]:
    """Every entry of the archive as an in-memory array (never unpickling); the file is closed after."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with open(path, "rb") as f:
            archive = np.load(f, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise CheckpointError(f"{path}: not an xpdl checkpoint (a single .npy array, not an .npz archive)")
            with archive:
                return {name: archive[name] for name in archive.files}
    except CheckpointError:
        raise
    except Exception as exc:  # zipfile, zlib and the .npy reader raise many kinds
        raise CheckpointError(f"{path}: cannot be read as an .npz archive (truncated or corrupted?): "
                              f"{type(exc).__name__}: {exc}") from None


def _read_meta(path: Path, entries: dict[str, np.ndarray]) -> dict[str, Any]:
    """The decoded ``meta.json`` entry, checked for format and version."""
    raw = entries.get(META_ENTRY)
    if raw is None:
        raise CheckpointError(f"{path}: not an xpdl checkpoint (no {META_ENTRY!r} entry; "
                              f"entries: {sorted(entries)[:8]})")
    try:
        doc = json.loads(np.asarray(raw, dtype=np.uint8).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {META_ENTRY} is not valid JSON (corrupted?): {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise CheckpointError(f"{path}: not an xpdl checkpoint (format {found!r}, expected {FORMAT_NAME!r})")
    version = doc.get("version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {version!r}; this xpdl reads versions 1..{FORMAT_VERSION} "
                              "(written by a newer xpdl?)")
    if doc.get("kind") not in KINDS:
        raise CheckpointError(f"{path}: kind {doc.get('kind')!r}, expected one of {KINDS}")
    return doc


def _check_manifest(path: Path, doc: dict[str, Any], entries: dict[str, np.ndarray]) -> None:
    """Every array listed in the manifest is present with its shape, dtype and CRC-32, and nothing else."""
    manifest = doc.get("arrays")
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: {META_ENTRY} has no array manifest")
    names = set(entries) - {META_ENTRY}
    missing, extra = sorted(set(manifest) - names), sorted(names - set(manifest))
    if missing or extra:
        raise CheckpointError(f"{path}: entries do not match the manifest (missing {missing}, unexpected {extra})")
    for name, want in manifest.items():
        a = entries[name]
        got = {"shape": list(a.shape), "dtype": a.dtype.str}
        if got != {"shape": want.get("shape"), "dtype": want.get("dtype")}:
            raise CheckpointError(f"{path}: entry {name!r} expected shape {want.get('shape')} dtype "
                                  f"{want.get('dtype')}, got shape {got['shape']} dtype {got['dtype']}")
        if _crc32(a) != want.get("crc32"):
            raise CheckpointError(f"{path}: entry {name!r} is corrupted (CRC-32 mismatch)")


def _unpack(doc: dict[str, Any], entries: dict[str, np.ndarray]) -> dict[str, Any]:
    """The loaded dict of :func:`load_checkpoint` from the meta document and the arrays."""
    groups: dict[str, dict[str, Any]] = {"model": {}, "best": {}, "updater": {}, "preprocessing": {}}
    for name, a in entries.items():
        if name == META_ENTRY:
            continue
        group, _, rest = name.partition("/")
        if group not in groups or not rest:
            raise ValueError(f"unknown entry {name!r}")
        if group == "updater":
            param, _, key = rest.rpartition("/")
            groups["updater"].setdefault(param, {})[key] = a
        else:
            groups[group][rest] = a
    preprocessing = dict(doc.get("preprocessing") or {})
    preprocessing["mean_image"] = groups["preprocessing"].get("mean_image")
    ckpt = {"kind": doc["kind"], "version": doc["version"], "config": dict(doc["config"]),
            "model": groups["model"], "preprocessing": preprocessing, "settings": doc.get("settings") or {},
            "info": doc.get("info") or {}, "saved_at": doc.get("saved_at"), "xpdl_version": doc.get("xpdl_version")}
    if doc["kind"] == "training":
        strays = sorted(set(groups["updater"]) - set(doc["updater_scalars"]))
        if strays:
            raise ValueError(f"updater arrays for parameters {strays} that have no update-rule config")
        updater = {p: dict(groups["updater"].get(p, {})) for p in doc["updater_scalars"]}
        for p, scalars in doc["updater_scalars"].items():
            updater[p].update(scalars)
        ckpt.update(best=groups["best"], updater=updater, update_rule=str(doc["update_rule"]),
                    counters=dict(doc["counters"]), history={k: list(v) for k, v in doc["history"].items()},
                    rng={k: int(doc["rng"][k]) for k in ("key", "counter")})
    return ckpt


def _check_shapes(path: Path, ckpt: dict[str, Any]) -> None:
    """The arrays fit the architecture in ``config`` (checked on a host template net)."""
    try:
        template = FullyConnectedNet(**ckpt["config"], seed=0, backend="numpy")
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: architecture config cannot build a net: {exc}") from None
    want = {k: (tuple(v.shape), template.dtype) for k, v in template.state_arrays().items()}
    groups = [("model", ckpt["model"])]
    if ckpt["kind"] == "training":
        groups.append(("best", ckpt["best"]))
    for group, arrays in groups:
        if group == "best" and not arrays:
            continue
        _check_group(path, group, arrays, want)
    if ckpt["kind"] == "training":
        params = {k: want[k] for k in template.params}
        if set(ckpt["updater"]) != set(params):
            raise CheckpointError(f"{path}: updater state for {sorted(ckpt['updater'])}, expected {sorted(params)}")
        for p, config in ckpt["updater"].items():
            arrays = {f"{p}/{k}": v for k, v in config.items() if isinstance(v, np.ndarray)}
            _check_group(path, "updater", arrays, {k: params[p] for k in arrays})


def _check_group(path: Path, group: str, arrays: dict[str, np.ndarray],
                 want: dict[str, tuple[tuple[int, ...], str]]) -> None:
    missing, extra = sorted(set(want) - set(arrays)), sorted(set(arrays) - set(want))
    if missing or extra:
        raise CheckpointError(f"{path}: {group} arrays do not fit the architecture "
                              f"(missing {missing}, unexpected {extra})")
    for k, (shape, dtype) in want.items():
        a = arrays[k]
        if tuple(a.shape) != shape or a.dtype != np.dtype(dtype):
            raise CheckpointError(f"{path}: {group}/{k} does not fit the architecture: expected shape "
                                  f"{shape} {dtype}, got {tuple(a.shape)} {a.dtype}")


# ---------------------------------------------------------------- building
def build_model(ckpt: dict[str, Any], backend: str | Backend | None = None, which: str = "model",
                seed: int | None = 0) -> FullyConnectedNet:
    """A new :class:`FullyConnectedNet` on ``backend`` holding the checkpoint's ``which`` arrays.

    ``which`` is ``"model"`` (the current weights) or ``"best"`` (training files).
    ``seed`` only seeds the generator a fresh net gets; :func:`restore_trainer`
    replaces its state.
    """
    arrays = ckpt.get(which)
    if not arrays:
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: holds no {which!r} arrays")
    net = FullyConnectedNet(**ckpt["config"], seed=seed, backend=backend)
    net.load_state_arrays(arrays)
    return net


def trainer_state(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint as :meth:`Trainer.get_state` output (for :meth:`Trainer.set_state`)."""
    if ckpt.get("kind") != "training":
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: a {ckpt.get('kind')!r} file, "
                              "not a training checkpoint (use checkpoint.npz, not best.npz)")
    return {key: ckpt[key] for key in ("counters", "history", "model", "best", "updater", "rng")}


def restore_trainer(ckpt: dict[str, Any], trainer: Any) -> Any:
    """Load a training checkpoint into ``trainer`` (and its model); returns the trainer.

    The trainer must have been built with the run's settings (update rule, batch
    size, seed, data); :meth:`Trainer.train` then continues exactly where the
    checkpoint was written.
    """
    state = trainer_state(ckpt)
    rule = trainer.update_rule_name
    if isinstance(rule, str) and rule != ckpt["update_rule"]:
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: saved with update rule "
                              f"{ckpt['update_rule']!r}, the trainer uses {rule!r}")
    trainer.set_state(state)
    return trainer
