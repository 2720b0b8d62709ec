"""The data directory of ``confbus up``, locked so that only one stack ever runs on it.

``<data-dir>/confbus.lock`` carries an exclusive ``flock`` and the pid of ``confbus up``.
The stack passes the locked descriptor on to nats-server and to every service it starts:
a lock belongs to the open file, not to one process, so the directory stays locked until the
last of them is gone, and no second nats-server ever writes the same store (nats-server does
not lock its store, and two servers writing one store corrupt it).

If ``confbus up`` itself is killed, the kernel kills what it started (procs/spawn.py), and
the lock is free a moment later: a new ``confbus up`` whose predecessor is dead waits that
moment out (``ORPHANS_GRACE_S``) instead of refusing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from confbus.cli.exitcodes import FAILED, CliError
from confbus.procs.spawn import alive

LOCK_NAME = "confbus.lock"
# How long the children of a dead ``confbus up`` may take to die and let go of the lock.
ORPHANS_GRACE_S = 5.0


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self.fd = -1

    def acquire(self) -> int:
        """Lock the directory and return the descriptor; ``CliError`` if someone holds it.

        Refusing touches nothing: the file is opened without truncation and only rewritten
        once the lock is ours.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if not _lock(fd):
            owner = _read_pid(fd)
            if owner is None or alive(owner) or not _lock(fd, ORPHANS_GRACE_S):
                os.close(fd)
                raise CliError(self._refusal(owner), FAILED) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return fd

    def release(self) -> None:
        # Processes that still hold an inherited copy keep the directory locked, rightly.
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _refusal(self, owner: int | None) -> str:
        message = f"another confbus up is running on {self.data_dir} (pid {owner or 'unknown'})"
        if owner is None or alive(owner):
            return f"{message}; stop it first, or use another --data-dir"
        holders = lock_holders(self.path)
        if not holders:
            return f"{message}; it is exiting, try again in a moment"
        listed = ", ".join(f"{pid} ({cmd})" for pid, cmd in holders)
        pids = " ".join(str(pid) for pid, _ in holders)
        return (
            f"{message}: that process is gone, but processes it started still hold the "
            f"directory: {listed}. Stop them (kill -TERM {pids}) before starting again."
        )


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None


def _lock(fd: int, wait: float = 0.0) -> bool:
    """Take the lock, trying for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
        time.sleep(0.05)  # poll interval: flock has no timed wait


def lock_holders(path: Path) -> list[tuple[int, str]]:
    """Processes with ``path`` open (Linux ``/proc``; empty elsewhere), without ourselves."""
    target = str(path.resolve())
    found: list[tuple[int, str]] = []
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == target for fd in (proc / "fd").iterdir()):
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(proc.name), cmd.strip()[:100]))
    return sorted(found)
