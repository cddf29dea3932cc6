"""Crafted dataset files: no crash, no code, bounded time and memory, one line naming the file.

Each test builds a small hostile file (a few KB to 1 MB), and checks that it is refused
with a one-line DatasetError before anything large is allocated. Files that could
crash the interpreter are read in a subprocess, so a crash fails the test instead of
killing pytest.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import xpdl.data.formats as formats
import xpdl.data.pickle_subset as subset
from xpdl.data.formats import DatasetError, cifar10_batch_names, read_cifar10_python, read_idx, read_mnist

REPO = Path(__file__).resolve().parent.parent


class Reduce:
    """Pickles as ``func(*args)`` followed by BUILD with ``state`` (when given)."""

    def __init__(self, func, args, state=None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


def _frombuffer():
    try:
        from numpy._core.numeric import _frombuffer as fn
    except ImportError:  # NumPy 1.x
        from numpy.core.numeric import _frombuffer as fn
    return fn


def fake_dtype(code: str, state: tuple = (3, "|", None, None, None, -1, -1, 0)) -> Reduce:
    """A pickled ``numpy.dtype(code)`` whose BUILD state is ``state`` (flags last)."""
    return Reduce(np.dtype, (code, False, True), state)


def fake_array(dtype: Reduce, shape: tuple, raw, version: int = 1) -> Reduce:
    """A pickled ndarray as NumPy writes it at protocol 2: _reconstruct, then BUILD with the state."""
    return Reduce(_reconstruct(), (np.ndarray, (0,), b"b"), (version, shape, dtype, False, raw))


def write_cifar_folder(folder: Path, n: int = 3) -> Path:
    """Six valid tiny batch files; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in cifar10_batch_names():
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [1] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def bounded(func, *args, seconds: float = 1.0, megabytes: float = 50.0, **kwargs) -> DatasetError:
    """Run ``func``, expect a one-line DatasetError within the time and traced-memory bounds; return it."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DatasetError) as info:
            func(*args, **kwargs)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    assert elapsed < seconds, f"took {elapsed:.2f} s"
    assert peak < megabytes, f"peak {peak:.1f} MB"
    assert "\n" not in str(info.value)
    return info.value


# ---------------------------------------------------------------------------
# Memory corruption through NumPy's pickle helpers (run in a subprocess)
# ---------------------------------------------------------------------------

#: name -> (value stored under b'labels' or b'data', the words the refusal must contain)
CRAFTED = {
    # The reported crash: labels rebuilt with dtype('O8') whose BUILD state clears the flags,
    # so the raw bytes 0x4141... would be read as object pointers.
    "object_dtype_flags_cleared": (
        "labels",
        lambda n: fake_array(fake_dtype("O8", (3, "|", None, None, None, 8, 8, 0)), (n,), b"\x41" * 8 * n),
        "expected numpy.dtype of a plain integer type code",
    ),
    "object_dtype_via_frombuffer": (
        "labels",
        lambda n: Reduce(_frombuffer(), (b"\x41" * 8 * n, fake_dtype("O8"), (n,), "C")),
        "type code 'O8'",
    ),
    "object_array_data_as_list": (
        "labels",
        lambda n: fake_array(fake_dtype("u1"), (n,), [1] * n),
        "expected array data as bytes, got list",
    ),
    "structured_dtype_with_fields": (
        "data",
        lambda n: fake_array(fake_dtype("V8", (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 63)), (n,), b""),
        "type code 'V8'",
    ),
    "integer_dtype_with_subarray_state": (
        "labels",
        lambda n: fake_array(fake_dtype("i8", (3, "<", (1, (1,)), None, None, -1, -1, 0)), (n,), b""),
        "the state of a plain numpy dtype",
    ),
    "float_dtype": (
        "labels",
        lambda n: fake_array(fake_dtype("f8"), (n,), b"\0" * 8 * n),
        "type code 'f8'",
    ),
    "shape_larger_than_data": (
        "data",
        lambda n: fake_array(fake_dtype("u1"), (10**9, 3072), b"\0" * 3072),
        "expected at most 30720000 array elements, got shape (1000000000, 3072)",
    ),
    "data_shorter_than_shape": (
        "data",
        lambda n: fake_array(fake_dtype("u1"), (n, 3072), b"\0" * 100),
        "data bytes for shape",
    ),
    "reconstruct_of_another_class": (
        "labels",
        lambda n: Reduce(_reconstruct(), (np.dtype, (0,), b"b")),
        "_reconstruct(numpy.ndarray, shape, typecode)",
    ),
    "numpy_scalar_global": (
        "labels",
        lambda n: [np.int64(1)] * n,
        "got global numpy.",
    ),
}

_READER = """
import sys
from xpdl.data.formats import DatasetError, read_cifar10_python
for folder in sys.argv[1:]:
    try:
        read_cifar10_python(folder)
        print("ACCEPTED")
    except DatasetError as exc:
        print(exc)
