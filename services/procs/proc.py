"""A real process whose output is waited on line by line, with deadlines.

Threads read the process's stdout (and its stderr, when that does not go to a log file) as it
writes them, so a caller waits for *the line* — the JSON ready line every confbus service
prints, ``confbus ready``, an event — instead of sleeping and hoping. Tests and benchmarks run
confbus's services, agents and the ``confbus`` command itself through ``Proc``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from confbus.procs.spawn import spawn

Match = str | Callable[[str], bool]


class Exited(RuntimeError):
    """The process ended without writing the line that was waited for."""


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

    def wait_for(self, match: Match, timeout: float = 30.0, start: int = 0) -> str:
        """The first line from index ``start`` on that contains ``match`` (or satisfies it).

        ``TimeoutError`` if none came within ``timeout`` seconds, ``Exited`` if the pipe
        closed first (the process ended)."""

        def found(line: str) -> bool:
            return match in line if isinstance(match, str) else match(line)

        def first() -> str | None:
            return next((line for line in self.lines[start:] if found(line)), None)

        with self._cond:
            self._cond.wait_for(lambda: first() is not None or self.closed, timeout)
            line = first()
            closed = self.closed
        if line is not None:
            return line
        what = repr(match) if isinstance(match, str) else "matching"
        if closed:
            raise Exited(f"ended without a line {what}; got:\n{self.tail()}")
        raise TimeoutError(f"no line {what} in {timeout:g}s; got:\n{self.tail()}")

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def tail(self, n: int = 30) -> str:
        with self._cond:
            return "\n".join(self.lines[-n:])


class Proc:
    """One process: stdout read as ``out``; stderr appended to ``<log_dir>/<name>.log``, or read
    as ``err`` when there is no log dir.

    It runs in its own session (a Ctrl-C on the terminal is not its business; ``kill`` takes
    its whole group) and, by default, dies with the process that started it. ``start`` again
    after ``stop`` or ``kill`` runs it afresh with the same command.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path | None = None,
        env: dict[str, str] | None = None,
        *,
        cwd: Path | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log" if log_dir is not None else None
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.die_with_parent = die_with_parent
        self.popen: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] | None = None
        self._out: Lines | None = None
        self._err: Lines | None = None

    @classmethod
    def service(
        cls,
        pkg: str,
        nats_url: str,
        log_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        name: str | None = None,
    ) -> Proc:
        """``python -P -m confbus.<pkg> --nats-url URL <args>``: a confbus service."""
        argv = [sys.executable, "-P", "-m", f"confbus.{pkg}", "--nats-url", nats_url, *args]
        return cls(name or pkg, argv, log_dir, env)

    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> Proc:
        """Start it; with ``wait_ready``, return once it printed its JSON ready line."""
        stderr: Any = subprocess.PIPE
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            stderr = open(self.log_path, "ab")  # noqa: SIM115 - the child's now, closed below
        try:
            self.popen = spawn(
                self.argv,
                die_with_parent=self.die_with_parent,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        finally:
            if self.log_path is not None:
                stderr.close()
        assert self.popen.stdout is not None
        self._out = Lines(self.popen.stdout)
        self._err = Lines(self.popen.stderr) if self.popen.stderr is not None else None
        if wait_ready:
            self.wait_ready(timeout)
        return self

    @property
    def out(self) -> Lines:
        assert self._out is not None, f"{self.name} was not started"
        return self._out

    @property
    def err(self) -> Lines:
        if self._err is None:
            raise AttributeError(f"{self.name}: stderr goes to {self.log_path}, not a pipe")
        return self._err

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """The service's JSON ready line (``{"event": "ready", …}``), parsed."""
        line = self.wait_line(lambda s: '"event": "ready"' in s, timeout)
        self.ready = json.loads(line)
        return self.ready

    def wait_line(self, match: Match, timeout: float = 30.0, start: int = 0) -> str:
        """The first stdout line from ``start`` on that matches, with the log in any error."""
        try:
            return self.out.wait_for(match, timeout, start)
        except Exited as exc:
            code = self.popen.wait() if self.popen is not None else None
            raise Exited(f"{self.name} exited {code}: {exc}\n{self.log_tail()}") from None
        except TimeoutError as exc:
            raise TimeoutError(f"{self.name}: {exc}\n{self.log_tail()}") from None

    def log_text(self) -> str:
        """All it wrote to stderr so far (its log file, or the pipe)."""
        if self.log_path is None:
            return self._err.text() if self._err is not None else ""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def describe(self) -> str:
        out = self._out.text() if self._out is not None else ""
        return f"{self.argv}\nstdout:\n{out}\nstderr:\n{self.log_tail(200)}"

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was not started"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL to its whole process group (a crash), and reap it."""
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait()

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """``sig`` (resumed first, if paused), then SIGKILL to the group after ``timeout``
        seconds; its exit code (None if it never started)."""
        self._signal(sig)
        return self._stopped(timeout)

    def _signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
                self.popen.send_signal(sig)

    def _stopped(self, timeout: float) -> int | None:
        """After ``_signal``: its exit code, SIGKILL to the group if it is still running
        ``timeout`` seconds on."""
        if self.popen is None:
            return None
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return self.wait_exit()

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Its exit code, once it ended and its output was read to the end."""
        assert self.popen is not None, f"{self.name} was not started"
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"{self.name} still running after {timeout:g}s\n{self.describe()}"
            ) from None
        for lines in (self._out, self._err):
            if lines is not None:
                lines.join()
        return code


def start_together(procs: Sequence[Proc], timeout: float = 30.0) -> None:
    """Start them all, then wait for each one's JSON ready line: their start-ups overlap.
    (For processes that need not wait for one another; otherwise ``start`` each in turn.)"""
    for proc in procs:
        proc.start(wait_ready=False)
    for proc in procs:
        proc.wait_ready(timeout)


def stop_together(procs: Sequence[Proc], sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """``Proc.stop`` of them all with their shutdowns overlapping: ``sig`` to each, then wait
    for each; SIGKILL to any still running ``timeout`` seconds after the signals."""
    for proc in procs:
        proc._signal(sig)
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc._stopped(max(0.0, deadline - time.monotonic()))


def python_module(module: str, *args: str) -> list[str]:
    """``python -m <module> <args>`` with this interpreter."""
    return [sys.executable, "-m", module, *args]
