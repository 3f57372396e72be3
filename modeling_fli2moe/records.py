"""Append-only JSON-lines files whose records survive a kill at any instant.

A record is one JSON object on one line, written with a single ``write`` and flushed to disk before the
next one starts. A process killed mid-write can leave at most one partial line, at the end of the file:
:func:`read_records` ignores it and :class:`RecordWriter` cuts it off before appending, so the file only
ever holds whole records. One writer per file (under ``accelerate launch`` each process has its own).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["RecordWriter", "read_records", "repair_records"]


def repair_records(path: str | os.PathLike) -> int:
    """Cut a partial last line (a write that was killed) off the file; returns the bytes removed."""
    path = Path(path)
    if not path.is_file():
        return 0
    size = path.stat().st_size
    with open(path, "rb+") as fh:
        end = size
        while end > 0:  # scan back to the last newline, in blocks
            start = max(0, end - 65536)
            fh.seek(start)
            block = fh.read(end - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                end = start + cut + 1
                break
            end = start
        if end < size:
            fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())
            logger.warning("%s: removed a partial last record (%d bytes) left by an interrupted write", path, size - end)
    return size - end


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    for number, line in enumerate(complete.splitlines(), 1):
        if line.strip():
            yield number, line


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The whole records of a JSON-lines file (none when it does not exist); a partial last line is skipped.

    A complete line that is not a JSON object means the file was edited or damaged otherwise: it raises,
    naming the file and the line, rather than silently dropping results."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for number, line in _lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}, line {number}, is not a JSON record ({err}); the file was changed by something other than "
                "this run. Delete that line (its example is then done again) or the file, and start again."
            ) from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}, is not a JSON object; delete that line or the file")
        out.append(record)
    return out


class RecordWriter:
    """Appends records to one JSON-lines file, each written whole and synced before `append` returns.

    Args:
        path: the file (created, with its folder, when missing; a partial last line is removed first).
        sync: `os.fsync` after each record, so that a power cut or a killed machine keeps it too.
    """

    def __init__(self, path: str | os.PathLike, sync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_records(self.path)
        self.sync = sync
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, allow_nan=True) + "\n").encode("utf-8")
        written = os.write(self._fd, line)
        while written < len(line):  # a short write (rare, for very large records): finish it
            written += os.write(self._fd, line[written:])
        if self.sync:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
