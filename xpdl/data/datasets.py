"""Dataset loading and preprocessing.

Two stages:

* :func:`load_raw` returns the untouched host arrays of a dataset
  (``uint8`` images, or the ``float64`` 0..16 values of ``digits``, which ship
  inside the package as ``xpdl/data/digits.npz``).
* :func:`prepare` splits a seeded validation set off the training set,
  flattens images to ``(N, D)``, converts to float, divides by the dataset's
  pixel scale (:data:`PIXEL_SCALE`) and subtracts the mean image of the
  training split.  :func:`apply_preprocessing` applies the same transform to
  new data (e.g. at evaluation time) given the stored ``mean_image`` and
  ``scale``.

Flattened features are in height-width-channel order: ``D = H * W * C`` with
``image_shape = (H, W, C)`` reported in both dictionaries (``digits``:
``(8, 8, 1)``, MNIST / Fashion-MNIST: ``(28, 28, 1)``, CIFAR-10:
``(32, 32, 3)``).  To get channel-first images:
``X.reshape(N, H, W, C).transpose(0, 3, 1, 2)``.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from xpdl.data.download import SOURCES, download_dataset
from xpdl.data.formats import (
    CIFAR10_BINARY_DIR,
    CIFAR10_PYTHON_DIR,
    DatasetError,
    read_cifar10_binary,
    read_cifar10_python,
    read_mnist,
)

__all__ = [
    "CLASS_NAMES",
    "DATASETS",
    "DIGITS_FILE",
    "DIGITS_SHA256",
    "DIGITS_TEST_SEED",
    "DIGITS_TEST_SIZE",
    "IMAGE_SHAPE",
    "PIXEL_SCALE",
    "DatasetError",
    "read_digits",
    "apply_preprocessing",
    "default_num_val",
    "load_dataset",
    "load_raw",
    "prepare",
]

#: Names accepted by :func:`load_raw` / :func:`load_dataset`.
DATASETS = ("digits", "cifar10", "mnist", "fashion-mnist")

#: Raw pixel values are divided by this so inputs lie in [0, 1] before mean
#: subtraction: ``digits`` pixels are 0..16, the image datasets 0..255.
PIXEL_SCALE: dict[str, float] = {
    "digits": 16.0,
    "cifar10": 255.0,
    "mnist": 255.0,
    "fashion-mnist": 255.0,
}

#: Image layout (height, width, channels) of one example; flattened features
#: follow this order.
IMAGE_SHAPE: dict[str, tuple[int, int, int]] = {
    "digits": (8, 8, 1),
    "cifar10": (32, 32, 3),
    "mnist": (28, 28, 1),
    "fashion-mnist": (28, 28, 1),
}

#: Validation examples split off the training set by default.
_DEFAULT_NUM_VAL: dict[str, int] = {
    "digits": 300,
    "cifar10": 1000,
    "mnist": 5000,
    "fashion-mnist": 5000,
}

#: Class names, index = label.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "digits": tuple(str(i) for i in range(10)),
    "mnist": tuple(str(i) for i in range(10)),
    "cifar10": (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ),
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
}  # fmt: skip

#: ``digits`` has no official test split: a fixed held-out part is drawn with
#: ``numpy.random.default_rng(DIGITS_TEST_SEED).permutation`` so it is the
#: same on every machine.
DIGITS_TEST_SEED = 0
#: Size of the held-out ``digits`` test split (20% of 1797, rounded up).
DIGITS_TEST_SIZE = 360
#: The packaged digits file: ``images`` uint8 (1797, 8, 8) with values 0..16 and
#: ``labels`` uint8 (1797,), the 8x8 digits as distributed with scikit-learn.
DIGITS_FILE = "digits.npz"
#: SHA-256 of the raw bytes of the two arrays of :data:`DIGITS_FILE`.
DIGITS_SHA256 = {
    "images": "8f26b2bd9d135c256808f68f14fdabddde6d9c7f869ae419704b051f0f14b3b3",
    "labels": "8ba4f891220f5e4c9c819638d1602d74b83618f167043c6da52a2a247841ddf0",
}
_DIGITS_SHAPES = {"images": (1797, 8, 8), "labels": (1797,)}


def _check_name(name: str) -> None:
    """Raise ValueError unless ``name`` is one of :data:`DATASETS`."""
    if name not in DATASETS:
        raise ValueError(f"name: expected a dataset name, one of {list(DATASETS)}, got {name!r}")


def default_num_val(name: str) -> int:
    """Return the default validation-set size for dataset ``name``.

    ``digits``: 300, ``cifar10``: 1000, ``mnist`` / ``fashion-mnist``: 5000.
    """
    _check_name(name)
    return _DEFAULT_NUM_VAL[name]


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """Read the packaged 8x8 digits.

    Returns:
        ``(images, labels)``: uint8 ``(1797, 8, 8)`` with values 0..16 and uint8
        ``(1797,)`` in 0..9, in the order of scikit-learn's ``load_digits``.

    Raises:
        DatasetError: the packaged file is missing or its arrays differ from
            the published checksums (:data:`DIGITS_SHA256`).
    """
    path = resources.files("xpdl.data").joinpath(DIGITS_FILE)
    try:
        with path.open("rb") as f, np.load(f, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in _DIGITS_SHAPES}
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(
            f"{path}: expected the packaged digits file with arrays 'images' and 'labels', got "
            f"{type(exc).__name__}: {exc}; reinstall xpdl"
        ) from None
    for key, shape in _DIGITS_SHAPES.items():
        a = arrays[key]
        digest = hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
        if a.dtype != np.uint8 or a.shape != shape or digest != DIGITS_SHA256[key]:
            raise DatasetError(
                f"{path}: expected '{key}' as uint8 {shape} with SHA-256 {DIGITS_SHA256[key]}, "
                f"got {a.dtype} {a.shape} with SHA-256 {digest}; reinstall xpdl"
            )
    return arrays["images"], arrays["labels"]


def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The packaged digits as float64 ``(N, 64)`` 0..16 and int64 labels, with the fixed test part split off."""
    images, labels = read_digits()
    X = images.reshape(images.shape[0], -1).astype(np.float64)
    y = labels.astype(np.int64)
    perm = np.random.default_rng(DIGITS_TEST_SEED).permutation(X.shape[0])
    test_idx, train_idx = perm[:DIGITS_TEST_SIZE], perm[DIGITS_TEST_SIZE:]
    return X[train_idx], y[train_idx], X[test_idx], y[test_idx]


