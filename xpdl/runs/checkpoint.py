"""Checkpoints: one ``.npz`` file that holds a model, or everything needed to continue training it.

The format knows arrays and metadata, not a model class or datasets: what the
metadata must describe (how to check an architecture config, the arrays it
implies, the update rules, the dataset names, the run settings) comes in a
:class:`CheckpointSpec` from the code that knows the model
(:data:`xpdl.runs.net_checkpoint.SPEC` for :class:`xpdl.FullyConnectedNet`).

File layout (format ``"xpdl-checkpoint"``, version :data:`FORMAT_VERSION`): a zip
archive of uncompressed ``.npy`` entries, as :func:`numpy.savez` writes it.

- ``meta.json``: uint8 array holding UTF-8 JSON: format, version, ``kind``
  (``"training"`` or ``"model"``), the net's ``config`` (architecture and dtype),
  ``preprocessing`` (dataset name, pixel ``scale``, ``image_shape``, ``classes``),
  the run ``settings``, free-form ``info``, and a manifest ``arrays`` giving the
  shape, dtype and CRC-32 of every other entry. ``training`` files add
  ``update_rule``, ``counters`` (t, epoch, best_val_acc, train_seconds),
  ``history`` (the Trainer's lists), the scalar part of every parameter's
  update-rule config (``updater_scalars``), and ``rng`` (Philox key and counter
  as decimal strings: they are 128- and 256-bit integers).
- ``model/<name>``: the model's state arrays in the net's dtype.
- ``best/<name>``: the same for the best validation accuracy (``training`` only).
- ``updater/<param>/<key>``: update-rule arrays (``m``, ``v``, ``velocity``,
  ``cache``) of every parameter (``training`` only).
- ``preprocessing/mean_image``: (D,) mean of the scaled training split.

A file is untrusted input. :func:`load_checkpoint` never unpickles and never
inflates: it reads the zip directory first (entry names, sizes, compression),
then ``meta.json`` alone (at most :data:`MAX_META_BYTES`), checks the whole
document against one declared schema (:mod:`xpdl.runs.schema`) and the config with the
spec (allocating nothing), derives every array's name, shape and dtype from the
architecture, checks the manifest and the directory against that, and only then
reads the arrays, each exactly its size (so memory is bounded by the file's size
and by what the architecture implies), checking CRC-32 and finiteness. Any
problem raises :class:`CheckpointError` naming the file and the field, before
anything is built or changed.

Files are written atomically (:func:`xpdl.runs.atomic.atomic_write`): a crash or
``SIGKILL`` during a save leaves the previous file intact.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xpdl.runs.atomic import atomic_write
from xpdl.runs.schema import (
    AnyJSON,
    Check,
    Int,
    ListOf,
    MapOf,
    Node,
    Nullable,
    Number,
    Obj,
    SchemaError,
    Str,
)

FORMAT_NAME = "xpdl-checkpoint"
FORMAT_VERSION = 1
META_ENTRY = "meta.json"
KINDS = ("training", "model")
#: Largest ``meta.json`` entry read (bytes); a run's histories take about 20 bytes per iteration.
MAX_META_BYTES = 64 * 2**20
#: Largest ``.npy`` header (bytes) of an entry; NumPy writes 128 for the arrays of a checkpoint.
MAX_NPY_HEADER = 4096
#: Longest array name (characters) and most dimensions of an entry.
MAX_NAME = 200
MAX_DIMS = 8


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted, foreign or inconsistent."""


@dataclass(frozen=True)
class CheckpointSpec:
    """What a checkpoint's metadata must describe, given by the code that knows the model.

    Attributes:
        check_config: ``check_config(**config) -> dict``: the architecture config checked and
            normalized without allocating anything; TypeError/ValueError naming the field.
        state_shapes: ``state_shapes(config) -> {array name: shape}`` for a checked config.
        param_names: ``param_names(config) -> [name]``: the arrays that have update-rule state.
        update_rules: rule name -> (hyperparameter defaults, names of its state arrays).
        datasets: the names ``preprocessing.dataset`` may take (None: any string).
        settings: the schema of ``settings`` (the run's options).
    """

    check_config: Callable[..., dict[str, Any]]
    state_shapes: Callable[[dict[str, Any]], dict[str, tuple[int, ...]]]
    param_names: Callable[[dict[str, Any]], list[str]]
    update_rules: Mapping[str, tuple[Mapping[str, Any], Sequence[str]]]
    datasets: Sequence[str] | None = None
    settings: Node = field(default_factory=lambda: MapOf(AnyJSON(max_depth=4), max_len=200))


