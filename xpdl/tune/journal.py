"""Journal files of ``xpdl tune`` checked (and a cut-off last record repaired) before anything is written to them.

Optuna's journal is one JSON object per line, each written whole under a file lock.
A process killed during a write (or a full disk) can leave the last line cut off.
Optuna still reads such a journal (it stops at the partial line), but the next
record it appends lands right after the partial line, and from then on the journal
cannot be loaded at all. :func:`check_journal` runs before a resume or a join
writes anything: a cut-off last record is removed (the original file is kept as a
backup first), and a journal with a damaged record before its end is refused as
it is. Nothing here imports Optuna.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from xpdl.runs.atomic import atomic_write

#: What the backup of a repaired journal is called: ``journal.log.damaged-<timestamp>``.
BACKUP_INFIX = "damaged"


class JournalDamaged(ValueError):
    """A journal file that is missing or holds a damaged record before its end; the message is one line."""


def _is_record(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return isinstance(record, dict) and "op_code" in record


def check_journal(path: str | os.PathLike[str]) -> str | None:
    """Check the journal file ``path``; repair a cut-off last record. Returns a note saying what was repaired.

    Every line but the last must be a complete journal record. A last line without
    its newline is a write that was cut off: the file is copied to
    ``PATH.damaged-<timestamp>`` and rewritten (atomically) with the complete records
    only, or with the newline added when the last record is whole.

    Raises:
        JournalDamaged: ``path`` is not a file, or a record before the last line is
            damaged (the file is left unchanged).
    """
    path = Path(path)
    if not path.is_file():
        raise JournalDamaged(f"{path}: no such journal file" + (" (it is a folder)" if path.is_dir() else ""))
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    complete, tail = data[:cut], data[cut:]
    for number, line in enumerate(complete.split(b"\n")[:-1], start=1):
        if not _is_record(line):
            raise JournalDamaged(
                f"{path}: line {number} is not a journal record; the study cannot be read reliably and is left "
                "as it is (restore the file from a backup, or start a new study)"
            )
    if not tail:
        return None
    repaired = data + b"\n" if _is_record(tail) else complete
    backup = _free_backup(path)
    atomic_write(backup, lambda f: f.write(data))
    atomic_write(path, lambda f: f.write(repaired))
    kept = repaired.count(b"\n")
    what = "a record without its line end" if repaired is not complete else f"a cut-off record ({len(tail)} bytes)"
    return (
        f"{path} ended in {what} (a write that was interrupted); kept its {kept} complete records, "
        f"the original is kept as the backup {backup}"
    )


def _free_backup(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        candidate = path.with_name(f"{path.name}.{BACKUP_INFIX}-{stamp}" + (f"-{n}" if n > 1 else ""))
        if not candidate.exists():
            return candidate
    raise JournalDamaged(f"{path}: no free name for its backup next to it")
