"""A service whose main task ends — by a foreign CancelledError, say — exits non-zero so that
its supervisor restarts it, instead of living on as a shell that answers /healthz."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from confbus.procs.nats import NatsServer

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[2]


async def test_a_main_task_cancelled_from_outside_fails_the_process(
    nats_server: NatsServer,
) -> None:
    argv = [
        sys.executable,
        "-m",
        "tests.runtime.foreign_cancel_service",
        "--nats-url",
        nats_server.url,
        "--http-port",
        "0",
    ]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False
        )

    done = await anyio.to_thread.run_sync(run)
    assert '"event": "ready"' in done.stdout, done.stderr[-2000:]
    assert done.returncode != 0, done.stderr[-2000:]
    assert "cancelled, not by us" in done.stderr, done.stderr[-2000:]
