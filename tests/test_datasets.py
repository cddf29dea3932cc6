"""Tests of the dataset readers (xpdl.data.formats) and loaders (xpdl.data.datasets)."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

import xpdl
from xpdl.data.datasets import (
    DATASETS,
    DIGITS_FILE,
    DIGITS_TEST_SEED,
    PIXEL_SCALE,
    apply_preprocessing,
    default_num_val,
    load_dataset,
    load_raw,
    prepare,
    read_digits,
)
from xpdl.data.formats import (
    DatasetError,
    read_cifar10_binary,
    read_cifar10_python,
    read_idx,
    read_mnist,
)

# ---------------------------------------------------------------------------
# Writers of small files in the official formats
# ---------------------------------------------------------------------------


def make_cifar_images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images (n, 32, 32, 3) and int64 labels (n,)."""
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    return images, labels


def to_cifar_rows(images: np.ndarray) -> np.ndarray:
    """(n, 32, 32, 3) -> official row layout (n, 3072), channel-first per row."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def write_cifar_python(folder: Path, batches: list[tuple[np.ndarray, np.ndarray]], test, protocol=None) -> None:
    """Write data_batch_1..k and test_batch as pickled dicts with bytes keys."""
    folder.mkdir(parents=True, exist_ok=True)
    named = [(f"data_batch_{i + 1}", b) for i, b in enumerate(batches)] + [("test_batch", test)]
    for fname, (images, labels) in named:
        d = {
            b"batch_label": f"{fname} of 5".encode(),
            b"labels": [int(v) for v in labels],
            b"data": to_cifar_rows(images),
            b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
        }
        with open(folder / fname, "wb") as f:
            pickle.dump(d, f, protocol=protocol)


def write_cifar_binary(folder: Path, batches, test) -> None:
    """Write data_batch_1..k.bin and test_batch.bin (label byte + 3072 pixel bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    named = [(f"data_batch_{i + 1}.bin", b) for i, b in enumerate(batches)]
    named.append(("test_batch.bin", test))
    for fname, (images, labels) in named:
        records = np.concatenate([labels.astype(np.uint8)[:, None], to_cifar_rows(images)], axis=1)
        (folder / fname).write_bytes(records.tobytes())


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array (1 or 3 dims) as an IDX file."""
    magic = 0x00000800 | array.ndim
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    """Write an IDX file, gzip-compressed (adding .gz) or plain."""
    data = idx_bytes(array)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_mnist_folder(folder: Path, rng, n_train=30, n_test=12, compress=(True, False, True, False)):
    """Write the four MNIST files (mix of .gz and plain); return the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for (name, arr), gz in zip(arrays.items(), compress):
        write_idx(folder / name, arr, gz)
    return arrays


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def cifar_arrays(rng):
    """Five training batches of 12 images and a test batch of 15."""
    batches = [make_cifar_images(rng, 12) for _ in range(5)]
    test = make_cifar_images(rng, 15)
    return batches, test


# ---------------------------------------------------------------------------
# CIFAR-10 python version
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_python_round_trip(tmp_path, cifar_arrays, protocol):
    batches, test = cifar_arrays
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_python(folder, batches, test, protocol=protocol)
    X_train, y_train, X_test, y_test = read_cifar10_python(folder)
    assert X_train.shape == (60, 32, 32, 3) and X_train.dtype == np.uint8
    assert X_test.shape == (15, 32, 32, 3)
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    np.testing.assert_array_equal(X_train, np.concatenate([b[0] for b in batches]))
    np.testing.assert_array_equal(y_train, np.concatenate([b[1] for b in batches]))
    np.testing.assert_array_equal(X_test, test[0])
    np.testing.assert_array_equal(y_test, test[1])


def test_cifar_python_channel_order(tmp_path):
    """Row layout is R plane, G plane, B plane; output is HWC."""
    images = np.zeros((1, 32, 32, 3), np.uint8)
    images[0, 1, 2] = (10, 20, 30)
    labels = np.array([3])
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_python(folder, [(images, labels)] * 5, (images, labels))
    rows = to_cifar_rows(images)[0]
    assert rows[0 * 1024 + 1 * 32 + 2] == 10 and rows[2 * 1024 + 1 * 32 + 2] == 30
    X_train, *_ = read_cifar10_python(folder)
    assert tuple(X_train[0, 1, 2]) == (10, 20, 30)


@pytest.mark.parametrize("layout", ["python", "binary"])
def test_cifar_missing_batch_is_named_not_skipped(tmp_path, cifar_arrays, layout):
    """A missing data_batch_3 is an error naming it, never a silent 2-batch training set."""
    batches, test = cifar_arrays
    if layout == "python":
        folder, suffix, read = tmp_path / "cifar-10-batches-py", "", read_cifar10_python
        write_cifar_python(folder, batches, test)
    else:
        folder, suffix, read = tmp_path / "cifar-10-batches-bin", ".bin", read_cifar10_binary
        write_cifar_binary(folder, batches, test)
    (folder / f"data_batch_3{suffix}").unlink()
    with pytest.raises(DatasetError) as info:
        read(folder)
    message = str(info.value)
    assert message.startswith(f"{folder}: missing data_batch_3{suffix};") and "\n" not in message
    assert f"data_batch_5{suffix}" in message and "--download" in message


def test_cifar_python_accepts_str_keys(tmp_path, cifar_arrays):
    """A batch re-pickled by Python 3 with str keys reads like the official bytes keys."""
    batches, test = cifar_arrays
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_python(folder, batches, test)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": to_cifar_rows(test[0]), "labels": [int(v) for v in test[1]]}, f)
    *_, X_test, y_test = read_cifar10_python(folder)
    np.testing.assert_array_equal(X_test, test[0])
    np.testing.assert_array_equal(y_test, test[1])


def test_cifar_python_accepts_bytes_data_and_label_array(tmp_path, cifar_arrays):
    batches, test = cifar_arrays
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_python(folder, batches, test)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": to_cifar_rows(test[0]).tobytes(), b"labels": test[1].astype(">i4")}, f, protocol=5)
    *_, X_test, y_test = read_cifar10_python(folder)
    np.testing.assert_array_equal(X_test, test[0])
    np.testing.assert_array_equal(y_test, test[1])
    assert y_test.dtype == np.int64


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo hi > {self.marker}",))


def test_cifar_python_refuses_code_execution(tmp_path, cifar_arrays):
    batches, test = cifar_arrays
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_python(folder, batches, test)
    marker = tmp_path / "marker"
    evil = {b"data": _Evil(marker), b"labels": [0]}
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump(evil, f)
    with pytest.raises(DatasetError) as info:
        read_cifar10_python(folder)
    message = str(info.value)
    assert message.startswith(f"{folder / 'data_batch_1'}: expected only the globals ")
    assert "system (refused without importing it)" in message and "\n" not in message
    assert not marker.exists()


def test_cifar_python_refuses_builtins_eval(tmp_path, cifar_arrays):
    batches, test = cifar_arrays
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_python(folder, batches, test)
    # Hand-written protocol-0 pickle calling builtins.eval("1+1").
    (folder / "test_batch").write_bytes(b"cbuiltins\neval\n(V1+1\ntR.")
    with pytest.raises(DatasetError, match="builtins.eval"):
        read_cifar10_python(folder)


def test_cifar_python_truncated(tmp_path, cifar_arrays):
    batches, test = cifar_arrays
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_python(folder, batches, test)
    path = folder / "data_batch_2"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetError) as info:
        read_cifar10_python(folder)
    assert str(path) in str(info.value) and "truncated" in str(info.value)