def _load_cifar10(data_dir: Path, download: bool) -> tuple[np.ndarray, ...]:
    """Read CIFAR-10 from the python or binary layout; with ``download``, the verified python layout."""
    py_dir, bin_dir = data_dir / CIFAR10_PYTHON_DIR, data_dir / CIFAR10_BINARY_DIR
    if download:
        return read_cifar10_python(download_dataset("cifar10", data_dir))
    if py_dir.is_dir():
        return read_cifar10_python(py_dir)
    if bin_dir.is_dir():
        return read_cifar10_binary(bin_dir)
    raise DatasetError(
        f"{data_dir}: CIFAR-10 not found; expected {py_dir} (the official 'CIFAR-10 python version', "
        f"data_batch_1..5 and test_batch) or {bin_dir} (the 'CIFAR-10 binary version', data_batch_1..5.bin "
        f"and test_batch.bin), got neither; download it with `xpdl train --data cifar10 --download` "
        f"or unpack the official archive into {data_dir}"
    )


def _load_idx_dataset(name: str, data_dir: Path, download: bool) -> tuple[np.ndarray, ...]:
    """Read MNIST / Fashion-MNIST from ``data_dir/name``; with ``download``, the verified ``.gz`` files."""
    folder = data_dir / SOURCES[name].subdir
    if download:
        download_dataset(name, data_dir)
    return read_mnist(folder, dataset=name, compressed_only=download)


def load_raw(name: str, data_dir: str | os.PathLike[str] = "data", download: bool = False) -> dict[str, Any]:
    """Load a dataset's untouched host arrays.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: root data folder.  CIFAR-10 is read from
            ``data_dir/cifar-10-batches-py`` or else
            ``data_dir/cifar-10-batches-bin``; MNIST from ``data_dir/mnist``;
            Fashion-MNIST from ``data_dir/fashion-mnist``.  ``digits`` ships
            inside the package and ignores it.
        download: fetch the official files into ``data_dir``: files already
            there are checked against their MD5 checksums and fetched again
            if they differ, and the verified files are read (for CIFAR-10 the
            python layout, for MNIST / Fashion-MNIST the ``.gz`` files).

    Returns:
        dict with

        * ``X_train``, ``X_test``: ``digits``: float64 ``(N, 64)`` with values
          0..16 (1437 train / 360 test, the test part being a fixed held-out
          split, seed :data:`DIGITS_TEST_SEED`); CIFAR-10: uint8
          ``(N, 32, 32, 3)`` (50000 / 10000); MNIST / Fashion-MNIST: uint8
          ``(N, 28, 28)`` (60000 / 10000).
        * ``y_train``, ``y_test``: int64 ``(N,)`` labels in 0..9.
        * ``name`` (str), ``image_shape`` ((H, W, C)), ``num_classes`` (int),
          ``classes`` (tuple of class names).

    Raises:
        ValueError: unknown ``name``.
        DatasetError: files missing (and ``download`` False) or malformed.
    """
    _check_name(name)
    data_dir = Path(data_dir)
    if name == "digits":
        X_train, y_train, X_test, y_test = _load_digits()
    elif name == "cifar10":
        X_train, y_train, X_test, y_test = _load_cifar10(data_dir, download)
    else:
        X_train, y_train, X_test, y_test = _load_idx_dataset(name, data_dir, download)
    return {
        "name": name,
        "X_train": X_train,
        "y_train": y_train,
        "X_test": X_test,
        "y_test": y_test,
        "image_shape": IMAGE_SHAPE[name],
        "num_classes": len(CLASS_NAMES[name]),
        "classes": CLASS_NAMES[name],
    }


