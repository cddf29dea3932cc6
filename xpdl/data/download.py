"""Download the official dataset files (CIFAR-10, MNIST, Fashion-MNIST).

Only the standard library is used (``urllib``).  Every file is streamed to a
temporary file in the destination folder, checked against its MD5 checksum,
flushed and fsync-ed, and only then renamed to its final name, so an
interrupted or corrupt download never leaves a file that looks complete.
Archives are extracted into a temporary folder inside ``data_dir`` and renamed
into place once extraction has finished; members with absolute paths, ``..``
components or that are not plain files/folders are refused.

Files already present are never trusted by name: each downloaded file, and each
file extracted from the CIFAR-10 archive, is checked against its MD5 checksum on
every call, and one that differs (a truncated or altered file) is fetched again.
A failed call removes the folders it created.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from xpdl.data.formats import CIFAR10_PYTHON_DIR, DatasetError, cifar10_batch_names
from xpdl.runs.atomic import fsync_folder

__all__ = [
    "SOURCES",
    "DatasetSource",
    "DownloadError",
    "download_dataset",
    "MAX_DOWNLOAD_BYTES",
    "md5_of_file",
]

_CHUNK_BYTES = 1 << 20
#: Most bytes accepted for one file (the largest, the CIFAR-10 archive, has 170,498,071).
MAX_DOWNLOAD_BYTES = 256 << 20


class DownloadError(DatasetError):
    """A download failed: network error, short response, bad checksum or bad archive.

    The message names the URL and the problem.  Subclass of
    :class:`~xpdl.data.formats.DatasetError` so one ``except`` covers every
    "data not available" condition.
    """


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset is downloaded from and where it is stored.

    Attributes:
        base_url: server folder; each file's URL is ``base_url + file name``.
        files: file name -> MD5 hex digest of the official file.
        subdir: folder below ``data_dir`` receiving the files ("" = ``data_dir``).
        extract_dir: for archives, the folder the archive unpacks to (below
            ``data_dir``); ``None`` when the files are used as downloaded.
        members: for archives, file name inside ``extract_dir`` -> MD5 hex
            digest; these files are verified whenever the folder is present.
    """

    base_url: str
    files: Mapping[str, str]
    subdir: str = ""
    extract_dir: str | None = None
    members: Mapping[str, str] = field(default_factory=dict)


_IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

