"""Stop requests (Ctrl-C, SIGTERM) that long loops also check between steps.

The command line turns SIGINT and SIGTERM into `KeyboardInterrupt` and records the request here. A library
that catches the exception somewhere (a broad ``except BaseException`` around an import or a worker) would
otherwise let the run go on; the training loop and the explanation loop call :func:`raise_if_requested`
between steps, so a request stops the run at the next step whatever happened to the first exception.
Without the command line's handler nothing is recorded and the checks do nothing.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["install_handlers", "raise_if_requested"]

_requested = threading.Event()


def _handle(signum: int, frame: object) -> None:
    _requested.set()
    raise KeyboardInterrupt


def install_handlers() -> None:
    """SIGINT and SIGTERM raise `KeyboardInterrupt` and are remembered (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handle)
        signal.signal(signal.SIGTERM, _handle)


def raise_if_requested() -> None:
    """Raise `KeyboardInterrupt` if a stop was requested."""
    if _requested.is_set():
        raise KeyboardInterrupt