def test_cifar_python_wrong_content(tmp_path, cifar_arrays):
    batches, test = cifar_arrays
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_python(folder, batches, test)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(
        DatasetError, match=r"test_batch: expected 'data' as a uint8 array of shape \(n, 3072\).*\(4, 100\)"
    ):
        read_cifar10_python(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(DatasetError, match="test_batch: expected a dict with keys 'data' and 'labels'.*got a list"):
        read_cifar10_python(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2]}, f)
    with pytest.raises(
        DatasetError, match=r"test_batch: expected 'labels' as .* of 4 ints in 0..9.*got a list of length 3"
    ):
        read_cifar10_python(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, f)
    with pytest.raises(DatasetError, match="test_batch: expected 'labels' .* got an item 10"):
        read_cifar10_python(folder)


def test_cifar_python_missing_files(tmp_path, cifar_arrays):
    batches, test = cifar_arrays
    folder = tmp_path / "cifar-10-batches-py"
    with pytest.raises(DatasetError, match="cifar-10-batches-py: expected .* got no such folder.*--download"):
        read_cifar10_python(folder)
    write_cifar_python(folder, batches, test)
    (folder / "test_batch").unlink()
    with pytest.raises(DatasetError, match="missing test_batch"):
        read_cifar10_python(folder)


