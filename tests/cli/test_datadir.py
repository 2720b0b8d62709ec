"""The data directory's lock: one stack per directory, and the moment after a killed
``confbus up`` — its children still on their way out, holding the lock — waited out, not
refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from confbus.cli import datadir
from confbus.cli.datadir import LOCK_NAME, DataDirLock
from confbus.cli.exitcodes import CliError

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()  # until told to go
"""


def _holder(lock: Path) -> subprocess.Popen[str]:
    """A process holding the lock, as a child of ``confbus up`` holds its inherited copy."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    return proc


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_the_children_of_a_dead_up_are_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = tmp_path / LOCK_NAME
    lock.write_text(f"{_dead_pid()}\n")  # the killed confbus up
    holder = _holder(lock)
    take = datadir._lock

    def first_refused_then_the_child_dies(fd: int, wait: float = 0.0) -> bool:
        taken = take(fd, wait)
        if not taken and wait == 0 and holder.stdin is not None and not holder.stdin.closed:
            holder.stdin.close()  # its parent-death signal, in real life
        return taken

    monkeypatch.setattr(datadir, "_lock", first_refused_then_the_child_dies)
    try:
        fd = DataDirLock(tmp_path).acquire()
        os.close(fd)
        assert holder.stdin is not None and holder.stdin.closed  # it really was held
        assert lock.read_text() == f"{os.getpid()}\n"
    finally:
        holder.kill()
        holder.wait()


def test_a_live_up_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / LOCK_NAME
    holder = _holder(lock)
    try:
        lock.write_text(f"{holder.pid}\n")  # alive: its own stack, serving
        with pytest.raises(
            CliError, match=f"another confbus up is running .* \\(pid {holder.pid}\\)"
        ):
            DataDirLock(tmp_path).acquire()
        assert lock.read_text() == f"{holder.pid}\n"
    finally:
        holder.kill()
        holder.wait()
