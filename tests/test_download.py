"""Tests of xpdl.download against a local HTTP server (no internet access)."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import xpdl.download as dl
from xpdl.data_formats import read_cifar10_python
from xpdl.datasets import load_raw
from xpdl.download import SOURCES, DatasetSource, DownloadError, download_dataset

CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------------------
# Local HTTP server
# ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        name = self.path.lstrip("/").split("/")[-1]
        self.server.requests.append(name)
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in self.server.short:
            # Send half the promised bytes, then drop the connection.
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.short: set[str] = set()
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/files/"


@pytest.fixture
def server(monkeypatch):
    for var in (
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = _Server()
    thread = threading.Thread(
        target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


# ---------------------------------------------------------------------------
# Generated archives
# ---------------------------------------------------------------------------


def cifar_batch_pickle(
    rng: np.random.Generator, n: int
) -> tuple[bytes, np.ndarray, np.ndarray]:
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    d = {
        b"batch_label": b"batch",
        b"labels": [int(v) for v in labels],
        b"data": data,
        b"filenames": [b"x.png"] * n,
    }
    return pickle.dumps(d, protocol=2), data, labels


def tar_gz(members: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return buf.getvalue()


@pytest.fixture
def cifar_archive():
    """(archive bytes, train images rows (20, 3072), test labels) of a tiny CIFAR-10."""
    rng = np.random.default_rng(0)
    train, train_data, _ = cifar_batch_pickle(rng, 20)
    test, _, test_labels = cifar_batch_pickle(rng, 10)
    archive = tar_gz(
        {
            "cifar-10-batches-py/data_batch_1": train,
            "cifar-10-batches-py/test_batch": test,
            "cifar-10-batches-py/batches.meta": pickle.dumps(
                {b"label_names": []}, protocol=2
            ),
        }
    )
    return archive, train_data, test_labels


def idx_gz(array: np.ndarray) -> bytes:
    header = struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape)
    return gzip.compress(header + array.tobytes())


@pytest.fixture
def mnist_files():
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(
            0, 256, (16, 28, 28), dtype=np.uint8
        ),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 16, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 6, dtype=np.uint8),
    }
    return {name: idx_gz(a) for name, a in arrays.items()}, arrays


def listing(folder: Path) -> list[str]:
    """All paths below folder (relative), hidden temp files included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def test_source_table():
    assert SOURCES["cifar10"].base_url + CIFAR_ARCHIVE == (
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    )
    assert SOURCES["cifar10"].files[CIFAR_ARCHIVE] == "c58f30108f718f92721af3b95e74349a"
    assert SOURCES["mnist"].base_url == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert (
        SOURCES["mnist"].files["t10k-labels-idx1-ubyte.gz"]
        == "ec29112dd5afa0611ce80d1b7f02629c"
    )
    assert SOURCES["fashion-mnist"].files["train-images-idx3-ubyte.gz"] == (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    )
    for source in SOURCES.values():
        for digest in source.files.values():
            assert len(digest) == 32 and int(digest, 16) >= 0
    assert (
        set(SOURCES["mnist"].files)
        == set(IDX_FILES)
        == set(SOURCES["fashion-mnist"].files)
    )


def test_download_cifar_extracts_and_skips(tmp_path, server, cifar_archive):
    archive, train_data, test_labels = cifar_archive
    server.files[CIFAR_ARCHIVE] = archive
    data_dir = tmp_path / "data"
    out = download_dataset(
        "cifar10",
        data_dir,
        base_url=server.url,
        checksums={CIFAR_ARCHIVE: md5(archive)},
        quiet=True,
    )
    assert out == data_dir / "cifar-10-batches-py"
    assert server.requests == [CIFAR_ARCHIVE]
    X_train, _, _, y_test = read_cifar10_python(out)
    np.testing.assert_array_equal(
        X_train.transpose(0, 3, 1, 2).reshape(20, 3072), train_data
    )
    np.testing.assert_array_equal(y_test, test_labels)
    # Only the archive and the extracted folder remain: no temporary files.
    assert sorted(p.name for p in data_dir.iterdir()) == [
        "cifar-10-batches-py",
        CIFAR_ARCHIVE,
    ]
    # Second call: the folder exists, nothing is fetched.
    download_dataset(
        "cifar10",
        data_dir,
        base_url=server.url,
        checksums={CIFAR_ARCHIVE: md5(archive)},
        quiet=True,
    )
    assert server.requests == [CIFAR_ARCHIVE]