# ---------------------------------------------------------------------------
# CIFAR-10 binary version
# ---------------------------------------------------------------------------


def test_cifar_binary_round_trip(tmp_path, cifar_arrays):
    batches, test = cifar_arrays
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar_binary(folder, batches, test)
    X_train, y_train, X_test, y_test = read_cifar10_binary(folder)
    assert X_train.dtype == np.uint8 and X_train.shape == (60, 32, 32, 3)
    np.testing.assert_array_equal(X_train, np.concatenate([b[0] for b in batches]))
    np.testing.assert_array_equal(y_train, np.concatenate([b[1] for b in batches]))
    np.testing.assert_array_equal(X_test, test[0])
    np.testing.assert_array_equal(y_test, test[1])
    assert y_train.dtype == np.int64


def test_cifar_binary_wrong_size(tmp_path, cifar_arrays):
    batches, test = cifar_arrays
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar_binary(folder, batches, test)
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-7])
    size = 12 * 3073 - 7
    with pytest.raises(DatasetError) as info:
        read_cifar10_binary(folder)
    message = str(info.value)
    assert str(path) in message and str(size) in message and "3073" in message


def test_cifar_binary_bad_label(tmp_path, cifar_arrays):
    batches, test = cifar_arrays
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar_binary(folder, batches, test)
    path = folder / "test_batch.bin"
    raw = bytearray(path.read_bytes())
    raw[3073] = 200
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="test_batch.bin.*labels in"):
        read_cifar10_binary(folder)


# ---------------------------------------------------------------------------
# IDX / MNIST
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, rng, compress):
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    p_img = write_idx(tmp_path / "img", images, compress)
    p_lab = write_idx(tmp_path / "lab", labels, compress)
    np.testing.assert_array_equal(read_idx(p_img), images)
    np.testing.assert_array_equal(read_idx(p_lab), labels)
    assert read_idx(p_img).dtype == np.uint8


