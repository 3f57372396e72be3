"""The test helpers that start local servers: a free port, waiting for a process to listen on it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modeling_fli2moe.testing.servers import free_port, wait_for_port


def test_wait_for_port_returns_once_the_process_listens():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(proc, port, timeout=60, output=lambda: "")
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_wait_for_port_names_the_output_of_a_process_that_exits():
    proc = subprocess.Popen([sys.executable, "-c", "print('broken config'); raise SystemExit(3)"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with pytest.raises(RuntimeError, match=r"exited with status 3: broken config"):
        wait_for_port(proc, free_port(), timeout=60, output=lambda: proc.stdout.read())


def test_wait_for_port_kills_a_process_that_never_listens():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(RuntimeError, match=r"did not listen on 127\.0\.0\.1:\d+ within 2 s"):
        wait_for_port(proc, free_port(), timeout=2, output=lambda: "")
    assert proc.wait(timeout=10) != 0
