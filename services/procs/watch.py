"""Keep servers running: restart one that died, on the same ports and data, with backoff.

``confbus up`` watches its nats-server this way, and ``confbus up --ha`` its three
nats-servers and three etcd members. These are not the supervisor's pipes to read, so their
deaths are noticed by polling; a restart runs on a worker thread (starting and waiting for a
server blocks), and ``spawn`` sees that the new process still dies with the supervisor.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio

from confbus.procs.spawn import exit_text, keep_previous

log = logging.getLogger("confbus.up")

RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # one that served this long before dying restarts quickly again
POLL_S = 0.5
LOG_TAIL_LINES = 20


class Server(Protocol):
    proc: subprocess.Popen[bytes] | None  # the current process

    def restart(self) -> object:
        """Start again on the same ports and data (blocking)."""


@dataclass
class Watched:
    name: str  # as the supervisor's log says it: "nats-server", "nats-2", "etcd e1"
    server: Server
    log_path: Path | None = None  # kept as <name>.1 across a restart; its tail is reported
    delay: float = RESTART_MIN_S
    started: float = 0.0


async def keep_running(
    watched: Sequence[Watched], on_restart: Callable[[], None] | None = None
) -> None:
    """Restart any of ``watched`` that died, until cancelled; ``on_restart`` after each
    restart, before it is logged (the supervisor writes down the new pid)."""
    while True:
        for w in watched:
            proc = w.server.proc
            if proc is None or (code := proc.poll()) is None:
                continue
            await _restart(w, code, on_restart)
        await anyio.sleep(POLL_S)


async def _restart(w: Watched, code: int, on_restart: Callable[[], None] | None) -> None:
    if time.monotonic() - w.started > STABLE_AFTER_S:
        w.delay = RESTART_MIN_S  # it served a good while: not a crash loop
    tail = await anyio.to_thread.run_sync(last_lines, w.log_path)
    log.error("%s %s; restarting in %gs%s", w.name, exit_text(code), w.delay, tail)
    await anyio.sleep(w.delay)
    w.delay = min(w.delay * 2, RESTART_MAX_S)
    w.started = time.monotonic()
    keep_previous(w.log_path)
    try:
        await anyio.to_thread.run_sync(w.server.restart)
    except (RuntimeError, TimeoutError, OSError) as exc:
        log.error("%s did not restart: %s", w.name, exc)
        return
    if on_restart is not None:
        on_restart()  # before saying so: whoever reads the line may look the pid up
    proc = w.server.proc
    log.info("%s ready again (pid %s)", w.name, proc.pid if proc is not None else "?")


def last_lines(path: Path | None, offset: int = 0) -> str:
    """``; last lines of PATH:`` and the log's last lines from ``offset`` on, to end a report
    that something died."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = text.splitlines()[-LOG_TAIL_LINES:]
    if not lines:
        return f" (nothing in {path})"
    return f"; last lines of {path}:\n  " + "\n  ".join(lines)
