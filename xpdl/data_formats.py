"""Readers for the on-disk formats of the supported image datasets.

Every reader returns plain NumPy host arrays without any preprocessing:

* images as ``uint8`` arrays in height-width-channel order
  (CIFAR-10: ``(N, 32, 32, 3)``; MNIST / Fashion-MNIST: ``(N, 28, 28)``),
* labels as ``int64`` arrays of shape ``(N,)``.

Any missing, truncated or malformed file raises :class:`DatasetError`, whose
message names the file, what was expected, what was found, and how to obtain
the data.
"""

from __future__ import annotations

import gzip
import importlib
import io
import os
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CIFAR10_BINARY_DIR",
    "CIFAR10_PYTHON_DIR",
    "CIFAR10_RECORD_BYTES",
    "MNIST_FILES",
    "DatasetError",
    "read_cifar10_binary",
    "read_cifar10_python",
    "read_idx",
    "read_mnist",
]

#: Folder name of the official "CIFAR-10 python version" archive.
CIFAR10_PYTHON_DIR = "cifar-10-batches-py"
#: Folder name of the official "CIFAR-10 binary version" archive.
CIFAR10_BINARY_DIR = "cifar-10-batches-bin"
#: Bytes per image in CIFAR-10 (3 channels x 32 x 32).
CIFAR10_IMAGE_BYTES = 3 * 32 * 32
#: Bytes per record of the CIFAR-10 binary version (1 label byte + pixels).
CIFAR10_RECORD_BYTES = 1 + CIFAR10_IMAGE_BYTES
#: Number of classes of CIFAR-10, MNIST and Fashion-MNIST.
NUM_CLASSES = 10
_CIFAR_TRAIN_BATCHES = 5

#: File names (without ``.gz``) of the MNIST / Fashion-MNIST distributions.
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# IDX magic numbers: two zero bytes, a type code (0x08 = unsigned byte) and
# the number of dimensions.
_IDX_MAGIC_LABELS = 0x00000801
_IDX_MAGIC_IMAGES = 0x00000803
_IDX_MAGICS = {_IDX_MAGIC_LABELS: 1, _IDX_MAGIC_IMAGES: 3}
_GZIP_MAGIC = b"\x1f\x8b"


class DatasetError(ValueError):
    """A dataset file or folder is missing, truncated or in the wrong format.

    The message names the path, what was expected, what was found, and how to
    obtain the data.
    """


def _hint(dataset: str, folder: str | os.PathLike[str]) -> str:
    """Return the "how to get the data" sentence appended to error messages."""
    return (
        f"Download it with `xpdl train --data {dataset} --download` "
        f"or unpack the official archive into {folder}."
    )


