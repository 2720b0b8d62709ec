"""Every command survives a reader that closes its stdout (``confbus history web | head -1``):
no ``BrokenPipeError`` traceback, exit 0, as the command's reader got what it wanted."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from tests.cli.procs import REPO, confbus_argv
from tests.version_store.test_service_helpers import Stack, cli, stack

pytestmark = pytest.mark.anyio
__all__ = ["stack"]


def run_into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``confbus ARGS`` with stdout a pipe whose reader is already gone: the first write
    fails with EPIPE, deterministically (``| head -1`` only does so when head wins the race)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [*confbus_argv(), *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


async def test_every_kind_of_command_survives_a_closed_stdout(stack: Stack, tmp_path: Path) -> None:
    ns = "pipes"
    for i in range(3):
        (tmp_path / "c.json").write_text(f'{{"i": {i}}}')
        assert (await cli(stack.url, "publish", ns, str(tmp_path / "c.json"))).code == 0
    url = ["--nats-url", stack.url]
    commands = [
        [*url, "history", ns],
        [*url, "show", ns, "--info"],
        [*url, "show", ns],
        [*url, "policy", ns],
        [*url, "replay", ns],
        [*url, "doctor", "--agents-wait", "0.5"],
        ["--help"],
        ["publish", "--help"],
    ]
    for args in commands:
        done = await anyio.to_thread.run_sync(run_into_closed_pipe, *args)
        assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, (args, done)
        assert done.returncode == 0, (args, done)