#: The single table of download URLs and MD5 checksums.
SOURCES: dict[str, DatasetSource] = {
    "cifar10": DatasetSource(
        base_url="https://www.cs.toronto.edu/~kriz/",
        files={"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
        extract_dir=CIFAR10_PYTHON_DIR,
        # the MD5 checksums of the extracted batches, as published by torchvision
        members=dict(
            zip(
                cifar10_batch_names(),
                (
                    "c99cafc152244af753f735de768cd75f",
                    "d4bba439e000b95fd0a9bffe97cbabec",
                    "54ebc095f3ab1f0389bbae665268c751",
                    "634d18415352ddfa80567beed471001a",
                    "482c414d41f54cd18b22e5b47cb7c3cb",
                    "40351d587109b95175f43aff81a1287e",
                ),
            )
        ),
    ),
    "mnist": DatasetSource(
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        files=dict(
            zip(
                _IDX_NAMES,
                (
                    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                    "d53e105ee54ea40749a09fcbcd1e9432",
                    "9fb629c4189551a2d022fa330f9573f3",
                    "ec29112dd5afa0611ce80d1b7f02629c",
                ),
            )
        ),
        subdir="mnist",
    ),
    "fashion-mnist": DatasetSource(
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files=dict(
            zip(
                _IDX_NAMES,
                (
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "25c81989df183df01b3e8a0aad5dffbe",
                    "bef4ecab320f06d8554ea6380940ec79",
                    "bb300cfdad3c16e7a12a480ee83cd310",
                ),
            )
        ),
        subdir="fashion-mnist",
    ),
}


def md5_of_file(path: str | os.PathLike[str]) -> str:
    """Return the MD5 hex digest (32 lowercase hex characters) of a file."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_file(url: str, dest: Path, md5: str, timeout: float, log: Callable[[str], None]) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying its MD5.

    Skips the download if ``dest`` already exists with the right checksum.
    On any failure the temporary file is removed and :class:`DownloadError`
    (naming the URL) is raised; ``dest`` is only ever created complete.
    """
    md5 = md5.lower()
    if dest.is_file():
        if md5_of_file(dest) == md5:
            log(f"{dest}: present, checksum ok")
            return dest
        log(f"{dest}: present but checksum differs, downloading again")
    log(f"downloading {url} -> {dest}")
    tmp_path: Path | None = None
    try:
        with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part", delete=False) as tmp:
            tmp_path = Path(tmp.name)
            h = hashlib.md5(usedforsecurity=False)
            received = 0
            request = urllib.request.Request(url, headers={"User-Agent": "xpdl"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                length_header = response.headers.get("Content-Length")
                expected_len = int(length_header) if length_header is not None else None
                while chunk := response.read(_CHUNK_BYTES):
                    received += len(chunk)
                    if received > MAX_DOWNLOAD_BYTES:
                        raise DownloadError(
                            f"{url}: expected at most {MAX_DOWNLOAD_BYTES} bytes, got more; the download was discarded"
                        )
                    tmp.write(chunk)
                    h.update(chunk)
            if expected_len is not None and received != expected_len:
                raise DownloadError(
                    f"{url}: expected {expected_len} bytes (Content-Length), got {received}; "
                    f"short response, the download was discarded"
                )
            got = h.hexdigest()
            if got != md5:
                raise DownloadError(
                    f"{url}: expected md5 {md5}, got {got} ({received} bytes); "
                    f"checksum mismatch, the download was discarded"
                )
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_path, dest)
        fsync_folder(dest.parent)
    except BaseException as exc:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        if isinstance(exc, urllib.error.HTTPError):
            exc.close()  # an HTTPError holds the open response
        if isinstance(exc, DownloadError) or not isinstance(exc, Exception):
            raise
        raise DownloadError(
            f"{url}: expected a download, got {type(exc).__name__}: {exc}; nothing was saved to {dest}"
        ) from exc
    log(f"{dest}: {received} bytes, checksum ok")
    return dest


def _check_member(member: tarfile.TarInfo, archive: Path, url: str) -> None:
    """Refuse archive members that could write outside the target folder."""
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    problem = None
    if name.startswith(("/", "\\")) or os.path.isabs(name) or (parts and ":" in parts[0]):
        problem = "absolute path"
    elif ".." in parts:
        problem = "'..' path component"
    elif not (member.isfile() or member.isdir()):
        problem = "not a regular file or folder (links and devices are refused)"
    if problem is not None:
        raise DownloadError(
            f"{url}: expected plain files and folders inside the archive root, got member {name!r} of {archive} "
            f"({problem}); refused"
        )


def _bad_members(folder: Path, members: Mapping[str, str]) -> list[str]:
    """Names of ``members`` missing from ``folder`` or whose MD5 differs."""
    return [name for name, md5 in members.items() if not (folder / name).is_file() or md5_of_file(folder / name) != md5]


def _extract_archive(archive: Path, data_dir: Path, source: DatasetSource, url: str) -> Path:
    """Extract ``archive`` and move its ``source.extract_dir`` folder into ``data_dir``.

    Extraction happens in a temporary folder inside ``data_dir`` which is
    removed afterwards whatever happens; the extracted members are checked
    against ``source.members`` before the folder is moved into place, replacing
    an existing folder (whose files failed their checksums) only then.
    """
    extract_dir = source.extract_dir
    assert extract_dir is not None
    final = data_dir / extract_dir
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{extract_dir}.", suffix=".extract", dir=data_dir))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tf:
                members = tf.getmembers()
                for member in members:
                    _check_member(member, archive, url)
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(tmp_dir, members=members, filter="data")
                else:  # Python < 3.10.12 / 3.11.4: members were checked above
                    tf.extractall(tmp_dir, members=members)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise DownloadError(
                f"{url}: expected a readable .tar.gz archive in {archive}, got {type(exc).__name__}: {exc}; "
                f"delete it and download again"
            ) from None
        extracted = tmp_dir / extract_dir
        if not extracted.is_dir():
            found = sorted(p.name for p in tmp_dir.iterdir())
            raise DownloadError(
                f"{url}: expected archive {archive} to contain the folder {extract_dir}/, got {found or 'nothing'}"
            )
        bad = _bad_members(extracted, source.members)
        if bad:
            raise DownloadError(
                f"{url}: expected {archive} to hold {', '.join(bad)} with their checksums, got other files"
            )
        if final.exists():
            os.replace(final, tmp_dir / "previous")
        os.replace(extracted, final)
        fsync_folder(data_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return final


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the created ones, deepest first."""
    created, p = [], folder
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"{folder}: expected a folder to download into, got {exc.strerror or exc}") from None
    return created


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def download_dataset(
    name: str,
    data_dir: str | os.PathLike[str],
    base_url: str | None = None,
    checksums: dict[str, str] | None = None,
    *,
    timeout: float = 60.0,
    quiet: bool = False,
) -> Path:
    """Download (and for CIFAR-10 extract) an official dataset into ``data_dir``, verifying every file.

    Args:
        name: ``"cifar10"``, ``"mnist"`` or ``"fashion-mnist"``.
        data_dir: root data folder; created if missing.  CIFAR-10 ends up in
            ``data_dir/cifar-10-batches-py`` (the archive
            ``cifar-10-python.tar.gz`` is kept next to it), MNIST in
            ``data_dir/mnist`` and Fashion-MNIST in ``data_dir/fashion-mnist``
            (the four ``*.gz`` IDX files).
        base_url: server folder replacing the official one from
            :data:`SOURCES` (file names are appended to it).
        checksums: file name -> MD5 hex digest replacing entries of the
            official table, for downloaded files or files extracted from an
            archive (for serving other files, e.g. in tests).
        timeout: socket timeout per network operation, in seconds.
        quiet: if False, progress lines are written to stderr.

    Returns:
        The dataset folder (``data_dir/cifar-10-batches-py``,
        ``data_dir/mnist`` or ``data_dir/fashion-mnist``).

    Files already present are checked against their MD5 checksums: those that
    match are not downloaded again, the others are.  For CIFAR-10 the extracted
    folder is kept when all six batch files match; otherwise the (verified or
    fetched) archive is extracted again and replaces it.  On failure, nothing
    that looks complete is left, and folders this call created are removed if
    empty.

    Raises:
        ValueError: unknown ``name``, unknown file in ``checksums``, or a
            base URL that is not http(s).
        DownloadError: ``data_dir`` cannot be created, network failure, short
            response, checksum mismatch or unsafe / broken archive.
    """
    if name not in SOURCES:
        raise ValueError(f"name: expected one of {sorted(SOURCES)}, got {name!r}")
    source = SOURCES[name]
    md5s, member_md5s = dict(source.files), dict(source.members)
    if checksums:
        unknown = sorted(set(checksums) - set(md5s) - set(member_md5s))
        if unknown:
            raise ValueError(
                f"checksums: expected names of files of {name!r} ({sorted(md5s) + sorted(member_md5s)}), got {unknown}"
            )
        md5s.update((k, v) for k, v in checksums.items() if k in md5s)
        member_md5s.update((k, v) for k, v in checksums.items() if k in member_md5s)
    source = DatasetSource(source.base_url, md5s, source.subdir, source.extract_dir, member_md5s)
    base = base_url if base_url is not None else source.base_url
    if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        raise ValueError(f"base_url: expected an http(s) URL, got {base!r}")
    if not base.endswith("/"):
        base += "/"

    def log(message: str) -> None:
        if not quiet:
            print(f"[xpdl.data.download] {message}", file=sys.stderr, flush=True)

    data_dir = Path(data_dir)
    folder = data_dir / source.subdir if source.subdir else data_dir
    created = _make_folder(folder)
    try:
        return _fetch(source, base, data_dir, folder, timeout, log)
    except BaseException:
        _remove_empty(created)
        raise


def _fetch(
    source: DatasetSource, base: str, data_dir: Path, folder: Path, timeout: float, log: Callable[[str], None]
) -> Path:
    """The body of :func:`download_dataset` once its arguments are checked and ``folder`` exists."""
    if source.extract_dir is not None:
        final = data_dir / source.extract_dir
        if final.is_dir():
            bad = _bad_members(final, source.members)
            if not bad:
                log(f"{final}: present, checksums ok")
                return final
            log(f"{final}: {', '.join(bad)} missing or with a wrong checksum, extracting the archive again")
    for file_name, md5 in source.files.items():
        url = base + file_name
        path = _download_file(url, folder / file_name, md5, timeout, log)
        if source.extract_dir is not None:
            log(f"extracting {path}")
            _extract_archive(path, data_dir, source, url)
    return data_dir / source.extract_dir if source.extract_dir is not None else folder
