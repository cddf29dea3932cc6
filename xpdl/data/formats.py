"""Readers for the on-disk formats of the supported image datasets.

Every reader returns plain NumPy host arrays without any preprocessing:

* images as ``uint8`` arrays in height-width-channel order
  (CIFAR-10: ``(N, 32, 32, 3)``; MNIST / Fashion-MNIST: ``(N, 28, 28)``),
* labels as ``int64`` arrays of shape ``(N,)``.

Dataset files are untrusted input. Each reader bounds its work and memory by
what the format can hold before it reads the bulk of a file: a CIFAR-10 batch
has at most :data:`CIFAR10_MAX_ROWS` rows, its pickle is read by
:mod:`xpdl.data.pickle_subset` (no code runs, only integer arrays come out), and an
IDX header is checked against the known sizes of the dataset before anything
past the header is decompressed.

Any missing, truncated, oversized or malformed file raises :class:`DatasetError`,
a one-line message ``PATH: expected X, got Y; how to get the data``.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from xpdl.data.pickle_subset import ArrayBuilder, PickleRefused, load_pickle_subset

__all__ = [
    "CIFAR10_BINARY_DIR",
    "CIFAR10_MAX_ROWS",
    "CIFAR10_PYTHON_DIR",
    "CIFAR10_RECORD_BYTES",
    "IDX_MAX_DATA_BYTES",
    "MNIST_FILES",
    "MNIST_IMAGE_SIZE",
    "MNIST_MAX_COUNT",
    "DatasetError",
    "cifar10_batch_names",
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
#: Most images in one CIFAR-10 batch file (each official batch has exactly this many).
CIFAR10_MAX_ROWS = 10_000
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
#: Most examples of each MNIST / Fashion-MNIST split (the official counts).
MNIST_MAX_COUNT = {"train": 60_000, "test": 10_000}
#: Height and width of MNIST / Fashion-MNIST images.
MNIST_IMAGE_SIZE = (28, 28)
#: Most data bytes :func:`read_idx` reads when no shape bound is given: the
#: official MNIST training images (60,000 x 28 x 28).
IDX_MAX_DATA_BYTES = 60_000 * 28 * 28

# IDX magic numbers: two zero bytes, a type code (0x08 = unsigned byte) and
# the number of dimensions.
_IDX_MAGIC_LABELS = 0x00000801
_IDX_MAGIC_IMAGES = 0x00000803
_IDX_MAGICS = {_IDX_MAGIC_LABELS: 1, _IDX_MAGIC_IMAGES: 3}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK_BYTES = 1 << 20


class DatasetError(ValueError):
    """A dataset file or folder is missing, truncated, oversized or in the wrong format.

    The message is one line: the path, what was expected, what came, and how to
    obtain the data.
    """


def _hint(dataset: str, folder: str | os.PathLike[str]) -> str:
    """Return the "how to get the data" sentence appended to error messages."""
    return f"download it with `xpdl train --data {dataset} --download` or unpack the official archive into {folder}"


# ---------------------------------------------------------------------------
# CIFAR-10 python version
# ---------------------------------------------------------------------------


def cifar10_batch_names(suffix: str = "") -> tuple[str, ...]:
    """The six CIFAR-10 batch file names: ``data_batch_1..5`` then ``test_batch`` (plus ``suffix``)."""
    train = tuple(f"data_batch_{i}{suffix}" for i in range(1, _CIFAR_TRAIN_BATCHES + 1))
    return (*train, f"test_batch{suffix}")


def _field(batch: dict, name: str) -> Any:
    """``batch[b'name']`` or ``batch['name']`` (Python 2 and Python 3 pickles); None if neither."""
    for key in (name.encode("ascii"), name):
        if key in batch:
            value = batch[key]
            return value.array if isinstance(value, ArrayBuilder) else value
    return None


def _describe(value: Any) -> str:
    """Type and size of a value for error messages, without walking into it."""
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    if isinstance(value, (list, tuple, bytes, bytearray, str, dict)):
        return f"a {type(value).__name__} of length {len(value)}"
    return "None (a missing key or an array without data)" if value is None else f"a {type(value).__name__}"


def _cifar_rows(data: Any, path: Path, hint: str) -> np.ndarray:
    """The ``data`` field as uint8 rows ``(n, 3072)``, ``1 <= n <= CIFAR10_MAX_ROWS``."""
    rows = None
    if isinstance(data, (bytes, bytearray)) and len(data) % CIFAR10_IMAGE_BYTES == 0:
        rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR10_IMAGE_BYTES)
    elif isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2:
        rows = data if data.shape[1] == CIFAR10_IMAGE_BYTES else None
    if rows is None or not 1 <= rows.shape[0] <= CIFAR10_MAX_ROWS:
        raise DatasetError(
            f"{path}: expected 'data' as a uint8 array of shape (n, {CIFAR10_IMAGE_BYTES}) or bytes of "
            f"n * {CIFAR10_IMAGE_BYTES}, 1 <= n <= {CIFAR10_MAX_ROWS}, got {_describe(data)}; {hint}"
        )
    return rows


def _cifar_labels(labels: Any, n: int, path: Path, hint: str) -> np.ndarray:
    """The ``labels`` field as int64 ``(n,)`` in ``[0, NUM_CLASSES)``; checks every item, never recurses."""
    expected = f"'labels' as a flat list or integer array of {n} ints in 0..{NUM_CLASSES - 1} (one per row of 'data')"
    if isinstance(labels, list) and len(labels) == n:
        bad = next((v for v in labels if type(v) is not int or not 0 <= v < NUM_CLASSES), None)
        if bad is None:
            return np.array(labels, dtype=np.int64)
        got = f"an item {bad!r}" if type(bad) is int else f"an item of type {type(bad).__name__}"
        raise DatasetError(f"{path}: expected {expected}, got {got}; {hint}")
    if isinstance(labels, np.ndarray) and labels.shape == (n,) and labels.dtype.kind in "iu":
        if n and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise DatasetError(f"{path}: expected {expected}, got values in [{labels.min()}, {labels.max()}]; {hint}")
        return labels.astype(np.int64)
    raise DatasetError(f"{path}: expected {expected}, got {_describe(labels)}; {hint}")


def _cifar_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one python batch file -> (images uint8 (n,32,32,3), labels int64 (n,))."""
    hint = _hint("cifar10", path.parent.parent)
    try:
        batch = load_pickle_subset(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: expected a CIFAR-10 python batch file, got no such file; {hint}") from None
    except OSError as exc:
        raise DatasetError(f"{path}: expected a readable CIFAR-10 batch file, got {exc.strerror}; {hint}") from None
    except PickleRefused as exc:
        raise DatasetError(f"{exc}; not an official CIFAR-10 batch: {hint}") from None
    if not isinstance(batch, dict) or _field(batch, "data") is None or _field(batch, "labels") is None:
        got = f"a dict with keys {[repr(k)[:40] for k in list(batch)[:8]]}" if isinstance(batch, dict) else None
        raise DatasetError(
            f"{path}: expected a dict with keys 'data' and 'labels' (bytes or str keys), "
            f"got {got or _describe(batch)}; {hint}"
        )
    rows = _cifar_rows(_field(batch, "data"), path, hint)
    labels = _cifar_labels(_field(batch, "labels"), rows.shape[0], path, hint)
    images = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _check_label_range(labels: np.ndarray, path: Path, hint: str) -> None:
    """Raise DatasetError unless all labels are in ``[0, NUM_CLASSES)``."""
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetError(
            f"{path}: expected labels in [0, {NUM_CLASSES - 1}], got values in [{labels.min()}, {labels.max()}]; {hint}"
        )


def _cifar_batch_paths(folder: Path, suffix: str, dataset_dir: str) -> list[Path]:
    """Return the paths of ``data_batch_1..5`` and ``test_batch`` (with ``suffix``); all six must exist."""
    hint = _hint("cifar10", folder.parent)
    names = cifar10_batch_names(suffix)
    expected = f"the unpacked {dataset_dir} folder with {', '.join(names)}"
    if not folder.is_dir():
        raise DatasetError(f"{folder}: expected {expected}, got no such folder (not found); {hint}")
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        present = sorted(p.name for p in folder.iterdir())
        raise DatasetError(
            f"{folder}: missing {', '.join(missing)}; expected {expected}, got {present or 'an empty folder'}; {hint}"
        )
    return [folder / name for name in names]


def read_cifar10_python(
    folder: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the official "CIFAR-10 python version" layout.

    Args:
        folder: the ``cifar-10-batches-py`` folder, holding the pickled batch
            files ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` (all
            six are required). Each file is a dict with ``b'data'`` (uint8
            ``(n, 3072)``, channel-first 3x32x32 per row, or bytes of that
            size; ``n <= 10000``) and ``b'labels'`` (list of ``n`` ints in
            0..9); ``str`` keys (a file pickled by Python 3) are accepted too.

    Returns:
        ``(X_train, y_train, X_test, y_test)``: images uint8
        ``(N, 32, 32, 3)`` (height, width, RGB channel) and labels int64
        ``(N,)``.  The full official data has 50000 training and 10000 test
        images.

    Raises:
        DatasetError: a file is missing, truncated, malformed or oversized, or
            holds anything but plain values and integer arrays (no code in a
            pickle runs and no global it names is imported; see
            :mod:`xpdl.data.pickle_subset`).
    """
    paths = _cifar_batch_paths(Path(folder), "", CIFAR10_PYTHON_DIR)
    parts = [_cifar_python_batch(p) for p in paths]
    X_train = np.concatenate([x for x, _ in parts[:-1]])
    y_train = np.concatenate([y for _, y in parts[:-1]])
    return X_train, y_train, parts[-1][0], parts[-1][1]


# ---------------------------------------------------------------------------
# CIFAR-10 binary version
# ---------------------------------------------------------------------------


def _cifar_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one binary batch file -> (images uint8 (n,32,32,3), labels int64 (n,))."""
    hint = _hint("cifar10", path.parent.parent)
    limit = CIFAR10_MAX_ROWS * CIFAR10_RECORD_BYTES
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise DatasetError(f"{path}: expected a readable CIFAR-10 binary batch, got {exc.strerror}; {hint}") from None
    size = len(raw)
    if size == 0 or size % CIFAR10_RECORD_BYTES != 0 or size > limit:
        raise DatasetError(
            f"{path}: expected a non-zero multiple of {CIFAR10_RECORD_BYTES} bytes (1 label byte + "
            f"{CIFAR10_IMAGE_BYTES} pixel bytes per image, at most {limit}), got "
            f"{size if size <= limit else f'more than {limit}'} bytes; the file is truncated, oversized or "
            f"not a CIFAR-10 binary batch; {hint}"
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
            (all six are required).  Each file is a sequence of at most 10000
            3073-byte records: one label byte (0..9) followed by 3072 pixel
            bytes in channel-first 3x32x32 order.

    Returns:
        ``(X_train, y_train, X_test, y_test)``: images uint8
        ``(N, 32, 32, 3)`` and labels int64 ``(N,)``.

    Raises:
        DatasetError: a file is missing, its size is not a multiple of 3073
            bytes or above 10000 records, or a label is out of range.
    """
    paths = _cifar_batch_paths(Path(folder), ".bin", CIFAR10_BINARY_DIR)
    parts = [_cifar_binary_batch(p) for p in paths]
    X_train = np.concatenate([x for x, _ in parts[:-1]])
    y_train = np.concatenate([y for _, y in parts[:-1]])
    return X_train, y_train, parts[-1][0], parts[-1][1]


# ---------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)
# ---------------------------------------------------------------------------


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """Read up to ``n`` bytes (fewer only at the end of the stream)."""
    chunks, left = [], n
    while left and (chunk := stream.read(left)):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _check_idx_shape(shape: tuple[int, ...], max_shape: tuple[int, ...] | None, path: Path, hint: str) -> None:
    """Refuse a declared IDX shape above ``max_shape`` (or above :data:`IDX_MAX_DATA_BYTES`)."""
    if max_shape is None:
        if math.prod(shape) > IDX_MAX_DATA_BYTES:
            raise DatasetError(
                f"{path}: expected an IDX header declaring at most {IDX_MAX_DATA_BYTES} data bytes, "
                f"got shape {shape} = {math.prod(shape)} bytes; refused before reading the data; {hint}"
            )
        return
    kind = "a label file" if len(max_shape) == 1 else "an image file"
    if len(shape) != len(max_shape) or any(s > m for s, m in zip(shape, max_shape)):
        raise DatasetError(
            f"{path}: expected {kind} of shape at most {max_shape}, got an IDX header declaring shape {shape}; "
            f"refused before reading the data; {hint}"
        )


def _read_idx_stream(stream: BinaryIO, path: Path, max_shape: tuple[int, ...] | None, hint: str) -> np.ndarray:
    """Parse one IDX stream: header, bound check, then exactly the declared data bytes."""
    head = _read_exact(stream, 4)
    if len(head) < 4:
        raise DatasetError(f"{path}: expected an IDX header of at least 4 bytes, got {len(head)}; truncated; {hint}")
    (magic,) = struct.unpack(">I", head)
    if magic not in _IDX_MAGICS:
        raise DatasetError(
            f"{path}: expected IDX magic 0x{_IDX_MAGIC_LABELS:08x} (uint8 labels) or 0x{_IDX_MAGIC_IMAGES:08x} "
            f"(uint8 images), got 0x{magic:08x}; not an MNIST-format IDX file; {hint}"
        )
    ndim = _IDX_MAGICS[magic]
    dims = _read_exact(stream, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise DatasetError(
            f"{path}: expected a {4 + 4 * ndim}-byte header for {ndim} dimension(s), "
            f"got {4 + len(dims)} bytes; the file is truncated; {hint}"
        )
    shape = struct.unpack(f">{ndim}I", dims)
    _check_idx_shape(shape, max_shape, path, hint)
    count = math.prod(shape)
    out = np.empty(count, dtype=np.uint8)
    view, filled = memoryview(out), 0
    while filled < count and (got := stream.readinto(view[filled : filled + _CHUNK_BYTES])):
        filled += got
    extra = stream.read(1) if filled == count else b""
    if filled != count or extra:
        state = "truncated" if filled < count else "followed by extra data"
        found = f"{filled}" if filled < count else "more"
        raise DatasetError(
            f"{path}: expected {count} data bytes (header shape {shape}), got {found}; the file is {state}; {hint}"
        )
    return out.reshape(shape)


def read_idx(
    path: str | os.PathLike[str], dataset: str = "mnist", *, max_shape: tuple[int, ...] | None = None
) -> np.ndarray:
    """Read one IDX file (the MNIST file format), gzip-compressed or plain, as a stream.

    Supported are the two unsigned-byte variants used by MNIST and
    Fashion-MNIST: magic ``0x00000801`` (labels, 1 dimension) and
    ``0x00000803`` (images, 3 dimensions).  Compression is detected from the
    content (gzip magic bytes), not from the file name.  The header is checked
    before anything past it is decompressed, and the data is read in 1 MiB
    chunks into one preallocated array: memory is the declared size, and the
    declared size is bounded.

    Args:
        path: the file path.
        dataset: dataset name used in the "how to get the data" hint of errors.
        max_shape: the largest shape accepted, one bound per dimension (its
            length is the dimension count required: 1 for labels, 3 for
            images).  ``None``: any shape of at most :data:`IDX_MAX_DATA_BYTES`
            bytes.

    Returns:
        uint8 array with the shape given by the header, e.g. ``(N,)`` for
        labels or ``(N, 28, 28)`` for images.

    Raises:
        DatasetError: the file is missing, has a wrong magic number, declares a
            shape above the bound, or its data length does not match the
            header (truncated or trailing bytes), or the gzip stream is corrupt.
    """
    path = Path(path)
    hint = _hint(dataset, path.parent)
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if not compressed:
                return _read_idx_stream(raw, path, max_shape, hint)
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                return _read_idx_stream(stream, path, max_shape, hint)
    except FileNotFoundError:
        raise DatasetError(f"{path}: expected an IDX file, got no such file (not found); {hint}") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DatasetError(
            f"{path}: expected a complete gzip-compressed IDX file, got {type(exc).__name__}: {exc}; "
            f"the file is truncated or corrupt; {hint}"
        ) from None
    except OSError as exc:
        raise DatasetError(f"{path}: expected a readable IDX file, got {exc.strerror or exc}; {hint}") from None


def _find_idx_file(folder: Path, name: str, dataset: str, compressed_only: bool) -> Path:
    """Return ``folder/name`` or ``folder/name.gz`` (plain preferred; only ``.gz`` if ``compressed_only``)."""
    candidates = [folder / f"{name}.gz"] if compressed_only else [folder / name, folder / f"{name}.gz"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    expected = ", ".join(f"{n}.gz" if compressed_only else f"{n}[.gz]" for n in MNIST_FILES.values())
    raise DatasetError(
        f"{candidates[-1]}: expected the four {dataset} IDX files {expected} in {folder}, "
        f"got no such file (not found); {_hint(dataset, folder)}"
    )


def read_mnist(
    folder: str | os.PathLike[str],
    prefix: str = "",
    dataset: str = "mnist",
    *,
    compressed_only: bool = False,
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
        compressed_only: read only the ``.gz`` files (the ones
            :func:`xpdl.data.download.download_dataset` verifies).

    Returns:
        ``(X_train, y_train, X_test, y_test)``: images uint8 ``(N, 28, 28)``
        (at most 60000 training and 10000 test images, the official counts)
        and labels int64 ``(N,)`` in 0..9.

    Raises:
        DatasetError: a file is missing or malformed, declares more examples
            than the official split or images other than at most 28x28, image
            and label counts differ, or a label is out of range.
    """
    folder = Path(folder)
    hint = _hint(dataset, folder)
    arrays: dict[str, np.ndarray] = {}
    paths: dict[str, Path] = {}
    for key, name in MNIST_FILES.items():
        split, kind = key.split("_")
        limit = MNIST_MAX_COUNT[split]
        max_shape = (limit, *MNIST_IMAGE_SIZE) if kind == "images" else (limit,)
        paths[key] = _find_idx_file(folder, prefix + name, dataset, compressed_only)
        arrays[key] = read_idx(paths[key], dataset=dataset, max_shape=max_shape)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        ipath, lpath = paths[f"{split}_images"], paths[f"{split}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{lpath}: expected {images.shape[0]} labels to match {ipath}, got {labels.shape[0]}; {hint}"
            )
        _check_label_range(labels, lpath, hint)
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DatasetError(
            f"{paths['test_images']}: expected images of size {arrays['train_images'].shape[1:]} like "
            f"{paths['train_images']}, got {arrays['test_images'].shape[1:]}; {hint}"
        )
    return (
        arrays["train_images"],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"],
        arrays["test_labels"].astype(np.int64),
    )