# ---------------------------------------------------------------- saving
def save_checkpoint(path: str | os.PathLike[str], trainer: Any, meta: dict[str, Any]) -> Path:
    """Save everything needed to continue ``trainer`` exactly (kind ``"training"``).

    Args:
        path: the ``.npz`` file to write (atomically).
        trainer: a :class:`xpdl.Trainer` (its ``get_state()``, ``update_rule_name`` and
            ``model.config()`` are saved).
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


def save_model(
    path: str | os.PathLike[str], model: Any, meta: dict[str, Any], arrays: dict[str, Any] | None = None
) -> Path:
    """Save a model alone (kind ``"model"``): ``arrays`` (default: ``model.state_arrays()``) and ``meta``.

    ``model`` needs ``config()``, ``state_arrays()`` and ``backend.to_numpy``. ``arrays``
    lets a caller save other weights of the same architecture, e.g. the trainer's
    ``best_state``; arrays of any backend are copied to the host.
    """
    state = model.state_arrays() if arrays is None else arrays
    host = {k: np.asarray(model.backend.to_numpy(v)) for k, v in state.items()}
    return _write(path, model.config(), _group("model", host), {"kind": "model"}, meta)


def _group(prefix: str, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    return {f"{prefix}/{k}": np.asarray(v) for k, v in arrays.items()}


def _write(
    path: str | os.PathLike[str], config: dict, arrays: dict[str, np.ndarray], header: dict, meta: dict[str, Any]
) -> Path:
    """Assemble ``meta.json`` (with the array manifest) and write the archive atomically."""
    preprocessing = dict(meta.get("preprocessing") or {})
    mean_image = preprocessing.pop("mean_image", None)
    if mean_image is not None:
        arrays["preprocessing/mean_image"] = np.asarray(mean_image)
    from xpdl.version import __version__

    doc = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        **header,
        "config": config,
        "preprocessing": preprocessing,
        "settings": meta.get("settings") or {},
        "info": meta.get("info") or {},
        "xpdl_version": __version__,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "arrays": {name: _describe(a) for name, a in arrays.items()},
    }
    entries = {META_ENTRY: np.frombuffer(json.dumps(doc).encode("utf-8"), dtype=np.uint8), **arrays}
    return atomic_write(path, lambda f: np.savez(f, **entries))


def _describe(a: np.ndarray) -> dict[str, Any]:
    return {"shape": list(a.shape), "dtype": a.dtype.str, "crc32": _crc32(a)}


def _crc32(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1)) if a.size else 0


# ---------------------------------------------------------------- loading
def load_checkpoint(path: str | os.PathLike[str], spec: CheckpointSpec) -> dict[str, Any]:
    """Read and check a checkpoint (see the module docstring); nothing is built or changed.

    Returns:
        dict with ``path``, ``kind``, ``version``, ``config`` (normalized by
        ``spec.check_config``), ``model`` (name -> host array), ``preprocessing``
        (with ``mean_image`` as a (D,) array or None), ``settings``, ``info``,
        ``saved_at``, ``xpdl_version``; ``training`` files add ``best``,
        ``updater`` ({param: {key: array or scalar}}), ``update_rule``,
        ``counters``, ``history`` and ``rng`` ({"key": int, "counter": int}).

    Raises:
        CheckpointError: naming the file and the problem: missing, not an ``.npz``
            archive, truncated, corrupted (CRC mismatch), compressed, written by
            another program or a newer format, a ``meta.json`` field that does not fit
            the schema, or arrays that do not fit the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no such checkpoint file"
            if not path.exists()
            else f"{path}: not a checkpoint file (a folder or a device)"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            directory = _directory(path, zf)
            doc = _read_meta(path, zf, directory)
            ckpt, expected = _check_document(path, doc, spec)
            _check_directory(path, directory, expected)
            arrays = {name: _read_array(path, zf, directory[name], name, want) for name, want in expected.items()}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as exc:
        raise CheckpointError(_unreadable(path, exc)) from None
    ckpt["path"] = str(path)
    _fill_arrays(ckpt, arrays)
    return ckpt


