"""Child process of the crash tests: run the scenario, SIGKILL ourselves at crash point K.

Crash points are the moments just before and just after every write, fsync, rename, unlink and
mkdir the disk side makes (numbered from 0 in the order they happen; the scenario is
deterministic). At a point before a write the process first writes half of the buffer, so a
torn file is left behind too. SIGKILL: no cleanup, no finally blocks, no flush — a real crash
of the process.

    python -m tests.agent.crash_child count ROOT
        run the whole scenario on ROOT; print how many crash points it passed
    CONFBUS_CRASH_AT=K python -m tests.agent.crash_child one ROOT
        run it on ROOT and SIGKILL at point K (to reproduce one failure by hand)
    python -m tests.agent.crash_child sweep TEMPLATE OUT N
        for every K < N: copy TEMPLATE to OUT/crash-K, fork, and crash the forked child at
        point K; print "K exit-code" per line. Forking from one warm process instead of
        starting N interpreters keeps the whole sweep to a few seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confbus.agent.disk import NamespaceDisk
from tests.agent.support import content_for, make_prepare, open_disk, sha

# What the coordinator decided for each transaction of the scenario.
DECISIONS = {"t2": "commit", "t3": "abort", "t5": "commit"}
# Versions the live file may ever hold: the set-up's v1, then 2, 4 and 5; never the aborted 3.
LIVE_VERSIONS = (1, 2, 4, 5)
ENV = "CONFBUS_CRASH_AT"
_FAULTY = ("write", "pwrite", "ftruncate", "fsync", "replace", "rename", "unlink", "mkdir")


class Crasher:
    def __init__(self, crash_at: int | None) -> None:
        self.crash_at = crash_at
        self.points = 0

    def _hit(self) -> bool:
        hit = self.points == self.crash_at
        self.points += 1
        return hit

    def arm(self) -> None:
        for name in _FAULTY:
            setattr(os, name, self._wrap(name, getattr(os, name)))

    def _wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def faulty(*args: Any, **kwargs: Any) -> Any:
            if self._hit():
                if name in ("write", "pwrite"):
                    fd, data = args[0], bytes(args[1])
                    torn = data[: len(data) // 2]  # a torn write
                    real(fd, torn) if name == "write" else real(fd, torn, args[2])
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(*args, **kwargs)
            if self._hit():
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        return faulty


def run_txn(disk: NamespaceDisk, version: int, txid: str, epoch: int) -> None:
    p = make_prepare(version, txid=txid, epoch=epoch)
    disk.stage(p)
    disk.seal(txid)
    if DECISIONS[txid] == "commit":
        disk.commit(txid, version, p.sha256)
        disk.flush()  # as the agent does once it has announced the apply
    else:
        disk.abort(txid)


def scenario(root: Path) -> None:
    """Starts from v1 applied (set up by the parent); ends with v2 restored as last good."""
    disk = open_disk(root)
    disk.load()
    run_txn(disk, 2, "t2", epoch=1)
    run_txn(disk, 3, "t3", epoch=2)
    disk.mark_last_good(2, sha256=sha(content_for(2)))
    disk.apply(4, sha(content_for(4)), content_for(4))  # catch-up path
    run_txn(disk, 5, "t5", epoch=2)
    disk.save_stream_seq(99)
    disk.restore_last_good()


def crash_run(root: Path, crash_at: int | None) -> int:
    """Run the scenario on ``root`` with faults armed; return the number of points passed."""
    crasher = Crasher(crash_at)
    crasher.arm()
    scenario(root)
    return crasher.points


def sweep(template: Path, out: Path, points: int) -> None:
    for k in range(points):
        root = out / f"crash-{k}"
        shutil.copytree(template, root, symlinks=True)
        pid = os.fork()  # this process is single-threaded: forking it is safe
        if pid == 0:
            code = 0
            try:
                crash_run(root, k)
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)  # no atexit, no flush of the parent's buffers
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(f"{k} {os.waitstatus_to_exitcode(status)}\n")


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "count":
        sys.stdout.write(f"{crash_run(Path(args[0]), None)}\n")
    elif mode == "one":
        crash_run(Path(args[0]), int(os.environ[ENV]))
    elif mode == "sweep":
        sweep(Path(args[0]), Path(args[1]), int(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