# ---------------------------------------------------------------------------
# Restricted unpickling (CIFAR-10 python version)
# ---------------------------------------------------------------------------


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` that only performs text -> bytes encoding.

    Python 3 writes ``bytes`` objects with pickle protocols 0-2 as
    ``_codecs.encode(text, 'latin1')``; nothing else is accepted.
    """
    if not isinstance(obj, str) or encoding.lower().replace("_", "-") not in (
        "latin1",
        "latin-1",
    ):
        raise pickle.UnpicklingError(
            f"_codecs.encode is only allowed on text with the latin1 codec, "
            f"got {type(obj).__name__} with codec {encoding!r}"
        )
    return obj.encode("latin1", errors)


def _numpy_attr(modules: tuple[str, ...], name: str) -> Callable[[], Any]:
    """Return a resolver for ``name`` in the first importable of ``modules``."""

    def resolve() -> Any:
        for module in modules:
            try:
                return getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"cannot find {name} in any of {modules}")

    return resolve


_RECONSTRUCT = _numpy_attr(
    ("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct"
)
_FROMBUFFER = _numpy_attr(("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer")

#: (module, name) -> resolver of every global a CIFAR-10 batch pickle may name:
#: the NumPy array reconstruction helpers (old and new module paths, pickle
#: protocols 0-5), the ndarray and dtype classes, and the text -> bytes helper
#: used for ``bytes`` by protocols 0-2.  Dicts, lists, bytes, str and int are
#: built by pickle opcodes and need no global.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list."""


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals listed in ``_ALLOWED_GLOBALS``.

    A pickle can call any importable function while loading; this class
    refuses every global that a CIFAR-10 batch file does not contain.
    """

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        resolver = _ALLOWED_GLOBALS.get((module, name))
        if resolver is None:
            raise _RefusedGlobal(
                f"{self._path}: refused to load global {module}.{name}; a CIFAR-10 "
                "batch file may only reference numpy array reconstruction "
                "(numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype)"
            )
        return resolver()


def _load_cifar_pickle(path: Path) -> Any:
    """Load one CIFAR-10 python batch file with the restricted unpickler."""
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, path).load()
    except _RefusedGlobal as exc:
        raise DatasetError(
            f"{exc}. The file is not an official CIFAR-10 batch; "
            + _hint("cifar10", path.parent.parent)
        ) from exc
    except FileNotFoundError as exc:
        raise DatasetError(
            f"{path}: file not found; expected a CIFAR-10 python batch file. "
            + _hint("cifar10", path.parent.parent)
        ) from exc
    except Exception as exc:  # truncated / corrupt pickle: many exception types
        raise DatasetError(
            f"{path}: expected a pickled CIFAR-10 batch dict, but it could not be "
            f"read ({type(exc).__name__}: {exc}); the file is truncated or corrupt. "
            + _hint("cifar10", path.parent.parent)
        ) from exc


def _cifar_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one python batch file -> (images uint8 (n,32,32,3), labels int64 (n,))."""
    hint = _hint("cifar10", path.parent.parent)
    batch = _load_cifar_pickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        found = (
            f"a dict with keys {sorted(map(repr, batch))}"
            if isinstance(batch, dict)
            else f"an object of type {type(batch).__name__}"
        )
        raise DatasetError(
            f"{path}: expected a dict with keys b'data' and b'labels' "
            f"(loaded with encoding='bytes'), found {found}. {hint}"
        )
    data = batch[b"data"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != CIFAR10_IMAGE_BYTES
    ):
        found = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DatasetError(
            f"{path}: expected b'data' to be a uint8 array of shape "
            f"(n, {CIFAR10_IMAGE_BYTES}), found {found}. {hint}"
        )
    try:
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DatasetError(
            f"{path}: expected b'labels' to be a list of ints, found "
            f"{type(batch[b'labels']).__name__} ({exc}). {hint}"
        ) from exc
    if labels.shape != (data.shape[0],):
        raise DatasetError(
            f"{path}: expected {data.shape[0]} labels (one per image), found "
            f"labels of shape {labels.shape}. {hint}"
        )
    _check_label_range(labels, path, hint)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _check_label_range(labels: np.ndarray, path: Path, hint: str) -> None:
    """Raise DatasetError unless all labels are in ``[0, NUM_CLASSES)``."""
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetError(
            f"{path}: expected labels in [0, {NUM_CLASSES - 1}], found values in "
            f"[{labels.min()}, {labels.max()}]. {hint}"
        )


def _cifar_batch_paths(
    folder: Path, suffix: str, dataset_dir: str
) -> tuple[list[Path], Path]:
    """Return (training batch paths 1..5 that exist, test batch path).

    Requires at least ``data_batch_1`` and ``test_batch``; later training
    batches are used in order as long as they are contiguous.
    """
    hint = _hint("cifar10", folder.parent)
    if not folder.is_dir():
        raise DatasetError(
            f"{folder}: folder not found; expected the unpacked {dataset_dir} folder "
            f"with data_batch_1{suffix}..data_batch_5{suffix} and test_batch{suffix}. {hint}"
        )
    train: list[Path] = []
    for i in range(1, _CIFAR_TRAIN_BATCHES + 1):
        p = folder / f"data_batch_{i}{suffix}"
        if not p.is_file():
            break
        train.append(p)
    test = folder / f"test_batch{suffix}"
    missing = [
        p.name for p in (folder / f"data_batch_1{suffix}", test) if not p.is_file()
    ]
    if missing:
        present = sorted(p.name for p in folder.iterdir())
        raise DatasetError(
            f"{folder}: missing {', '.join(missing)}; expected data_batch_1{suffix}.."
            f"data_batch_5{suffix} and test_batch{suffix}, found {present or 'an empty folder'}. "
            f"{hint}"
        )
    return train, test


def read_cifar10_python(
    folder: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the official "CIFAR-10 python version" layout.

    Args:
        folder: the ``cifar-10-batches-py`` folder, holding the pickled batch
            files ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``.
            Training batches are read in order 1..5 as far as they exist;
            ``data_batch_1`` and ``test_batch`` are required.  Each file is a
            dict with ``b'data'`` (uint8 ``(n, 3072)``, channel-first 3x32x32
            per row) and ``b'labels'`` (list of ``n`` ints in 0..9).

    Returns:
        ``(X_train, y_train, X_test, y_test)``: images uint8
        ``(N, 32, 32, 3)`` (height, width, RGB channel) and labels int64
        ``(N,)``.  The full official data has 50000 training and 10000 test
        images.

    Raises:
        DatasetError: a file is missing, truncated, malformed, or references
            a Python global other than NumPy array reconstruction (pickle
            files can run code; those are refused without being executed).
    """
    folder = Path(folder)
    train_paths, test_path = _cifar_batch_paths(folder, "", CIFAR10_PYTHON_DIR)
    parts = [_cifar_python_batch(p) for p in train_paths]
    X_test, y_test = _cifar_python_batch(test_path)
    X_train = np.concatenate([x for x, _ in parts])
    y_train = np.concatenate([y for _, y in parts])
    return X_train, y_train, X_test, y_test


def _cifar_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one binary batch file -> (images uint8 (n,32,32,3), labels int64 (n,))."""
    hint = _hint("cifar10", path.parent.parent)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(
            f"{path}: cannot read the CIFAR-10 binary batch ({exc}). {hint}"
        ) from exc
    size = len(raw)
    if size == 0 or size % CIFAR10_RECORD_BYTES != 0:
        raise DatasetError(
            f"{path}: size is {size} bytes, expected a non-zero multiple of "
            f"{CIFAR10_RECORD_BYTES} (1 label byte + {CIFAR10_IMAGE_BYTES} pixel bytes "
            f"per image; 30730000 for an official batch); the file is truncated or "
            f"not a CIFAR-10 binary batch. {hint}"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR10_RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    _check_label_range(labels, path, hint)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_cifar10_binary(
    folder: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the official "CIFAR-10 binary version" layout.

    Args:
        folder: the ``cifar-10-batches-bin`` folder, holding
            ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin``
            (read like :func:`read_cifar10_python`: batches 1..5 as far as they
            exist, batch 1 and the test batch required).  Each file is a
            sequence of 3073-byte records: one label byte (0..9) followed by
            3072 pixel bytes in channel-first 3x32x32 order.

    Returns:
        ``(X_train, y_train, X_test, y_test)``: images uint8
        ``(N, 32, 32, 3)`` and labels int64 ``(N,)``.

    Raises:
        DatasetError: a file is missing, its size is not a multiple of 3073
            bytes, or a label is out of range.
    """
    folder = Path(folder)
    train_paths, test_path = _cifar_batch_paths(folder, ".bin", CIFAR10_BINARY_DIR)
    parts = [_cifar_binary_batch(p) for p in train_paths]
    X_test, y_test = _cifar_binary_batch(test_path)
    X_train = np.concatenate([x for x, _ in parts])
    y_train = np.concatenate([y for _, y in parts])
    return X_train, y_train, X_test, y_test


# ---------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)
# ---------------------------------------------------------------------------


def read_idx(path: str | os.PathLike[str], dataset: str = "mnist") -> np.ndarray:
    """Read one IDX file (the MNIST file format), gzip-compressed or plain.

    Supported are the two unsigned-byte variants used by MNIST and
    Fashion-MNIST: magic ``0x00000801`` (labels, 1 dimension) and
    ``0x00000803`` (images, 3 dimensions).  Compression is detected from the
    content (gzip magic bytes), not from the file name.

    Args:
        path: the file path.
        dataset: dataset name used in the "how to get the data" hint of errors.

    Returns:
        uint8 array with the shape given by the header, e.g. ``(N,)`` for
        labels or ``(N, 28, 28)`` for images.

    Raises:
        DatasetError: the file is missing, has a wrong magic number, or its
            data length does not match the header (truncated or trailing bytes).
    """
    path = Path(path)
    hint = _hint(dataset, path.parent)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DatasetError(
            f"{path}: file not found; expected an IDX file. {hint}"
        ) from exc
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the IDX file ({exc}). {hint}") from exc
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(
                f"{path}: expected a complete gzip-compressed IDX file, but "
                f"decompression failed ({type(exc).__name__}: {exc}); the file is "
                f"truncated or corrupt. {hint}"
            ) from exc
    if len(raw) < 4:
        raise DatasetError(
            f"{path}: expected an IDX header of at least 4 bytes, found {len(raw)} "
            f"bytes; the file is truncated. {hint}"
        )
    (magic,) = struct.unpack(">I", raw[:4])
    if magic not in _IDX_MAGICS:
        raise DatasetError(
            f"{path}: expected IDX magic 0x{_IDX_MAGIC_LABELS:08x} (uint8 labels) or "
            f"0x{_IDX_MAGIC_IMAGES:08x} (uint8 images), found 0x{magic:08x}; not an "
            f"MNIST-format IDX file. {hint}"
        )
    ndim = _IDX_MAGICS[magic]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DatasetError(
            f"{path}: expected a {header_len}-byte header for {ndim} dimension(s), "
            f"found {len(raw)} bytes; the file is truncated. {hint}"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    expected = int(np.prod(shape, dtype=np.int64))
    found = len(raw) - header_len
    if found != expected:
        raise DatasetError(
            f"{path}: header declares shape {tuple(shape)} = {expected} data bytes, "
            f"found {found} bytes; the file is "
            f"{'truncated' if found < expected else 'followed by extra data'}. {hint}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape).copy()


def _find_idx_file(folder: Path, name: str, dataset: str) -> Path:
    """Return ``folder/name`` or ``folder/name.gz`` (plain preferred)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"{folder / name}: file not found (neither {name} nor {name}.gz exists in "
        f"{folder}); expected the four {dataset} IDX files "
        f"{', '.join(MNIST_FILES.values())} (each optionally .gz). "
        + _hint(dataset, folder)
    )


def read_mnist(
    folder: str | os.PathLike[str],
    prefix: str = "",
    dataset: str = "mnist",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read MNIST-layout IDX files (MNIST and Fashion-MNIST) from ``folder``.

    Args:
        folder: folder holding ``train-images-idx3-ubyte``,
            ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
            ``t10k-labels-idx1-ubyte``, each plain or with ``.gz`` (a plain
            file is preferred when both exist).
        prefix: string prepended to each file name (empty for the official
            distributions).
        dataset: dataset name used in the "how to get the data" hint of errors.

    Returns:
        ``(X_train, y_train, X_test, y_test)``: images uint8 ``(N, H, W)``
        (``(N, 28, 28)`` for the official data: 60000 training, 10000 test)
        and labels int64 ``(N,)`` in 0..9.

    Raises:
        DatasetError: a file is missing or malformed, image and label counts
            differ, or a label is out of range.
    """
    folder = Path(folder)
    hint = _hint(dataset, folder)
    arrays: dict[str, np.ndarray] = {}
    paths: dict[str, Path] = {}
    for key, name in MNIST_FILES.items():
        paths[key] = _find_idx_file(folder, prefix + name, dataset)
        arrays[key] = read_idx(paths[key], dataset=dataset)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        ipath, lpath = paths[f"{split}_images"], paths[f"{split}_labels"]
        if images.ndim != 3:
            raise DatasetError(
                f"{ipath}: expected an image file (3 dimensions), found an IDX file "
                f"with shape {images.shape}. {hint}"
            )
        if labels.ndim != 1:
            raise DatasetError(
                f"{lpath}: expected a label file (1 dimension), found an IDX file "
                f"with shape {labels.shape}. {hint}"
            )
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{lpath}: expected {images.shape[0]} labels to match {ipath}, found "
                f"{labels.shape[0]}. {hint}"
            )
        _check_label_range(labels, lpath, hint)
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DatasetError(
            f"{paths['test_images']}: expected images of size "
            f"{arrays['train_images'].shape[1:]} like {paths['train_images']}, found "
            f"{arrays['test_images'].shape[1:]}. {hint}"
        )
    return (
        arrays["train_images"],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"],
        arrays["test_labels"].astype(np.int64),
    )
