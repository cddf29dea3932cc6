"""Tests of xpdl.data.download against a local HTTP server (no internet access)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import xpdl.data.download as dl
from xpdl.data.datasets import load_raw
from xpdl.data.download import SOURCES, DatasetSource, DownloadError, download_dataset
from xpdl.data.formats import DatasetError, cifar10_batch_names, read_cifar10_python

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
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


# ---------------------------------------------------------------------------
# Generated archives
# ---------------------------------------------------------------------------


def cifar_batch_pickle(rng: np.random.Generator, n: int) -> tuple[bytes, np.ndarray, np.ndarray]:
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


@dataclass
class CifarArchive:
    """A tiny CIFAR-10 python archive and the checksums to serve it under."""

    archive: bytes
    members: dict[str, bytes]
    train_data: np.ndarray  # rows (20, 3072) of data_batch_1
    test_labels: np.ndarray

    @property
    def checksums(self) -> dict[str, str]:
        return {CIFAR_ARCHIVE: md5(self.archive), **{name: md5(body) for name, body in self.members.items()}}


@pytest.fixture
def cifar_archive() -> CifarArchive:
    rng = np.random.default_rng(0)
    members, first = {}, None
    for name in cifar10_batch_names():
        body, data, labels = cifar_batch_pickle(rng, 20 if name == "data_batch_1" else 10)
        members[name] = body
        first = data if first is None else first
    archive = tar_gz(
        {
            **{f"cifar-10-batches-py/{name}": body for name, body in members.items()},
            "cifar-10-batches-py/batches.meta": pickle.dumps({b"label_names": []}, protocol=2),
        }
    )
    return CifarArchive(archive, members, first, labels)


def idx_gz(array: np.ndarray) -> bytes:
    header = struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape)
    return gzip.compress(header + array.tobytes())


@pytest.fixture
def mnist_files():
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (16, 28, 28), dtype=np.uint8),
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
    assert SOURCES["cifar10"].base_url + CIFAR_ARCHIVE == ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
    assert SOURCES["cifar10"].files[CIFAR_ARCHIVE] == "c58f30108f718f92721af3b95e74349a"
    assert SOURCES["mnist"].base_url == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert SOURCES["mnist"].files["t10k-labels-idx1-ubyte.gz"] == "ec29112dd5afa0611ce80d1b7f02629c"
    assert SOURCES["fashion-mnist"].files["train-images-idx3-ubyte.gz"] == ("8d4fb7e6c68d591d4c3dfef9ec88bf0d")
    for source in SOURCES.values():
        for digest in source.files.values():
            assert len(digest) == 32 and int(digest, 16) >= 0
    assert set(SOURCES["mnist"].files) == set(IDX_FILES) == set(SOURCES["fashion-mnist"].files)


def test_download_cifar_extracts_and_skips(tmp_path, server, cifar_archive):
    server.files[CIFAR_ARCHIVE] = cifar_archive.archive
    data_dir = tmp_path / "data"
    kwargs = dict(base_url=server.url, checksums=cifar_archive.checksums, quiet=True)
    out = download_dataset("cifar10", data_dir, **kwargs)
    assert out == data_dir / "cifar-10-batches-py"
    assert server.requests == [CIFAR_ARCHIVE]
    X_train, _, _, y_test = read_cifar10_python(out)
    np.testing.assert_array_equal(X_train[:20].transpose(0, 3, 1, 2).reshape(20, 3072), cifar_archive.train_data)
    np.testing.assert_array_equal(y_test, cifar_archive.test_labels)
    # Only the archive and the extracted folder remain: no temporary files.
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar-10-batches-py", CIFAR_ARCHIVE]
    # Second call: the folder's files match their checksums, nothing is fetched.
    download_dataset("cifar10", data_dir, **kwargs)
    assert server.requests == [CIFAR_ARCHIVE]


def test_truncated_extracted_batch_is_restored_not_trusted(tmp_path, server, cifar_archive):
    """--download checks the batch files already present: a truncated one is extracted again."""
    server.files[CIFAR_ARCHIVE] = cifar_archive.archive
    kwargs = dict(base_url=server.url, checksums=cifar_archive.checksums, quiet=True)
    out = download_dataset("cifar10", tmp_path, **kwargs)
    batch = out / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    (out / "test_batch").unlink()
    server.requests.clear()
    download_dataset("cifar10", tmp_path, **kwargs)
    assert server.requests == []  # the archive next to the folder is verified and reused
    assert batch.read_bytes() == cifar_archive.members["data_batch_3"]
    assert (out / "test_batch").read_bytes() == cifar_archive.members["test_batch"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py", CIFAR_ARCHIVE]
    # A truncated archive as well: it is fetched again.
    (tmp_path / CIFAR_ARCHIVE).write_bytes(cifar_archive.archive[:1000])
    batch.write_bytes(b"")
    download_dataset("cifar10", tmp_path, **kwargs)
    assert server.requests == [CIFAR_ARCHIVE]
    assert batch.read_bytes() == cifar_archive.members["data_batch_3"]


def test_load_raw_download_verifies_present_cifar_files(tmp_path, server, cifar_archive, monkeypatch):
    """load_raw(download=True) does not read a present but altered batch: it is replaced first."""
    server.files[CIFAR_ARCHIVE] = cifar_archive.archive
    source = DatasetSource(server.url, {CIFAR_ARCHIVE: md5(cifar_archive.archive)}, extract_dir="cifar-10-batches-py")
    members = {name: md5(body) for name, body in cifar_archive.members.items()}
    monkeypatch.setitem(dl.SOURCES, "cifar10", dataclasses.replace(source, members=members))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, body in cifar_archive.members.items():
        (folder / name).write_bytes(body)
    (folder / "data_batch_2").write_bytes(b"\x80\x02}q\x00.")  # a valid pickle of an empty dict
    with pytest.raises(DatasetError, match="data_batch_2: expected a dict with keys 'data' and 'labels'"):
        load_raw("cifar10", data_dir=tmp_path)
    raw = load_raw("cifar10", data_dir=tmp_path, download=True)
    assert raw["X_train"].shape == (60, 32, 32, 3) and raw["X_test"].shape == (10, 32, 32, 3)
    assert server.requests == [CIFAR_ARCHIVE]


def test_existing_archive_with_right_checksum_is_not_fetched(tmp_path, server, cifar_archive):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / CIFAR_ARCHIVE).write_bytes(cifar_archive.archive)
    out = download_dataset("cifar10", data_dir, base_url=server.url, checksums=cifar_archive.checksums, quiet=True)
    assert server.requests == []
    assert (out / "test_batch").is_file()


def test_load_raw_download_uses_table(tmp_path, server, cifar_archive, monkeypatch):
    server.files[CIFAR_ARCHIVE] = cifar_archive.archive
    monkeypatch.setitem(
        dl.SOURCES,
        "cifar10",
        DatasetSource(server.url, {CIFAR_ARCHIVE: md5(cifar_archive.archive)}, extract_dir="cifar-10-batches-py"),
    )
    raw = load_raw("cifar10", data_dir=tmp_path, download=True)
    assert raw["X_train"].shape == (60, 32, 32, 3) and raw["X_test"].shape == (10, 32, 32, 3)
    assert server.requests == [CIFAR_ARCHIVE]


def test_official_table_lists_the_six_cifar_batches():
    assert list(SOURCES["cifar10"].members) == list(cifar10_batch_names())
    assert SOURCES["cifar10"].members["test_batch"] == "40351d587109b95175f43aff81a1287e"


def test_checksum_mismatch_leaves_nothing(tmp_path, server, cifar_archive):
    archive = cifar_archive.archive
    server.files[CIFAR_ARCHIVE] = archive
    data_dir = tmp_path / "data"
    wrong = "0" * 32
    with pytest.raises(DownloadError) as info:
        download_dataset("cifar10", data_dir, base_url=server.url, checksums={CIFAR_ARCHIVE: wrong}, quiet=True)
    message = str(info.value)
    assert message.startswith(server.url + CIFAR_ARCHIVE + f": expected md5 {wrong}, got {md5(archive)}")
    assert "checksum mismatch" in message
    assert not data_dir.exists()  # the folder this call created is removed again


def test_failed_download_removes_only_the_folders_it_created(tmp_path, server):
    existing = tmp_path / "a"
    existing.mkdir()
    with pytest.raises(DownloadError, match="404"):
        download_dataset("mnist", existing / "b" / "data", base_url=server.url, quiet=True)
    assert listing(tmp_path) == ["a"]


def test_data_dir_that_is_a_file_is_a_download_error(tmp_path):
    target = tmp_path / "data"
    target.write_text("not a folder")
    with pytest.raises(DownloadError, match=f"^{target}/mnist: expected a folder to download into, got "):
        download_dataset("mnist", target, base_url="http://127.0.0.1:9/", quiet=True)
    assert target.read_text() == "not a folder"


def test_oversized_download_is_cut_off(tmp_path, server, mnist_files, monkeypatch):
    files, _ = mnist_files
    server.files.update(files)
    monkeypatch.setattr(dl, "MAX_DOWNLOAD_BYTES", 1000)
    checksums = {name: md5(body) for name, body in files.items()}
    with pytest.raises(DownloadError, match="expected at most 1000 bytes, got more"):
        download_dataset("mnist", tmp_path / "d", base_url=server.url, checksums=checksums, quiet=True)
    assert not (tmp_path / "d").exists()


def test_short_response_leaves_nothing(tmp_path, server, mnist_files):
    files, _ = mnist_files
    server.files.update(files)
    server.short.add("t10k-images-idx3-ubyte.gz")
    data_dir = tmp_path / "data"
    checksums = {name: md5(body) for name, body in files.items()}
    with pytest.raises(DownloadError) as info:
        download_dataset("mnist", data_dir, base_url=server.url, checksums=checksums, quiet=True)
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
    download_dataset("mnist", data_dir, base_url=server.url, checksums=checksums, quiet=True)
    assert server.requests == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_short_response_without_checksum_help(tmp_path, server, cifar_archive):
    """Even if the checksum table matched the truncated bytes, the length check fails."""
    archive = cifar_archive.archive
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
    assert not data_dir.exists()


def test_http_error_names_url(tmp_path, server):
    data_dir = tmp_path / "data"
    with pytest.raises(DownloadError) as info:
        download_dataset("cifar10", data_dir, base_url=server.url, quiet=True)
    assert str(info.value).startswith(server.url + CIFAR_ARCHIVE + ": expected a download, got HTTPError")
    assert "404" in str(info.value) and not data_dir.exists()


def test_download_mnist_and_load(tmp_path, server, mnist_files, monkeypatch):
    files, arrays = mnist_files
    server.files.update(files)
    checksums = {name: md5(body) for name, body in files.items()}
    out = download_dataset("mnist", tmp_path, base_url=server.url, checksums=checksums, quiet=True)
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
    # Present files with the right checksums: no download even with download=True.
    server.requests.clear()
    load_raw("fashion-mnist", data_dir=tmp_path, download=True)
    assert server.requests == []
    # A truncated file is fetched again, not trusted; a plain (unverified) file beside it is not read.
    folder = tmp_path / "fashion-mnist"
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(files["t10k-labels-idx1-ubyte.gz"][:20])
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"not an idx file")
    raw = load_raw("fashion-mnist", data_dir=tmp_path, download=True)
    assert server.requests == ["t10k-labels-idx1-ubyte.gz"]
    np.testing.assert_array_equal(raw["y_test"], arrays["t10k-labels-idx1-ubyte.gz"])


def test_existing_file_with_wrong_checksum_is_replaced(tmp_path, server, mnist_files):
    files, _ = mnist_files
    server.files.update(files)
    checksums = {name: md5(body) for name, body in files.items()}
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")
    download_dataset("mnist", tmp_path, base_url=server.url, checksums=checksums, quiet=True)
    assert (folder / "train-images-idx3-ubyte.gz").read_bytes() == files["train-images-idx3-ubyte.gz"]


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
    assert str(info.value).startswith(server.url + CIFAR_ARCHIVE + ": expected plain files and folders")
    # The verified archive stays; no extracted folder and no temporary folder.
    assert listing(data_dir) == [CIFAR_ARCHIVE]
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "a" / "evil.txt").exists()
    assert not Path("/tmp/xpdl-evil-absolute.txt").exists()


def test_archive_without_expected_folder(tmp_path, server):
    archive = tar_gz({"other/file": b"x"})
    server.files[CIFAR_ARCHIVE] = archive
    with pytest.raises(DownloadError, match="expected archive .* to contain the folder cifar-10-batches-py/"):
        download_dataset(
            "cifar10",
            tmp_path,
            base_url=server.url,
            checksums={CIFAR_ARCHIVE: md5(archive)},
            quiet=True,
        )
    assert listing(tmp_path) == [CIFAR_ARCHIVE]


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="^name: expected one of .*, got 'digits'$"):
        download_dataset("digits", tmp_path)
    with pytest.raises(ValueError, match=r"^checksums: expected names of files .*, got \['nope'\]$"):
        download_dataset("mnist", tmp_path, checksums={"nope": "0" * 32})
    with pytest.raises(ValueError, match="^base_url: expected an http"):
        download_dataset("mnist", tmp_path, base_url="file:///etc/")
    assert list(tmp_path.iterdir()) == []