def test_existing_archive_with_right_checksum_is_not_fetched(
    tmp_path, server, cifar_archive
):
    archive = cifar_archive[0]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / CIFAR_ARCHIVE).write_bytes(archive)
    out = download_dataset(
        "cifar10",
        data_dir,
        base_url=server.url,
        checksums={CIFAR_ARCHIVE: md5(archive)},
        quiet=True,
    )
    assert server.requests == []
    assert (out / "test_batch").is_file()


def test_load_raw_download_uses_table(tmp_path, server, cifar_archive, monkeypatch):
    archive = cifar_archive[0]
    server.files[CIFAR_ARCHIVE] = archive
    monkeypatch.setitem(
        dl.SOURCES,
        "cifar10",
        DatasetSource(
            server.url, {CIFAR_ARCHIVE: md5(archive)}, extract_dir="cifar-10-batches-py"
        ),
    )
    raw = load_raw("cifar10", data_dir=tmp_path, download=True)
    assert raw["X_train"].shape == (20, 32, 32, 3) and raw["X_test"].shape == (
        10,
        32,
        32,
        3,
    )
    assert server.requests == [CIFAR_ARCHIVE]


def test_checksum_mismatch_leaves_nothing(tmp_path, server, cifar_archive):
    archive = cifar_archive[0]
    server.files[CIFAR_ARCHIVE] = archive
    data_dir = tmp_path / "data"
    wrong = "0" * 32
    with pytest.raises(DownloadError) as info:
        download_dataset(
            "cifar10",
            data_dir,
            base_url=server.url,
            checksums={CIFAR_ARCHIVE: wrong},
            quiet=True,
        )
    message = str(info.value)
    assert server.url + CIFAR_ARCHIVE in message
    assert (
        "checksum mismatch" in message and wrong in message and md5(archive) in message
    )
    assert listing(data_dir) == []


