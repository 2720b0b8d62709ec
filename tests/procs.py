"""Real confbus processes for end-to-end and fault tests.

``Proc`` runs ``python -m confbus.<pkg> …`` (or ``confbus …``), collects its stdout lines in
a background thread, and lets a test wait — with a deadline — for its ready line or any
other line. ``kill`` is SIGKILL (a crash), ``pause``/``resume`` are SIGSTOP/SIGCONT.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class Proc:
    def __init__(
        self, name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self.ready: dict[str, Any] | None = None
        self.history: list[str] = []

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
        argv = [sys.executable, "-m", f"confbus.{pkg}", "--nats-url", nats_url, *args]
        return cls(name or pkg, argv, log_dir, env)

    def start(self, wait_ready: bool = True, timeout: float = 20.0) -> Proc:
        self.lines = queue.Queue()
        log = open(self.log_path, "a")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=self.env,
            start_new_session=True,
        )
        log.close()
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        if wait_ready:
            line = self.wait_line(lambda s: '"event": "ready"' in s, timeout)
            self.ready = json.loads(line)
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.history.append(line)
            self.lines.put(line)

    def wait_line(self, match: Callable[[str], bool], timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.name}: no matching line in {timeout}s; log tail:\n{self.log_tail()}"
                )
            try:
                line = self.lines.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited {self.proc.returncode}:\n{self.log_tail()}"
                    ) from None
                continue
            if match(line):
                return line

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait()

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGCONT)
                self.proc.send_signal(signal.SIGTERM)
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                return self.proc.wait()
        return self.proc.returncode

    def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)
