"""Atomic file writes: readers see the old content or the new, never a mix (stdlib only)."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


class WriteError(OSError):
    """A file could not be written: ``cannot write PATH: REASON`` (an OSError with the errno of the cause)."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file so that readers see the old or the new content, never a mix.

    ``write(f)`` fills a temporary file in the same folder; it is flushed and
    fsynced, renamed over ``path`` with :func:`os.replace`, and the folder is
    fsynced so the rename survives a power loss. If anything fails the temporary
    file is removed and ``path`` is unchanged.

    Raises:
        WriteError: an OSError naming ``path`` itself (not the temporary), e.g. a
            read-only folder, a full disk, or a folder where the file should be.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise _write_error(exc, path) from exc
        raise
    fsync_folder(path.parent)
    return path


def _write_error(exc: OSError, path: Path) -> OSError:
    """``exc`` as a :class:`WriteError` naming ``path`` (its errno and reason kept)."""
    if exc.errno is None:
        return WriteError(errno.EIO, str(exc) or type(exc).__name__, str(path))
    return WriteError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """fsync a folder so a rename inside it is durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
