"""Lock files that keep two processes from writing the same output folder or feature-cache file at once.

A lock is a small JSON file created atomically (``O_CREAT | O_EXCL``) that names its holder (pid, host,
command, start time). A second writer gets an error naming the holder, or waits for it (``timeout``). A
lock left by a process that died on this host is stale: it is taken over with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["LockError", "FileLock", "lock_holder", "LOCK_FILE", "output_lock"]

#: The lock file of an output folder (a training run, an explanation run).
LOCK_FILE = ".fli2moe.lock"


class LockError(RuntimeError):
    """Another process holds the lock (the message names it and what to do)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def lock_holder(path: str | os.PathLike) -> dict[str, Any] | None:
    """What the lock file at ``path`` says about its holder (``None`` when there is no lock)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return {}  # being written right now, or garbage
    return info if isinstance(info, dict) else {}


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _describe(info: dict[str, Any]) -> str:
    if not info:
        return "an unknown process (the lock file is empty or unreadable)"
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {info.get('pid')} on {info.get('host')} (started {when}: {info.get('command')})"


class FileLock:
    """An exclusive lock file, usable as a context manager.

    Args:
        path: the lock file (e.g. ``<output_dir>/.fli2moe.lock``).
        what: what is locked, for messages ("output folder outputs/run").
        timeout: seconds to wait for another holder (0: fail at once).
        poll: seconds between tries while waiting.
    """

    def __init__(self, path: str | os.PathLike, what: str, timeout: float = 0.0, poll: float = 0.5) -> None:
        self.path = Path(path)
        self.what = what
        self.timeout = float(timeout)
        self.poll = float(poll)
        self.held = False

    def _try_create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv) or sys.executable,
                "started": time.time()}  # fmt: skip
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(info, fh)
        return True

    def _stale(self, info: dict[str, Any] | None) -> bool:
        """The holder was a process on this host that no longer runs."""
        if not info or info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
            return False
        return info["pid"] != os.getpid() and not _pid_alive(info["pid"])

    def acquire(self) -> FileLock:
        deadline = time.monotonic() + self.timeout
        announced = False
        while True:
            if self._try_create():
                self.held = True
                return self
            info = lock_holder(self.path)
            if info is None:
                continue  # released between our two looks
            if not info and _age(self.path) < 2.0:
                time.sleep(0.05)  # created but not yet written by its holder
                continue
            if self._stale(info):
                warnings.warn(
                    f"{self.what}: taking over the lock {self.path} left by {_describe(info)}, which no longer runs",
                    UserWarning,
                    stacklevel=3,
                )
                self.path.unlink(missing_ok=True)
                continue
            if time.monotonic() >= deadline:
                raise LockError(
                    f"{self.what} is in use by {_describe(info)} (lock file {self.path}). Wait for that run to "
                    "finish or stop it, or use another folder; if no such process runs any more, delete the lock file."
                )
            if not announced:
                logger.warning("%s is in use by %s; waiting up to %.0f s", self.what, _describe(info), self.timeout)
                announced = True
            time.sleep(self.poll)

    def release(self) -> None:
        if self.held:
            info = lock_holder(self.path)
            if info is not None and info.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def output_lock(output_dir: str | os.PathLike) -> FileLock:
    """The lock of an output folder: one run writes it at a time; a second is refused, naming the first."""
    return FileLock(Path(output_dir) / LOCK_FILE, f"output folder {output_dir}")
