"""Starting local servers in tests: a free port, and waiting until a started process listens on it."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

__all__ = ["free_port", "wait_for_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(
    proc: subprocess.Popen,
    port: int,
    timeout: float,
    output: Callable[[], str],
    host: str = "127.0.0.1",
) -> None:
    """Return once something accepts connections on `host:port`. If `proc` exits first, or nothing listens
    within `timeout` seconds (then `proc` is killed), raise `RuntimeError` with the end of `output()` (the
    process's log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}: {output()[-3000:]}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the server did not listen on {host}:{port} within {timeout:.0f} s: {output()[-3000:]}")
