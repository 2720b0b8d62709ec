"""Starting processes that end when the process that started them ends, and stopping them.

``spawn`` is ``subprocess.Popen`` plus Linux's parent-death signal: the child runs through
``guard.py``, which asks the kernel to SIGKILL it when its parent dies and then execs the real
program (the setting survives exec). ``confbus up`` starts nats-server, etcd and every service
this way, so a supervisor that is SIGKILLed or OOM-killed leaves nothing behind that keeps
serving unsupervised or holds its data directory. SIGKILL rather than SIGTERM: every component
is crash-safe (the fault scenarios prove it), and a child that took its time over a graceful
stop would hold the data directory past the moment a new supervisor wants it.

The kernel's "parent" is the *thread* that forked, not the process: a child forked on a worker
thread is killed when that thread ends (anyio retires idle worker threads after 10 s). So a
child is forked on the main thread, or else on one thread kept for it that lasts as long as
the process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

GUARD = Path(__file__).with_name("guard.py")
DEATH_SIGNAL = signal.SIGKILL


def guarded(argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped so that it dies with this process; fork it on the main thread (or use
    ``spawn``, which sees to that). Unchanged where there is no parent-death signal."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("fork a guarded process on the main thread (see spawn)")
    return _guard(argv)


def _guard(argv: Sequence[str]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return list(argv)
    if shutil.which(argv[0]) is None:  # say so here, as Popen would, not in the child's log
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
    guard = [sys.executable, "-I", "-S", str(GUARD), str(os.getpid()), str(int(DEATH_SIGNAL))]
    return [*guard, *argv]


def spawn(
    argv: Sequence[str], *, die_with_parent: bool = True, **popen: Any
) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **popen)``, and with ``die_with_parent`` ended by the kernel
    when this process ends, however it ends. Safe to call from any thread."""
    if not die_with_parent or not sys.platform.startswith("linux"):
        started: subprocess.Popen[bytes] = subprocess.Popen(argv, **popen)
        return started
    command = _guard(argv)
    return _on_a_lasting_thread(lambda: subprocess.Popen(command, **popen))


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, and SIGKILL if it has not ended ``timeout`` seconds later; its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL (a crash), and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    proc.wait()


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (one of another user's counts; a zombie, dead but
    not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # /proc/PID/stat: "pid (comm) STATE …"; the name may hold spaces and parentheses.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc here: it exists, that is all we know
    return state not in ("Z", "X")


def exit_text(code: int) -> str:
    """``exited with code 1``, ``was killed by SIGKILL``: a returncode as a person says it."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def keep_previous(path: Path | None) -> None:
    """Move a non-empty log to ``<name>.1`` before a process starts a new one: a crash's last
    lines outlive the restart that follows it."""
    if path is not None and path.exists() and path.stat().st_size:
        os.replace(path, path.with_name(path.name + ".1"))


class Server:
    """What a server object that keeps its current process in ``proc`` can do with it."""

    proc: subprocess.Popen[bytes] | None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, SIGKILL after ``timeout``."""
        if self.proc is not None:
            stop(self.proc, timeout)

    def kill(self) -> None:
        if self.proc is not None:
            kill(self.proc)


# -- the thread children are forked on when the caller's thread may end first -----------------

_jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
_forker: threading.Thread | None = None
_forker_lock = threading.Lock()


def _on_a_lasting_thread(fn: Callable[[], T]) -> T:
    if threading.current_thread() is threading.main_thread():
        return fn()
    global _forker
    with _forker_lock:
        if _forker is None:
            # A daemon thread is never joined: it ends when the process does, not before.
            _forker = threading.Thread(target=_fork_jobs, name="confbus-forker", daemon=True)
            _forker.start()
    done: Future[T] = Future()
    _jobs.put((fn, done))
    return done.result()


def _fork_jobs() -> None:
    while True:
        fn, done = _jobs.get()
        try:
            done.set_result(fn())
        except BaseException as exc:  # handed to the caller, who raises it
            done.set_exception(exc)