def _float_dtype(dtype: Any) -> np.dtype:
    """Return ``np.dtype(dtype)``, requiring a floating-point type."""
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise ValueError(f"dtype: expected a floating-point dtype, got {dt}")
    return dt


def _scaled(X: np.ndarray, scale: float, dtype: np.dtype) -> np.ndarray:
    """Flatten to (N, D), convert to ``dtype`` (new array) and divide by ``scale``."""
    out = np.asarray(X).reshape(X.shape[0], -1).astype(dtype, copy=True)
    out /= dtype.type(scale)
    return out


def apply_preprocessing(
    X: np.ndarray,
    mean_image: np.ndarray,
    dtype: Any = "float32",
    *,
    scale: float,
) -> np.ndarray:
    """Apply the :func:`prepare` transform to new examples.

    Args:
        X: raw examples, shape ``(N, ...)`` with ``prod(...) == D`` (uint8
            images or raw ``digits`` values).
        mean_image: ``(D,)`` mean of the scaled training split (from
            :func:`prepare`).
        dtype: floating output dtype.
        scale: the raw-value divisor (``prepare(...)["scale"]``, i.e.
            :data:`PIXEL_SCALE` of the dataset).

    Returns:
        ``(N, D)`` array of ``dtype``: ``X / scale - mean_image``.
    """
    dt = _float_dtype(dtype)
    out = _scaled(X, scale, dt)
    mean = np.asarray(mean_image, dtype=dt).reshape(-1)
    if out.shape[1] != mean.shape[0]:
        raise ValueError(f"X: expected {mean.shape[0]} features per example (like mean_image), got {out.shape[1]}")
    out -= mean
    return out


def prepare(raw: dict[str, Any], num_val: int, seed: int, dtype: Any = "float32") -> dict[str, Any]:
    """Split, flatten, scale and mean-center a dataset from :func:`load_raw`.

    The training set is permuted with ``numpy.random.default_rng(seed)``;
    the first ``num_val`` examples of the permutation become the validation
    set, the rest the training split (in permuted order).  All splits are
    flattened to ``(N, D)``, converted to ``dtype`` and divided by
    ``PIXEL_SCALE[name]`` (16 for ``digits``, 255 otherwise, so values are in
    [0, 1]); the mean image of the *training split only* is then subtracted
    from every split.

    Args:
        raw: dict from :func:`load_raw` (needs ``name``, ``X_train``,
            ``y_train``, ``X_test``, ``y_test``).
        num_val: validation-set size, ``0 <= num_val < len(X_train)``
            (TypeError if not an int, ValueError if out of range).
        seed: seed of the train/validation split.
        dtype: floating dtype of the features (labels stay int64).

    Returns:
        dict with ``X_train``, ``X_val``, ``X_test`` (``(N, D)`` of
        ``dtype``), ``y_train``, ``y_val``, ``y_test`` (int64 ``(N,)``),
        ``mean_image`` (``(D,)`` of ``dtype``, in scaled units), ``scale``
        (float), and ``name``, ``image_shape``, ``num_classes``, ``classes``
        copied from ``raw``.
    """
    name = raw["name"]
    _check_name(name)
    dt = _float_dtype(dtype)
    X_all, y_all = raw["X_train"], np.asarray(raw["y_train"], dtype=np.int64)
    n = X_all.shape[0]
    if isinstance(num_val, bool) or not isinstance(num_val, (int, np.integer)):
        raise TypeError(f"num_val: expected an int, got {num_val!r}")
    if not 0 <= num_val < n:
        raise ValueError(
            f"num_val: expected an int in [0, {n - 1}] for {name!r} ({n} training examples), got {num_val}"
        )
    scale = PIXEL_SCALE[name]
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = perm[:num_val], perm[num_val:]
    X_train = _scaled(X_all[train_idx], scale, dt)
    mean_image = X_train.mean(axis=0, dtype=np.float64).astype(dt)
    X_train -= mean_image
    return {
        "X_train": X_train,
        "y_train": y_all[train_idx],
        "X_val": apply_preprocessing(X_all[val_idx], mean_image, dt, scale=scale),
        "y_val": y_all[val_idx],
        "X_test": apply_preprocessing(raw["X_test"], mean_image, dt, scale=scale),
        "y_test": np.asarray(raw["y_test"], dtype=np.int64),
        "mean_image": mean_image,
        "scale": scale,
        "name": name,
        "image_shape": raw.get("image_shape", IMAGE_SHAPE[name]),
        "num_classes": raw.get("num_classes", len(CLASS_NAMES[name])),
        "classes": raw.get("classes", CLASS_NAMES[name]),
    }


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] = "data",
    download: bool = False,
    num_val: int | None = None,
    seed: int = 0,
    dtype: Any = "float32",
) -> dict[str, Any]:
    """Load and preprocess a dataset: :func:`load_raw` followed by :func:`prepare`.

    ``num_val`` defaults to :func:`default_num_val` of ``name``.  See
    :func:`prepare` for the returned dict.
    """
    _check_name(name)
    raw = load_raw(name, data_dir=data_dir, download=download)
    if num_val is None:
        num_val = default_num_val(name)
    return prepare(raw, num_val=num_val, seed=seed, dtype=dtype)