"""


def test_crafted_numpy_pickles_are_refused_without_crashing(tmp_path):
    """Every crafted batch is refused in a child process that exits normally (no SIGSEGV)."""
    folders = []
    for name, (field, make, _) in CRAFTED.items():
        folder = write_cifar_folder(tmp_path / name / "cifar-10-batches-py")
        n = 3
        batch = {b"data": np.zeros((n, 3072), np.uint8), b"labels": [0] * n, field.encode(): make(n)}
        (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
        folders.append(str(folder))
    proc = subprocess.run(
        [sys.executable, "-c", _READER, *folders],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"reader died with {proc.returncode}: {proc.stderr[-2000:]}"
    lines = proc.stdout.splitlines()
    assert len(lines) == len(CRAFTED)
    for (name, (_, _, words)), folder, line in zip(CRAFTED.items(), folders, lines):
        assert line.startswith(f"{folder}/data_batch_2: expected "), (name, line)
        assert words in line, (name, line)


def test_crafted_batch_through_the_command_line_is_one_line_and_exit_2(tmp_path):
    """The reported crash, end to end: `xpdl train --data cifar10` exits 2 with one line, no run folder."""
    folder = write_cifar_folder(tmp_path / "data" / "cifar-10-batches-py")
    _, make, _ = CRAFTED["object_dtype_flags_cleared"]
    batch = {b"data": np.zeros((3, 3072), np.uint8), b"labels": make(3)}
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    proc = subprocess.run(
        [sys.executable, "-m", "xpdl", "train", "--data", "cifar10", "--data-dir", str(tmp_path / "data"),
         "--out", str(tmp_path / "run"), "--quiet"],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "XPDL_BACKEND": "numpy"},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"{folder}/data_batch_1: expected numpy.dtype of a plain integer type code" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_refused_global_is_never_imported(tmp_path):
    folder = write_cifar_folder(tmp_path / "cifar-10-batches-py")
    (folder / "test_batch").write_bytes(b"\x80\x02cxpdl_no_such_module\nboom\n)R.")
    error = bounded(read_cifar10_python, folder)
    assert "got global xpdl_no_such_module.boom (refused without importing it)" in str(error)
    assert "xpdl_no_such_module" not in sys.modules


def test_text_protocol_opcodes_are_refused(tmp_path):
    folder = write_cifar_folder(tmp_path / "cifar-10-batches-py")
    (folder / "test_batch").write_bytes(pickle.dumps({"data": b"", "labels": []}, protocol=0))
    error = bounded(read_cifar10_python, folder)
    assert "expected a binary pickle (protocol 2 to 5) of plain values and integer arrays, got opcode" in str(error)


# ---------------------------------------------------------------------------
# Resource exhaustion
# ---------------------------------------------------------------------------


def billion_laughs(n: int) -> bytes:
    """A 10-row batch whose labels are n references to one list nesting 10**9 ints."""
    layer: list = [0] * 10
    for _ in range(8):
        layer = [layer] * 10
    return pickle.dumps({b"data": np.zeros((10, 3072), np.uint8), b"labels": [layer] * n}, protocol=2)


@pytest.mark.parametrize("n", [10, 1000])
def test_billion_laughs_labels_are_refused_at_once(tmp_path, n):
    folder = write_cifar_folder(tmp_path / "cifar-10-batches-py")
    raw = billion_laughs(n)
    assert len(raw) < 40_000  # the reported file had 31 KB
    (folder / "data_batch_1").write_bytes(raw)
    error = bounded(read_cifar10_python, folder, seconds=0.5, megabytes=20)
    got = "an item of type list" if n == 10 else "a list of length 1000"
    assert str(error).startswith(f"{folder}/data_batch_1: expected 'labels' as a flat list or integer array of 10")
    assert got in str(error)


def test_repeated_latin1_encoding_is_bounded(tmp_path, monkeypatch):
    """Re-encoding one memoised string many times would multiply memory: the created bytes are capped."""
    monkeypatch.setattr(subset, "MAX_CREATED_BYTES", 1 << 20)
    text = "x" * 100_000
    body = (
        b"\x80\x02c_codecs\nencode\nq\x00X" + struct.pack("<I", len(text)) + text.encode() + b"q\x01"
        + b"X\x06\x00\x00\x00latin1q\x02](" + b"h\x00h\x01h\x02\x86R" * 100 + b"e."
    )  # fmt: skip
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    write_cifar_folder(path.parent)
    path.write_bytes(body)
    error = bounded(read_cifar10_python, path.parent, megabytes=10)
    assert f"expected at most {1 << 20} bytes created by _codecs.encode" in str(error)


def test_opcode_count_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(subset, "MAX_OPCODES", 1000)
    folder = write_cifar_folder(tmp_path / "cifar-10-batches-py")
    (folder / "test_batch").write_bytes(pickle.dumps({b"labels": list(range(5000))}, protocol=2))
    error = bounded(read_cifar10_python, folder)
    assert str(error).startswith(f"{folder}/test_batch: expected at most 1000 pickle opcodes, got more")


def test_oversized_pickle_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(subset, "MAX_FILE_BYTES", 10_000)
    folder = write_cifar_folder(tmp_path / "cifar-10-batches-py", n=5)
    error = bounded(read_cifar10_python, folder)
    assert str(error).startswith(f"{folder}/data_batch_1: expected a pickle of at most 10000 bytes, got ")


def test_more_rows_than_a_batch_holds_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "CIFAR10_MAX_ROWS", 2)
    folder = write_cifar_folder(tmp_path / "cifar-10-batches-py", n=3)
    error = bounded(read_cifar10_python, folder)
    assert "1 <= n <= 2, got a uint8 array of shape (3, 3072)" in str(error)


def test_oversized_binary_batch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "CIFAR10_MAX_ROWS", 2)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in cifar10_batch_names(".bin"):
        (folder / name).write_bytes(bytes(3 * 3073))
    error = bounded(formats.read_cifar10_binary, folder)
    assert f"at most {2 * 3073}), got more than {2 * 3073} bytes" in str(error)


def gzip_bomb(header: bytes, members: int = 1000) -> bytes:
    """``header`` then ``members`` gzip members of 1 MB of zeros each (about 1 KB compressed each)."""
    zeros = gzip.compress(bytes(1 << 20), compresslevel=9)
    return gzip.compress(header) + zeros * members


def test_mnist_header_declaring_two_million_images_is_refused_after_the_header(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    bomb = gzip_bomb(struct.pack(">IIII", 0x803, 2_000_000, 28, 28))
    assert 0.9e6 < len(bomb) < 1.2e6  # about 1 MB on disk, 1 GB of zeros inside
    (folder / "train-images-idx3-ubyte.gz").write_bytes(bomb)
    error = bounded(read_mnist, folder, seconds=0.5, megabytes=5)
    path = folder / "train-images-idx3-ubyte.gz"
    assert str(error).startswith(
        f"{path}: expected an image file of shape at most (60000, 28, 28), "
        f"got an IDX header declaring shape (2000000, 28, 28); refused before reading the data"
    )
    error = bounded(read_idx, path, seconds=0.5, megabytes=5)
    assert f"expected an IDX header declaring at most {formats.IDX_MAX_DATA_BYTES} data bytes" in str(error)


def test_mnist_payload_longer_than_the_header_is_refused(tmp_path):
    """A small header followed by 1 GB of compressed zeros: refused after one byte past the declared data."""
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip_bomb(struct.pack(">II", 0x801, 10) + bytes(10)))
    error = bounded(read_idx, path, seconds=0.5, megabytes=5)
    assert str(error).startswith(f"{path}: expected 10 data bytes (header shape (10,)), got more")
    assert "followed by extra data" in str(error)


def test_mnist_payload_shorter_than_the_header_is_refused(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(struct.pack(">II", 0x801, 10_000) + bytes(10)))
    error = bounded(read_idx, path, max_shape=(10_000,))
    assert str(error).startswith(f"{path}: expected 10000 data bytes (header shape (10000,)), got 10;")
    assert "truncated" in str(error)


def test_mnist_counts_above_the_official_split_are_refused(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in formats.MNIST_FILES.values():
        dims = (2,) if "labels" in name else (2, 28, 28)
        (folder / name).write_bytes(struct.pack(f">I{len(dims)}I", 0x800 | len(dims), *dims) + bytes(np.prod(dims)))
    assert read_mnist(folder)[0].shape == (2, 28, 28)
    (folder / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, 10_001, 28, 28))
    error = bounded(read_mnist, folder)
    assert "t10k-images-idx3-ubyte: expected an image file of shape at most (10000, 28, 28)" in str(error)
    (folder / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, 2, 28, 29))
    error = bounded(read_mnist, folder)
    assert "train-images-idx3-ubyte: expected an image file of shape at most (60000, 28, 28)" in str(error)
