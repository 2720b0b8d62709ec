"""Processes started through ``confbus.procs.spawn`` end when the process that started them
ends — however it ends — and not a moment before."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from confbus.procs import spawn
from tests.cli.procs import wait_gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's prctl")

SLEEPER = ["sleep", "600"]


def test_a_child_dies_with_its_parent_when_the_parent_is_sigkilled(tmp_path: Path) -> None:
    parent_code = textwrap.dedent(
        """
        import sys, time
        from confbus.procs.spawn import spawn
        child = spawn(["sleep", "600"])
        print(child.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert spawn.alive(child)
        parent.kill()
        parent.wait()
        assert wait_gone([child], timeout=2.0) == []
    finally:
        parent.kill()
        parent.wait()


def test_a_child_started_on_a_worker_thread_outlives_that_thread() -> None:
    """The kernel's "parent" is the thread that forked. Forked on a thread that then ends, a
    guarded child is killed at once (the control); through ``spawn`` it is not."""
    started: dict[str, subprocess.Popen[bytes]] = {}

    def until_guarded(child: subprocess.Popen[bytes]) -> None:
        """Keep this thread until the guard has set the signal and exec'd the sleeper."""
        cmdline = Path(f"/proc/{child.pid}/cmdline")
        deadline = time.monotonic() + 10
        while not cmdline.read_bytes().startswith(b"sleep") and time.monotonic() < deadline:
            time.sleep(0.005)  # poll: an exec has no event to wait on from here

    def control() -> None:  # forked on this very thread, which ends after
        started["control"] = subprocess.Popen(spawn._guard(SLEEPER))
        until_guarded(started["control"])

    def through_spawn() -> None:
        started["spawned"] = spawn.spawn(SLEEPER)
        until_guarded(started["spawned"])

    threads = [threading.Thread(target=control), threading.Thread(target=through_spawn)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        # The control's death is the event: its thread ended, and the kernel acted on it.
        assert started["control"].wait(timeout=5) == -signal.SIGKILL
        with pytest.raises(subprocess.TimeoutExpired):  # nor a moment after the control
            started["spawned"].wait(timeout=1.0)
    finally:
        for proc in started.values():
            spawn.kill(proc)


def test_a_missing_program_is_refused_at_spawn_as_popen_would() -> None:
    with pytest.raises(FileNotFoundError):
        spawn.spawn(["no-such-program-here", "--version"])


def test_a_guarded_argv_must_be_forked_on_the_main_thread() -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            spawn.guarded(SLEEPER)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert len(errors) == 1 and "main thread" in str(errors[0])
    assert spawn.guarded(SLEEPER)[-2:] == SLEEPER  # here, on the main thread, it is fine
