"""Running the ``confbus`` command as a real process: to its end (``run_confbus``) or in the
background (``start_confbus``), where a test waits for *the line* (``confbus ready``, ``ready
again``, an event) instead of sleeping and hoping (``confbus.procs.proc``)."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from confbus.procs.proc import Proc
from confbus.procs.spawn import alive

REPO = Path(__file__).resolve().parents[2]


def confbus_argv() -> list[str]:
    """The installed ``confbus`` console script, or the same entry point through ``-m``."""
    script = Path(sys.executable).with_name("confbus")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "confbus.cli.main"]


def start_confbus(*args: str, cwd: Path = REPO) -> Proc:
    """``confbus ARGS`` in the background, its stdout and stderr read as ``out`` and ``err``."""
    return Proc("confbus", [*confbus_argv(), *args], cwd=cwd).start(wait_ready=False)


def run_confbus(
    *args: str, timeout: float = 60.0, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``confbus ARGS`` to its end; ``env``: variables set for it, beside the test's own;
    ``stdin``: what it reads (nothing when None)."""
    return subprocess.run(
        [*confbus_argv(), *args],
        cwd=REPO,
        env={**os.environ, **env} if env else None,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def arun_confbus_bytes(
    *args: str, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``run_confbus`` without blocking the test's event loop (its bus connection lives on),
    its output as the bytes it wrote."""
    environ = {**os.environ, **env} if env else None
    with anyio.fail_after(timeout):
        done = await anyio.run_process(
            [*confbus_argv(), *args], cwd=REPO, check=False, env=environ, stdin=subprocess.DEVNULL
        )
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout, done.stderr)


async def arun_confbus(
    *args: str, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``arun_confbus_bytes`` with its output decoded."""
    done = await arun_confbus_bytes(*args, timeout=timeout, env=env)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def closed_port() -> int:
    """A port nothing listens on (bound and released; nothing else here takes it back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def dead_nats_url() -> str:
    """A NATS URL nothing answers at (``closed_port``)."""
    return f"nats://127.0.0.1:{closed_port()}"


def assert_unreachable(done: subprocess.CompletedProcess[str]) -> None:
    """A command that could not reach the bus: exit 3 (retryable), and its message says so."""
    assert done.returncode == 3, done
    assert "unreachable" in done.stderr, done.stderr


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


def wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Poll until none of ``pids`` runs, for at most ``timeout`` seconds; those still running."""
    deadline = time.monotonic() + timeout
    while (running := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.02)  # poll interval: another process's death has no event here
    return running
