"""Run folders: the files ``xpdl train`` writes, taking a folder (with a lock), resuming one, cleaning up.

A run folder holds

- ``checkpoint.npz``: the latest training checkpoint (:mod:`xpdl.runs.checkpoint`);
- ``best.npz``: the model with the best validation accuracy so far;
- ``history.json``: the run's settings and histories (:mod:`xpdl.runs.history`);
- ``curves.png``: loss and accuracies against epoch (:mod:`xpdl.plots`);
- while a process writes into it, ``.xpdl.lock``: an exclusive advisory lock
  (``flock``), released (and the file removed) when the process ends; the
  operating system releases it when the process dies, so ``SIGKILL`` leaves no
  stale lock.

Every file is replaced atomically (:func:`xpdl.runs.atomic.atomic_write`): a temporary
``.NAME.*.tmp`` in the folder, fsynced and renamed; a process killed during a save
leaves that temporary behind, which :meth:`RunFolder.resume` removes.

:class:`RunFolder` takes a folder for one process: :meth:`RunFolder.create` for a
new run (refused when another process holds the folder or it already holds a
run), :meth:`RunFolder.resume` for a run to continue; :meth:`RunFolder.discard`
removes what a run that saved nothing worth keeping wrote (the folder too when
this run created it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from pathlib import Path
from typing import Any

from xpdl.runs.atomic import atomic_write

CHECKPOINT_FILE = "checkpoint.npz"
BEST_FILE = "best.npz"
HISTORY_FILE = "history.json"
CURVES_FILE = "curves.png"
LOCK_FILE = ".xpdl.lock"
#: The files a run writes; a folder holding any of them holds a run.
RUN_FILES = (CHECKPOINT_FILE, BEST_FILE, HISTORY_FILE, CURVES_FILE)


class RunFolderError(Exception):
    """A run folder cannot be created, locked, written or resumed; the message names it and says why."""


def describe_os_error(exc: OSError) -> str:
    """``strerror`` of an OSError in words (``No space left on device``), with the path when it has one."""
    text = exc.strerror or (errno.errorcode.get(exc.errno or 0, "") if exc.errno else "") or str(exc)
    return f"{text} ({exc.filename})" if exc.filename else text


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files a killed atomic save left in ``folder``; returns them."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in stale:
        with contextlib.suppress(OSError):
            p.unlink()
    return stale


def write_json(path: str | os.PathLike[str], doc: Any) -> Path:
    """Write ``doc`` as indented JSON, atomically."""
    data = (json.dumps(doc, indent=1) + "\n").encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def read_history(path: str | os.PathLike[str], max_bytes: int = 64 * 2**20) -> dict[str, Any]:
    """The ``history.json`` at ``path`` (a file, or the one in run folder ``path``) as a dict.

    Raises:
        RunFolderError: it is missing, larger than ``max_bytes``, not UTF-8 JSON (nesting
            deep enough to exhaust the parser included), or not a JSON object; the message
            names the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / HISTORY_FILE
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise RunFolderError(f"{path}: cannot be read: {describe_os_error(exc)}") from None
    if len(data) > max_bytes:
        raise RunFolderError(f"{path}: expected a history.json of at most {max_bytes} bytes, got more")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RunFolderError(f"{path}: not a history.json (expected UTF-8 JSON): {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise RunFolderError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _try_lock(fd: int) -> bool:
    """Take an exclusive lock on open file ``fd`` without waiting; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class RunFolder:
    """One run folder, locked for this process until :meth:`release` (or :meth:`discard`).

    Attributes:
        path: the folder.
        created: True when this process created the folder (then :meth:`discard` removes it).
        new_run: True for :meth:`create` (every run file in it is this run's), False for :meth:`resume`.
    """

    def __init__(self, path: Path, created: bool, lock_fd: int | None, new_run: bool) -> None:
        self.path = path
        self.created = created
        self.new_run = new_run
        self._lock_fd: int | None = lock_fd

    # ------------------------------------------------------------ taking a folder
    @classmethod
    def create(cls, out: str | os.PathLike[str] | None, label: str = "--out") -> RunFolder:
        """Take a new run folder: ``out`` (created if missing; it may exist but hold no run) or ``runs/<timestamp>``.

        Raises:
            RunFolderError: the folder cannot be created (a file in the way, no permission,
                a read-only or full file system), another process holds it, or it holds a run.
        """
        if out is None:
            return cls._create_timestamped(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
        folder = Path(out)
        what = f"{label} {out}"
        if folder.exists() and not folder.is_dir():
            raise RunFolderError(f"{what}: exists and is not a folder")
        created = not folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"{what}: cannot create the run folder: {describe_os_error(exc)}") from None
        run = cls._locked(folder, created, what, new_run=True)
        held = [name for name in RUN_FILES if (folder / name).exists()]
        if held:
            run.release()
            raise RunFolderError(
                f"{what}: already holds a run ({', '.join(held)}); continue it with "
                f"--resume {out} or choose another folder"
            )
        return run

    @classmethod
    def _create_timestamped(cls, base: Path) -> RunFolder:
        """Create ``base``, or ``base-2``, ``base-3``, ... when runs started in the same second took it."""
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
            for n in range(1, 1000):
                folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
                try:
                    folder.mkdir()
                except FileExistsError:
                    continue
                return cls._locked(folder, True, f"run folder {folder}", new_run=True)
        except OSError as exc:
            raise RunFolderError(
                f"{base.parent}: cannot create a run folder: {describe_os_error(exc)}; choose one with --out"
            ) from None
        raise RunFolderError(f"{base}: could not create a new run folder; choose one with --out")

    @classmethod
    def resume(cls, run: str | os.PathLike[str], label: str = "--resume") -> tuple[RunFolder, Path]:
        """Take the folder of run ``run`` (a folder, or its ``checkpoint.npz``) to continue it.

        Stale temporaries of a killed save are removed once the folder is locked.

        Returns:
            The locked folder and its checkpoint file.

        Raises:
            RunFolderError: no such folder, no checkpoint in it, or another process holds it.
        """
        path = Path(run)
        folder = path.parent if path.is_file() else path
        ckpt = path if path.is_file() else path / CHECKPOINT_FILE
        what = f"{label} {run}"
        if not folder.is_dir():
            raise RunFolderError(f"{what}: no such run folder")
        if not ckpt.is_file():
            raise RunFolderError(f"{what}: no {CHECKPOINT_FILE} in {folder} (the run saved no checkpoint yet)")
        taken = cls._locked(folder, False, what, new_run=False)
        remove_stale_temporaries(folder)
        return taken, ckpt

    @staticmethod
    def checkpoint_of(run: str | os.PathLike[str]) -> Path:
        """The checkpoint file of run ``run`` (a folder, or its ``checkpoint.npz`` itself)."""
        path = Path(run)
        return path if path.is_file() else path / CHECKPOINT_FILE

    @classmethod
    def view(cls, folder: Path) -> RunFolder:
        """A folder another process of the same job holds: no lock, and :meth:`discard` removes nothing."""
        return cls(folder, created=False, lock_fd=None, new_run=False)

    @classmethod
    def _locked(cls, folder: Path, created: bool, what: str, new_run: bool) -> RunFolder:
        """Lock ``folder`` for this process; on failure a folder this call created is removed again."""
        lock = folder / LOCK_FILE
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if created:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise RunFolderError(f"{what}: cannot write into the run folder: {describe_os_error(exc)}") from None
        # the lock file of a process that just finished may have been unlinked after we opened it:
        # holding a lock on that orphan would not exclude anyone, so the lock must be on the current file
        if _try_lock(fd) and _same_file(fd, lock):
            return cls(folder, created, fd, new_run)
        os.close(fd)
        raise RunFolderError(
            f"{what}: another xpdl process is writing this run folder (it holds {lock}); "
            "wait for it to finish or choose another folder"
        )

    # ------------------------------------------------------------ giving it back
    def release(self) -> None:
        """Give the folder back: the lock file is removed and the lock released (idempotent)."""
        if self._lock_fd is None:
            return
        with contextlib.suppress(OSError):
            (self.path / LOCK_FILE).unlink()
        os.close(self._lock_fd)
        self._lock_fd = None

    def holds_checkpoint(self) -> bool:
        """True when the folder has a ``checkpoint.npz`` to resume from."""
        return (self.path / CHECKPOINT_FILE).is_file()

    def discard(self) -> None:
        """Remove what this new run wrote (its run files and temporaries; the folder if it created it), then release.

        A resumed run's folder keeps its files: only the lock is released.
        """
        if not self.new_run:
            self.release()
            return
        for name in RUN_FILES:
            with contextlib.suppress(OSError):
                (self.path / name).unlink()
        remove_stale_temporaries(self.path)
        self.release()
        if self.created:
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False
