"""Crash at every point: a child process runs stage/seal/commit/abort/apply/restore and SIGKILLs
itself at the K-th file-system step, for every K. After each crash the live file must be whole
(one version's exact bytes, never the aborted one's), and a restart must load a consistent state
and be able to finish the story. See ``crash_child`` for how the points are placed.

A SIGKILL loses no page cache, so this proves the ordering and atomicity of the steps; the
fsyncs that make them survive a power cut are checked by ``test_fsync_discipline``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from confbus.agent.state import CommitOutcome
from confbus.agent.state_io import TMP_MARK, read_if_exists, sha256_file
from tests.agent.crash_child import DECISIONS, ENV, LIVE_VERSIONS
from tests.agent.support import NS, commit_version, content_for, open_disk, paths, sha

REPO = Path(__file__).resolve().parents[2]


def run_child(*args: str | Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tests.agent.crash_child", *map(str, args)],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def confbus_files(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if ".confbus-" in n)


def check_recovered(root: Path, where: str) -> None:
    live, state_dir = paths(root)
    ns_dir = state_dir / NS
    data = live.read_bytes()
    assert data in {content_for(v) for v in LIVE_VERSIONS}, f"{where}: live file not whole"

    disk = open_disk(root)
    state = disk.load()
    v = state.applied_version
    assert v in LIVE_VERSIONS, where
    # The recorded applied version is exactly what the live file holds.
    assert state.live_sha256 == state.applied_sha256 == sha(content_for(v)), where
    assert not state.drifted
    # Nothing half-written survives a restart; a staged file only with its PREPARED record.
    staged = {state.prepared.staged} if state.prepared else set()
    assert set(confbus_files(live.parent)) == staged, where
    assert not [n for n in os.listdir(ns_dir) if TMP_MARK in n], where
    assert not [n for n in os.listdir(ns_dir / "versions") if TMP_MARK in n], where
    assert v in state.history, where
    for kept in state.history:
        assert disk.version_bytes(kept) == content_for(kept), f"{where}: history v{kept}"
    if state.prepared is not None:
        p = state.prepared
        assert p.txid in DECISIONS, where
        assert sha256_file(live.with_name(p.staged)) == p.sha256 == sha(content_for(p.version))

    # Recovery happens once: a second start finds nothing more to do.
    record = [read_if_exists(ns_dir / slot) for slot in ("state.a", "state.b")]
    assert open_disk(root).load() == state, where
    assert [read_if_exists(ns_dir / slot) for slot in ("state.a", "state.b")] == record, where

    # Finish the story as the agent would: learn the in-doubt decision and apply it.
    if state.prepared is not None:
        p = state.prepared
        if DECISIONS[p.txid] == "commit":
            outcome = disk.commit(p.txid, p.version, p.sha256)
            assert outcome in (CommitOutcome.APPLIED, CommitOutcome.NOT_NEWER), where
            disk.flush()
        else:
            assert disk.abort(p.txid), where
    after = disk.snapshot()
    assert after.prepared is None and after.applied_version in LIVE_VERSIONS, where
    assert after.live_sha256 == after.applied_sha256 == sha(live.read_bytes()), where
    assert confbus_files(live.parent) == [], where


def test_crash_at_every_point_leaves_a_whole_file_and_a_loadable_state(tmp_path: Path) -> None:
    template = tmp_path / "template"
    disk = open_disk(template)
    disk.load()
    commit_version(disk, 1)

    full = tmp_path / "full"
    shutil.copytree(template, full, symlinks=True)
    points = int(run_child("count", full))
    assert points > 100  # every step of the scenario is a crash point
    check_recovered(full, "no crash")
    final = open_disk(full).load()
    assert (final.applied_version, final.last_good, final.stream_seq) == (2, 2, 99)

    out = tmp_path / "crashes"
    out.mkdir()
    lines = run_child("sweep", template, out, str(points)).splitlines()
    assert len(lines) == points
    for line in lines:
        k, code = map(int, line.split())
        repro = f"(reproduce: {ENV}={k} python -m tests.agent.crash_child one COPY_OF_TEMPLATE)"
        assert code == -signal.SIGKILL, f"crash point {k} not reached {repro}"
        check_recovered(out / f"crash-{k}", f"crash at point {k} {repro}")