def test_read_idx_wrong_magic(tmp_path):
    path = tmp_path / "bad-idx"
    path.write_bytes(struct.pack(">II", 0x00000D01, 3) + bytes(3))  # float32 type code
    with pytest.raises(DatasetError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message and "0x00000d01" in message and "0x00000803" in message


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_truncated(tmp_path, rng, compress):
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    data = idx_bytes(images)
    path = tmp_path / ("img.gz" if compress else "img")
    if compress:
        path.write_bytes(gzip.compress(data)[:-30])  # cut the gzip stream
        match = "truncated"
    else:
        path.write_bytes(data[:-100])
        match = r"\(5, 28, 28\).*truncated"
    with pytest.raises(DatasetError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_short_header_and_extra_data(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(struct.pack(">I", 0x00000803) + b"\x00\x00")
    with pytest.raises(DatasetError, match="short: expected a 16-byte header"):
        read_idx(path)
    path.write_bytes(idx_bytes(np.zeros(4, np.uint8)) + b"xx")
    with pytest.raises(
        DatasetError, match="short: expected 4 data bytes .* got more; the file is followed by extra data"
    ):
        read_idx(path)
    with pytest.raises(DatasetError, match="nope: expected an IDX file, got no such file"):
        read_idx(tmp_path / "nope")


def test_read_mnist_mixed_compression(tmp_path, rng):
    folder = tmp_path / "mnist"
    arrays = make_mnist_folder(folder, rng)
    X_train, y_train, X_test, y_test = read_mnist(folder)
    np.testing.assert_array_equal(X_train, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(X_test, arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_test, arrays["t10k-labels-idx1-ubyte"])
    assert y_train.dtype == np.int64 and X_train.dtype == np.uint8


def test_read_mnist_errors(tmp_path, rng):
    folder = tmp_path / "fashion-mnist"
    make_mnist_folder(folder, rng)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError) as info:
        read_mnist(folder, dataset="fashion-mnist")
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message and "--data fashion-mnist --download" in message
    # label count differs from image count
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(5, np.uint8), False)
    with pytest.raises(DatasetError, match="expected 12 labels"):
        read_mnist(folder)
    # images and labels swapped
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros((12, 28, 28), np.uint8), False)
    with pytest.raises(
        DatasetError, match=r"t10k-labels-idx1-ubyte: expected a label file of shape at most \(10000,\)"
    ):
        read_mnist(folder)


# ---------------------------------------------------------------------------
# datasets.load_raw / prepare / load_dataset
# ---------------------------------------------------------------------------


#: SHA-256 of the raw bytes of load_raw("digits") arrays, recorded when digits came from
#: scikit-learn's load_digits: the packaged file must give exactly the same split.
DIGITS_SPLIT_SHA256 = {
    "X_train": "3e35196eca180d272bfcba9346c751e3e8cfba107ccbe019e0ccf273c291d4ab",
    "y_train": "f3013980fdfb2ba3a068d608da78dc7659953516f20f123c379b6a4741d686a7",
    "X_test": "40d1f0e6b8a8b43291f8881e614d97409e2e4715f566e9976e7244ccc86a6d08",
    "y_test": "7323f6e1154dacb0e6f4a73e53f60074e1956b6498cca186d030e07a7ce38ee6",
}


def test_digits_shapes_and_fixed_test_split():
    raw = load_raw("digits")
    assert raw["X_train"].shape == (1437, 64) and raw["X_test"].shape == (360, 64)
    assert raw["X_train"].dtype == np.float64 and raw["X_test"].dtype == np.float64
    assert raw["y_train"].dtype == np.int64 and raw["y_test"].shape == (360,)
    assert raw["X_train"].min() >= 0 and raw["X_train"].max() <= 16
    again = load_raw("digits", data_dir="/nonexistent")
    for key, digest in DIGITS_SPLIT_SHA256.items():
        np.testing.assert_array_equal(raw[key], again[key])
        assert hashlib.sha256(np.ascontiguousarray(raw[key]).tobytes()).hexdigest() == digest, key


def test_digits_split_is_a_fixed_permutation_of_the_packaged_file():
    images, labels = read_digits()
    assert images.dtype == np.uint8 and images.shape == (1797, 8, 8) and int(images.max()) == 16
    assert labels.dtype == np.uint8 and labels.shape == (1797,) and set(np.unique(labels)) == set(range(10))
    raw = load_raw("digits")
    perm = np.random.default_rng(DIGITS_TEST_SEED).permutation(1797)
    np.testing.assert_array_equal(raw["X_test"], images.reshape(1797, 64)[perm[:360]])
    np.testing.assert_array_equal(raw["y_train"], labels[perm[360:]])


def test_digits_file_is_packaged_and_loads_without_pickle():
    path = Path(xpdl.__file__).parent / "data" / DIGITS_FILE
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["images", "labels"]
    assert path.stat().st_size < 64_000
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert f'"xpdl.data" = ["{DIGITS_FILE}"]' in pyproject


def test_prepare_uses_training_mean_only_and_is_seeded():
    raw = load_raw("digits")
    data = prepare(raw, num_val=300, seed=7)
    assert data["X_train"].shape == (1137, 64) and data["X_val"].shape == (300, 64)
    assert data["X_test"].shape == (360, 64) and data["mean_image"].shape == (64,)
    for key in ("X_train", "X_val", "X_test", "mean_image"):
        assert data[key].dtype == np.float32
    assert data["scale"] == PIXEL_SCALE["digits"] == 16.0

    perm = np.random.default_rng(7).permutation(1437)
    val_idx, train_idx = perm[:300], perm[300:]
    expected_mean = raw["X_train"][train_idx].mean(axis=0) / 16.0
    np.testing.assert_allclose(data["mean_image"], expected_mean, rtol=1e-5, atol=1e-6)
    full_mean = raw["X_train"].mean(axis=0) / 16.0
    assert not np.allclose(data["mean_image"], full_mean, atol=1e-4)
    np.testing.assert_allclose(data["X_val"], raw["X_train"][val_idx] / 16.0 - expected_mean, atol=1e-5)
    np.testing.assert_allclose(data["X_test"], raw["X_test"] / 16.0 - expected_mean, atol=1e-5)
    np.testing.assert_allclose(data["X_train"].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_array_equal(data["y_val"], raw["y_train"][val_idx])
    np.testing.assert_array_equal(data["y_train"], raw["y_train"][train_idx])

    same = prepare(raw, num_val=300, seed=7)
    np.testing.assert_array_equal(same["X_val"], data["X_val"])
    other = prepare(raw, num_val=300, seed=8)
    assert not np.array_equal(other["y_val"], data["y_val"])


def test_prepare_float64_and_apply_preprocessing():
    raw = load_raw("digits")
    data = prepare(raw, num_val=100, seed=0, dtype="float64")
    assert data["X_train"].dtype == np.float64
    X = apply_preprocessing(raw["X_test"], data["mean_image"], "float64", scale=data["scale"])
    np.testing.assert_array_equal(X, data["X_test"])
    with pytest.raises(ValueError, match="X: expected 64 features per example .*, got 10"):
        apply_preprocessing(np.zeros((2, 10)), data["mean_image"], scale=1.0)
    with pytest.raises(ValueError, match="dtype: expected a floating-point dtype, got int32"):
        prepare(raw, num_val=100, seed=0, dtype="int32")
    with pytest.raises(ValueError, match=r"num_val: expected an int in \[0, 1436\] .*, got 1437"):
        prepare(raw, num_val=1437, seed=0)


def test_unknown_name():
    with pytest.raises(ValueError) as info:
        load_raw("imagenet")
    message = str(info.value)
    assert message.startswith("name: expected a dataset name") and message.endswith("got 'imagenet'")
    for name in DATASETS:
        assert name in message
    with pytest.raises(ValueError, match="imagenet"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="imagenet"):
        default_num_val("imagenet")


def test_default_num_val():
    assert [default_num_val(n) for n in DATASETS] == [300, 1000, 5000, 5000]


def test_cifar_missing_explains_layouts(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_raw("cifar10", data_dir=tmp_path)
    message = str(info.value)
    assert "cifar-10-batches-py" in message and "cifar-10-batches-bin" in message
    assert "--download" in message and str(tmp_path) in message


def test_load_dataset_cifar_python_and_binary(tmp_path, cifar_arrays):
    batches, test = cifar_arrays
    write_cifar_binary(tmp_path / "bin" / "cifar-10-batches-bin", batches, test)
    write_cifar_python(tmp_path / "py" / "cifar-10-batches-py", batches, test)
    a = load_dataset("cifar10", data_dir=tmp_path / "bin", num_val=10, seed=3)
    b = load_dataset("cifar10", data_dir=tmp_path / "py", num_val=10, seed=3)
    assert a["X_train"].shape == (50, 3072) and a["X_val"].shape == (10, 3072)
    assert a["X_test"].shape == (15, 3072) and a["scale"] == 255.0
    assert a["image_shape"] == (32, 32, 3) and a["num_classes"] == 10
    for key in (
        "X_train",
        "y_train",
        "X_val",
        "y_val",
        "X_test",
        "y_test",
        "mean_image",
    ):
        np.testing.assert_array_equal(a[key], b[key])
    raw_train = np.concatenate([x for x, _ in batches]).reshape(60, -1)
    perm = np.random.default_rng(3).permutation(60)
    mean = raw_train[perm[10:]].mean(axis=0) / 255.0
    np.testing.assert_allclose(a["mean_image"], mean, atol=1e-6)
    np.testing.assert_allclose(a["X_val"], raw_train[perm[:10]] / 255.0 - mean, atol=1e-6)


def test_load_dataset_mnist_folders(tmp_path, rng):
    arrays = make_mnist_folder(tmp_path / "fashion-mnist", rng, n_train=40)
    with pytest.raises(DatasetError, match="mnist"):
        load_raw("mnist", data_dir=tmp_path)
    data = load_dataset("fashion-mnist", data_dir=tmp_path, num_val=8, seed=0)
    assert data["X_train"].shape == (32, 784) and data["X_test"].shape == (12, 784)
    assert data["classes"][9] == "Ankle boot" and data["image_shape"] == (28, 28, 1)
    np.testing.assert_array_equal(data["y_test"], arrays["t10k-labels-idx1-ubyte"])


def test_cifar_python_legacy_numpy_module_path(tmp_path, cifar_arrays):
    """Official files (NumPy 1.x era) name numpy.core.multiarray._reconstruct."""
    batches, test = cifar_arrays
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_python(folder, batches, test, protocol=2)
    for name in ("data_batch_1", "test_batch"):
        path = folder / name
        raw = path.read_bytes()
        assert b"cnumpy._core.multiarray\n_reconstruct\n" in raw
        path.write_bytes(
            raw.replace(
                b"cnumpy._core.multiarray\n_reconstruct\n",
                b"cnumpy.core.multiarray\n_reconstruct\n",
            )
        )
    X_train, y_train, X_test, _ = read_cifar10_python(folder)
    np.testing.assert_array_equal(X_train[:12], batches[0][0])
    np.testing.assert_array_equal(y_train[:12], batches[0][1])
    np.testing.assert_array_equal(X_test, test[0])


def python2_batch_pickle(rows: np.ndarray, labels: list[int]) -> bytes:
    """A batch written as Python 2's cPickle (protocol 2) wrote the official files: str -> BINSTRING, old NumPy."""

    def binstring(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b

    n = rows.shape[0]
    dtype = (
        b"cnumpy\ndtype\n" + binstring(b"u1") + b"K\x00K\x01\x87R"
        + b"(K\x03" + binstring(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )  # fmt: skip
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + binstring(b"b") + b"\x87R"
        + b"(K\x01M" + struct.pack("<H", n) + b"M\x00\x0c\x86" + dtype + b"\x89" + binstring(rows.tobytes()) + b"tb"
    )  # fmt: skip
    label_ops = b"".join(b"K" + bytes([v]) for v in labels)
    return (
        b"\x80\x02}q\x01(" + binstring(b"data") + array + binstring(b"labels") + b"](" + label_ops + b"e"
        + binstring(b"batch_label") + binstring(b"training batch 1 of 5") + b"u."
    )  # fmt: skip


def test_cifar_python_reads_python2_era_pickles(tmp_path, cifar_arrays):
    """The official files were written by Python 2 (BINSTRING bytes, dtype('u1', 0, 1), numpy.core paths)."""
    batches, test = cifar_arrays
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_python(folder, batches, test)
    rows = to_cifar_rows(test[0])
    (folder / "test_batch").write_bytes(python2_batch_pickle(rows, [int(v) for v in test[1]]))
    *_, X_test, y_test = read_cifar10_python(folder)
    np.testing.assert_array_equal(X_test, test[0])
    np.testing.assert_array_equal(y_test, test[1])
