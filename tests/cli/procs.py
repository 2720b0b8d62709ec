"""Running ``confbus`` as a real process and waiting on its output lines, with deadlines.

Threads read stdout and stderr as the process writes them, so a test waits for *the line*
(``ready``, ``ready again``, an event) instead of sleeping and hoping.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import anyio

REPO = Path(__file__).resolve().parents[2]


def confbus_argv() -> list[str]:
    """The installed ``confbus`` console script, or the same entry point through ``-m``."""
    script = Path(sys.executable).with_name("confbus")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "confbus.cli.main"]


class Lines:
    """Every line a pipe has given so far; ``wait_for`` blocks until one matches."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[bytes]) -> None:
        for raw in pipe:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for(self, needle: str, timeout: float = 30.0, start: int = 0) -> str:
        """The first line from index ``start`` on that contains ``needle``."""

        def found() -> str | None:
            return next((line for line in self.lines[start:] if needle in line), None)

        with self._cond:
            self._cond.wait_for(lambda: found() is not None or self.closed, timeout)
            line = found()
        if line is None:
            state = "ended" if self.closed else f"still running after {timeout}s"
            raise AssertionError(f"no line with {needle!r} ({state}); got:\n{self.text()}")
        return line

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


class Proc:
    def __init__(
        self, argv: Sequence[str], *, cwd: Path = REPO, env: dict[str, str] | None = None
    ) -> None:
        self.argv = list(argv)
        self.popen = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.popen.stdout is not None and self.popen.stderr is not None
        self.out = Lines(self.popen.stdout)
        self.err = Lines(self.popen.stderr)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait(self, timeout: float = 30.0) -> int:
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.argv} still running after {timeout}s; stderr:\n{self.err.text()}"
            ) from None
        self.out.join()
        self.err.join()
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        """Last resort in a test's cleanup: SIGKILL, and reap."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()

    def describe(self) -> str:
        return f"stdout:\n{self.out.text()}\nstderr:\n{self.err.text()}"


def run_confbus(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*confbus_argv(), *args],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def arun_confbus(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``run_confbus`` without blocking the test's event loop (its bus connection lives on)."""
    with anyio.fail_after(timeout):
        done = await anyio.run_process([*confbus_argv(), *args], cwd=REPO, check=False)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def closed_port() -> int:
    """A port nothing listens on (bound and released; nothing else here takes it back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def lock_is_free(path: Path) -> bool:
    """True when no process holds the flock, i.e. up and everything it started are gone."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