def _unreadable(path: Path, exc: Exception) -> str:
    """The message for a file that zipfile or the .npy reader refused."""
    with open(path, "rb") as f:
        start = f.read(6)
    if start == b"\x93NUMPY":
        return f"{path}: not an xpdl checkpoint (a single .npy array, not an .npz archive)"
    if not start.startswith(b"PK"):
        return f"{path}: cannot be read as a checkpoint: not an .npz (zip) archive"
    return f"{path}: cannot be read as an .npz archive (truncated or corrupted?): {type(exc).__name__}: {exc}"


def _directory(path: Path, zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's entries by array name, checked before anything is inflated.

    Every entry must be a ``NAME.npy`` stored uncompressed (what :func:`numpy.savez` writes),
    each name once, and the declared sizes together no larger than the file.
    """
    directory: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in zf.infolist():
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if not info.filename.endswith(".npy") or len(name) > MAX_NAME or name in directory:
            problem = "appears twice" if name in directory else "is not a NAME.npy array entry"
            raise CheckpointError(f"{path}: entry {info.filename[:MAX_NAME]!r} {problem} (not an xpdl checkpoint?)")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise CheckpointError(
                f"{path}: entry {name!r} is compressed (zip method {info.compress_type}); "
                "xpdl checkpoints store their arrays uncompressed, as numpy.savez writes them"
            )
        directory[name] = info
        total += info.file_size
    size = path.stat().st_size
    if total > size:
        raise CheckpointError(
            f"{path}: the zip directory declares {total} bytes of entries in a {size}-byte file (truncated or crafted)"
        )
    if META_ENTRY not in directory:
        raise CheckpointError(
            f"{path}: not an xpdl checkpoint (no {META_ENTRY!r} entry; entries: {sorted(directory)[:8]})"
        )
    return directory


def _read_meta(path: Path, zf: zipfile.ZipFile, directory: dict[str, zipfile.ZipInfo]) -> dict[str, Any]:
    """The decoded ``meta.json`` entry (at most :data:`MAX_META_BYTES`), checked for format and version."""
    info = directory[META_ENTRY]
    if info.file_size > MAX_META_BYTES + MAX_NPY_HEADER:
        raise CheckpointError(f"{path}: {META_ENTRY} is {info.file_size} bytes; at most {MAX_META_BYTES} are read")
    raw = _read_array(path, zf, info, META_ENTRY, None)
    try:
        doc = json.loads(raw.tobytes().decode("utf-8"))
    except RecursionError:
        raise CheckpointError(f"{path}: {META_ENTRY} nests too deeply to be an xpdl checkpoint") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {META_ENTRY} is not valid JSON (corrupted?): {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise CheckpointError(f"{path}: not an xpdl checkpoint (format {repr(found)[:60]}, expected {FORMAT_NAME!r})")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: {META_ENTRY}: version: format version {repr(version)[:40]}; this xpdl "
            f"reads versions 1..{FORMAT_VERSION} (written by a newer xpdl?)"
        )
    return doc


# ---------------------------------------------------------------- the schema
def _decimal_below(limit: int) -> Callable[[str], str]:
    return lambda text: "" if int(text) < limit else f"a decimal integer below 2**{limit.bit_length() - 1}"


RNG_SCHEMA = Obj(
    {
        "key": Check(Str(pattern=r"[0-9]{1,39}"), _decimal_below(2**128)),
        "counter": Check(Str(pattern=r"[0-9]{1,78}"), _decimal_below(2**256)),
    },
    required={"key", "counter"},
)
ACCURACY = Number(ge=0, le=1)
HISTORY_SCHEMA = Obj(
    {
        "loss_history": ListOf(Number()),
        "train_acc_history": ListOf(ACCURACY),
        "val_acc_history": ListOf(ACCURACY),
        "lr_history": ListOf(Nullable(Number(ge=0))),
        "time_history": ListOf(Number(ge=0)),
        "check_iterations": ListOf(Int(min=0)),
    },
    required={"loss_history", "train_acc_history", "val_acc_history"},
    extra=ListOf(Nullable(Number())),
)
COUNTERS_SCHEMA = Obj(
    {"t": Int(min=0), "epoch": Int(min=0), "best_val_acc": Number(ge=-1, le=1), "train_seconds": Number(ge=0)},
    required={"t", "epoch", "best_val_acc"},
    extra=Nullable(Number()),
)
MANIFEST_ENTRY = Obj(
    {"shape": ListOf(Int(min=0), max_len=MAX_DIMS), "dtype": Str(max_len=8), "crc32": Int(min=0, max=2**32 - 1)},
    required={"shape", "dtype", "crc32"},
)


def _document_schema(spec: CheckpointSpec, kind: str, config: dict[str, Any]) -> Obj:
    """The schema of a whole ``meta.json`` of ``kind`` for a checked architecture ``config``."""
    input_dim, num_classes = _features(config.get("input_dim")), config.get("num_classes")

    def fits_input(shape: list[int]) -> str:
        return "" if input_dim is None or math.prod(shape) == input_dim else f"a shape of {input_dim} values"

    preprocessing = Obj(
        {
            "dataset": Str(choices=spec.datasets, max_len=100),
            "scale": Number(gt=0),
            "image_shape": Check(ListOf(Int(min=1), min_len=1, max_len=4), fits_input),
            "classes": ListOf(Str(max_len=200), min_len=num_classes or 0, max_len=num_classes or 100_000),
        }
    )
    fields: dict[str, Node] = {
        "format": Str(),
        "version": Int(min=1, max=FORMAT_VERSION),
        "kind": Str(choices=KINDS),
        "config": AnyJSON(max_depth=2),
        "preprocessing": preprocessing,
        "settings": spec.settings,
        "info": MapOf(AnyJSON(max_depth=8), max_len=200),
        "xpdl_version": Str(max_len=100),
        "saved_at": Str(max_len=100),
        "arrays": MapOf(MANIFEST_ENTRY, key_pattern=f".{{1,{MAX_NAME}}}"),
    }
    required = {"format", "version", "kind", "config", "arrays"}
    if kind == "training":
        fields.update(
            update_rule=Str(choices=tuple(spec.update_rules)),
            counters=COUNTERS_SCHEMA,
            history=HISTORY_SCHEMA,
            rng=RNG_SCHEMA,
            updater_scalars=AnyJSON(max_depth=2),
        )
        required |= {"update_rule", "counters", "history", "rng", "updater_scalars"}
    return Obj(fields, required=required)


def _scalars_schema(spec: CheckpointSpec, rule: str, params: list[str], started: bool) -> Obj:
    """``updater_scalars``: one object per parameter holding only ``rule``'s hyperparameters.

    Integer defaults (Adam's ``t``) are integers >= 0, the others finite numbers, the
    learning rate >= 0; once training has started (``started``) every one must be present.
    """
    defaults = spec.update_rules[rule][0]
    fields = {
        k: Int(min=0)
        if isinstance(d, int) and not isinstance(d, bool)
        else Number(ge=0)
        if k == "learning_rate"
        else Number()
        for k, d in defaults.items()
    }
    per_param = Obj(fields, required=set(fields) if started else set())
    return Obj(dict.fromkeys(params, per_param), required=set(params))


def _check_document(
    path: Path, doc: dict[str, Any], spec: CheckpointSpec
) -> tuple[dict[str, Any], dict[str, tuple[tuple[int, ...], tuple[str, ...]]]]:
    """Check the whole ``meta.json``; returns the checkpoint dict (arrays still missing) and the expected arrays.

    The expected arrays map each entry name to (shape, accepted dtype strings).
    """
    kind = doc.get("kind")
    if kind not in KINDS:
        raise CheckpointError(f"{path}: {META_ENTRY}: kind: expected one of {list(KINDS)}, got {repr(kind)[:40]}")
    try:
        config = _check_config(spec, doc.get("config"))
        doc = _document_schema(spec, kind, config).check(doc)
        shapes = spec.state_shapes(config)
        expected = _expected_arrays(spec, doc, config, shapes)
    except SchemaError as exc:
        raise CheckpointError(f"{path}: {META_ENTRY}: {exc}") from None
    manifest = doc["arrays"]
    missing, extra = sorted(set(expected) - set(manifest)), sorted(set(manifest) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{path}: arrays do not fit the architecture in {META_ENTRY} "
            f"(missing {missing[:8]}, unexpected {extra[:8]})"
        )
    for name, (shape, dtypes) in expected.items():
        got = manifest[name]
        if tuple(got["shape"]) != shape or got["dtype"] not in dtypes:
            raise CheckpointError(
                f"{path}: {name} does not fit the architecture: expected shape {shape} "
                f"dtype {dtypes[0]}, the manifest says {tuple(got['shape'])} {got['dtype']}"
            )
    ckpt = {
        "kind": kind,
        "version": doc["version"],
        "config": config,
        "preprocessing": dict(doc.get("preprocessing", {})),
        "settings": doc.get("settings", {}),
        "info": doc.get("info", {}),
        "saved_at": doc.get("saved_at"),
        "xpdl_version": doc.get("xpdl_version"),
        "manifest": {name: {**manifest[name], "shape": expected[name][0]} for name in expected},
    }
    if kind == "training":
        ckpt.update(
            update_rule=doc["update_rule"],
            counters=doc["counters"],
            history=doc["history"],
            rng={k: int(v) for k, v in doc["rng"].items()},
            updater_scalars=doc["updater_scalars"],
        )
    return ckpt, {name: (shape, dtypes) for name, (shape, dtypes) in expected.items()}


def _features(input_dim: Any) -> Any:
    """Features per sample of a config's ``input_dim``: D, or C·H·W of an image shape (a conv net's)."""
    return math.prod(input_dim) if isinstance(input_dim, (list, tuple)) else input_dim


def _check_config(spec: CheckpointSpec, config: Any) -> dict[str, Any]:
    """``config`` checked by ``spec.check_config`` (nothing is allocated); SchemaError naming the field."""
    if not isinstance(config, dict):
        raise SchemaError("config", f"expected an object, got {repr(config)[:60]}")
    known = inspect.signature(spec.check_config).parameters
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise SchemaError(f"config.{unknown[0][:40]}", f"unknown field; expected one of {sorted(known)}")
    try:
        return spec.check_config(**config)
    except (TypeError, ValueError) as exc:
        raise SchemaError("config", str(exc)) from None


def _expected_arrays(
    spec: CheckpointSpec, doc: dict[str, Any], config: dict[str, Any], shapes: dict[str, tuple[int, ...]]
) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """Every entry the document's architecture, kind and update rule imply: name -> (shape, dtype strings).

    Optional groups (``best`` before the first accuracy check, the update-rule arrays
    before the first step, the mean image) are expected when the manifest lists any of them.
    """
    floats = _dtype_strings(config["dtype"])
    manifest = doc["arrays"]
    expected = {f"model/{k}": (tuple(s), floats) for k, s in shapes.items()}
    if "preprocessing/mean_image" in manifest:
        expected["preprocessing/mean_image"] = ((_features(config["input_dim"]),), _dtype_strings("float32", "float64"))
    if doc["kind"] != "training":
        return expected
    if any(name.startswith("best/") for name in manifest):
        expected.update({f"best/{k}": (tuple(s), floats) for k, s in shapes.items()})
    rule = doc["update_rule"]
    params = spec.param_names(config)
    started = doc["counters"]["t"] > 0
    doc["updater_scalars"] = _scalars_schema(spec, rule, params, started).check(
        doc["updater_scalars"], "updater_scalars"
    )
    state_keys = spec.update_rules[rule][1]
    listed = {name.split("/")[-1] for name in manifest if name.startswith("updater/")}
    strays = sorted(listed - set(state_keys))
    if strays:
        raise SchemaError(
            f"arrays.updater/*/{strays[0][:40]}",
            f"state array of another update rule; {rule!r} keeps {list(state_keys)}",
        )
    if started or listed:
        expected.update({f"updater/{p}/{k}": (tuple(shapes[p]), floats) for p in params for k in state_keys})
    return expected


def _dtype_strings(*names: str) -> tuple[str, ...]:
    """The manifest dtype strings of float dtypes ``names``: little-endian first, then big-endian."""
    little = tuple(np.dtype(n).newbyteorder("<").str for n in names)
    return little + tuple(np.dtype(n).newbyteorder(">").str for n in names)


def _check_directory(
    path: Path, directory: dict[str, zipfile.ZipInfo], expected: dict[str, tuple[tuple[int, ...], tuple[str, ...]]]
) -> None:
    """The archive holds exactly the expected entries, each of the size its shape and dtype imply."""
    names = set(directory) - {META_ENTRY}
    missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{path}: entries do not match the manifest (missing {missing[:8]}, unexpected {extra[:8]})"
        )
    for name, (shape, dtypes) in expected.items():
        nbytes = math.prod(shape) * np.dtype(dtypes[0]).itemsize
        size = directory[name].file_size
        if not nbytes < size <= nbytes + MAX_NPY_HEADER:
            raise CheckpointError(
                f"{path}: entry {name!r} is {size} bytes; its shape {shape} and dtype "
                f"{dtypes[0]} need {nbytes} bytes of data plus a header"
            )


def _read_array(
    path: Path,
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    name: str,
    want: tuple[tuple[int, ...], tuple[str, ...]] | None,
) -> np.ndarray:
    """One ``.npy`` entry: header checked against ``want`` (shape, dtype strings), then exactly its bytes read.

    ``want=None`` is ``meta.json``: a 1-D uint8 array. Arrays of the model, the best
    model, the update rule and the mean image must be finite.
    """
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise CheckpointError(f"{path}: entry {name!r} is .npy format version {version}; expected 1.0 or 2.0")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f, max_header_size=MAX_NPY_HEADER)
        if want is None:
            ok = dtype == np.uint8 and len(shape) == 1
            expected = "a 1-D uint8 array"
        else:
            ok = tuple(shape) == want[0] and dtype.str in want[1]
            expected = f"shape {want[0]} dtype {want[1][0]}"
        if not ok or fortran_order and len(shape) > 1:
            raise CheckpointError(
                f"{path}: entry {name!r} holds shape {tuple(shape)} dtype {dtype}, "
                f"expected {expected} (as the manifest says)"
            )
        nbytes = math.prod(shape) * dtype.itemsize
        if f.tell() + nbytes != info.file_size:
            raise CheckpointError(
                f"{path}: entry {name!r} is {info.file_size} bytes, its header says {f.tell() + nbytes}"
            )
        buf = bytearray(nbytes)
        if f.readinto(buf) != nbytes or f.read(1):
            raise CheckpointError(f"{path}: entry {name!r} is truncated")
    a = np.frombuffer(buf, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    if not dtype.isnative:
        a = a.astype(dtype.newbyteorder("="))
    if want is not None and a.size and not np.isfinite(a).all():
        raise CheckpointError(f"{path}: {name} holds NaN or infinite values")
    return a


def _fill_arrays(ckpt: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Put the checked arrays into the checkpoint dict, after their CRC-32 matched the manifest."""
    manifest = ckpt.pop("manifest")
    for name, a in arrays.items():
        if _crc32(a.astype(a.dtype.newbyteorder(manifest[name]["dtype"][0]))) != manifest[name]["crc32"]:
            raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: entry {name!r} is corrupted (CRC-32 mismatch)")
    groups: dict[str, dict[str, Any]] = {"model": {}, "best": {}, "updater": {}}
    for name, a in arrays.items():
        group, _, rest = name.partition("/")
        if group == "updater":
            param, _, key = rest.rpartition("/")
            groups["updater"].setdefault(param, {})[key] = a
        elif group in groups:
            groups[group][rest] = a
    ckpt["model"] = groups["model"]
    ckpt["preprocessing"]["mean_image"] = arrays.get("preprocessing/mean_image")
    if ckpt["kind"] == "training":
        scalars = ckpt.pop("updater_scalars")
        ckpt["best"] = groups["best"]
        ckpt["updater"] = {p: {**groups["updater"].get(p, {}), **s} for p, s in scalars.items()}


# ---------------------------------------------------------------- building
def build_model(
    ckpt: dict[str, Any],
    model_class: Callable[..., Any],
    backend: Any = None,
    which: str = "model",
    seed: int | None = 0,
) -> Any:
    """A new ``model_class(**config, seed=seed, backend=backend)`` holding the checkpoint's ``which`` arrays.

    ``which`` is ``"model"`` (the current weights) or ``"best"`` (training files).
    ``seed`` only seeds the generator a fresh net gets; :func:`restore_trainer`
    replaces its state. The class needs ``load_state_arrays``.
    """
    arrays = ckpt.get(which)
    if not arrays:
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: holds no {which!r} arrays")
    net = model_class(**ckpt["config"], seed=seed, backend=backend)
    net.load_state_arrays(arrays)
    return net


def trainer_state(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint as :meth:`Trainer.get_state` output (for :meth:`Trainer.set_state`)."""
    if ckpt.get("kind") != "training":
        raise CheckpointError(
            f"{ckpt.get('path', 'checkpoint')}: a {ckpt.get('kind')!r} file, "
            "not a training checkpoint (use checkpoint.npz, not best.npz)"
        )
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
        raise CheckpointError(
            f"{ckpt.get('path', 'checkpoint')}: saved with update rule "
            f"{ckpt['update_rule']!r}, the trainer uses {rule!r}"
        )
    try:
        trainer.set_state(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: does not fit this trainer: {exc}") from None
    return trainer