def test_short_response_leaves_nothing(tmp_path, server, mnist_files):
    files, _ = mnist_files
    server.files.update(files)
    server.short.add("t10k-images-idx3-ubyte.gz")
    data_dir = tmp_path / "data"
    checksums = {name: md5(body) for name, body in files.items()}
    with pytest.raises(DownloadError) as info:
        download_dataset(
            "mnist", data_dir, base_url=server.url, checksums=checksums, quiet=True
        )
    assert server.url + "t10k-images-idx3-ubyte.gz" in str(info.value)
    # Files fetched before the failure are complete; the failed one is absent, no temp files.
    assert listing(data_dir) == [
        "mnist",
        "mnist/train-images-idx3-ubyte.gz",
        "mnist/train-labels-idx1-ubyte.gz",
    ]
    # Retrying once the server behaves fetches only what is missing.
    server.short.clear()
    server.requests.clear()
    download_dataset(
        "mnist", data_dir, base_url=server.url, checksums=checksums, quiet=True
    )
    assert server.requests == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_short_response_without_checksum_help(tmp_path, server, cifar_archive):
    """Even if the checksum table matched the truncated bytes, the length check fails."""
    archive = cifar_archive[0]
    server.files[CIFAR_ARCHIVE] = archive
    server.short.add(CIFAR_ARCHIVE)
    data_dir = tmp_path / "data"
    half = md5(archive[: len(archive) // 2])
    with pytest.raises(DownloadError, match="cifar-10-python.tar.gz"):
        download_dataset(
            "cifar10",
            data_dir,
            base_url=server.url,
            checksums={CIFAR_ARCHIVE: half},
            quiet=True,
        )
    assert listing(data_dir) == []


def test_http_error_names_url(tmp_path, server):
    data_dir = tmp_path / "data"
    with pytest.raises(DownloadError) as info:
        download_dataset("cifar10", data_dir, base_url=server.url, quiet=True)
    assert server.url + CIFAR_ARCHIVE in str(info.value) and "404" in str(info.value)
    assert listing(data_dir) == []


def test_download_mnist_and_load(tmp_path, server, mnist_files, monkeypatch):
    files, arrays = mnist_files
    server.files.update(files)
    checksums = {name: md5(body) for name, body in files.items()}
    out = download_dataset(
        "mnist", tmp_path, base_url=server.url, checksums=checksums, quiet=True
    )
    assert out == tmp_path / "mnist"
    raw = load_raw("mnist", data_dir=tmp_path)
    np.testing.assert_array_equal(raw["X_train"], arrays["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(raw["y_test"], arrays["t10k-labels-idx1-ubyte.gz"])
    # load_raw(download=True) for fashion-mnist through the (patched) table.
    monkeypatch.setitem(
        dl.SOURCES,
        "fashion-mnist",
        DatasetSource(server.url, checksums, subdir="fashion-mnist"),
    )
    server.requests.clear()
    raw = load_raw("fashion-mnist", data_dir=tmp_path, download=True)
    assert sorted(server.requests) == sorted(IDX_FILES)
    np.testing.assert_array_equal(raw["X_test"], arrays["t10k-images-idx3-ubyte.gz"])
    # Present files: no download even with download=True.
    server.requests.clear()
    load_raw("fashion-mnist", data_dir=tmp_path, download=True)
    assert server.requests == []


def test_existing_file_with_wrong_checksum_is_replaced(tmp_path, server, mnist_files):
    files, _ = mnist_files
    server.files.update(files)
    checksums = {name: md5(body) for name, body in files.items()}
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")
    download_dataset(
        "mnist", tmp_path, base_url=server.url, checksums=checksums, quiet=True
    )
    assert (folder / "train-images-idx3-ubyte.gz").read_bytes() == files[
        "train-images-idx3-ubyte.gz"
    ]


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "members, extra, problem",
    [
        ({"cifar-10-batches-py/../../evil.txt": b"x"}, [], "'..'"),
        ({"/tmp/xpdl-evil-absolute.txt": b"x"}, [], "absolute"),
        ({}, [_symlink("cifar-10-batches-py/link", "/etc/passwd")], "links"),
    ],
)
def test_unsafe_archive_members_refused(tmp_path, server, members, extra, problem):
    members = {"cifar-10-batches-py/test_batch": b"x", **members}
    archive = tar_gz(members, extra)
    server.files[CIFAR_ARCHIVE] = archive
    data_dir = tmp_path / "a" / "data"
    with pytest.raises(DownloadError, match=problem) as info:
        download_dataset(
            "cifar10",
            data_dir,
            base_url=server.url,
            checksums={CIFAR_ARCHIVE: md5(archive)},
            quiet=True,
        )
    assert server.url + CIFAR_ARCHIVE in str(info.value)
    # The verified archive stays; no extracted folder and no temporary folder.
    assert listing(data_dir) == [CIFAR_ARCHIVE]
    assert (
        not (tmp_path / "evil.txt").exists()
        and not (tmp_path / "a" / "evil.txt").exists()
    )
    assert not Path("/tmp/xpdl-evil-absolute.txt").exists()


def test_archive_without_expected_folder(tmp_path, server):
    archive = tar_gz({"other/file": b"x"})
    server.files[CIFAR_ARCHIVE] = archive
    with pytest.raises(
        DownloadError, match="does not contain the folder cifar-10-batches-py"
    ):
        download_dataset(
            "cifar10",
            tmp_path,
            base_url=server.url,
            checksums={CIFAR_ARCHIVE: md5(archive)},
            quiet=True,
        )
    assert listing(tmp_path) == [CIFAR_ARCHIVE]


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="'name'.*'digits'"):
        download_dataset("digits", tmp_path)
    with pytest.raises(ValueError, match="'checksums'.*nope"):
        download_dataset("mnist", tmp_path, checksums={"nope": "0" * 32})
    with pytest.raises(ValueError, match="'base_url'"):
        download_dataset("mnist", tmp_path, base_url="file:///etc/")
    assert list(tmp_path.iterdir()) == []
