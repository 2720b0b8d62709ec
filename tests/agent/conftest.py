"""Fixtures of the agent's disk tests: real directories, and a tmpfs for the cross-fs case."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from confbus.agent.disk import NamespaceDisk
from tests.agent.support import open_disk, paths


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def live(root: Path) -> Path:
    return paths(root)[0]


@pytest.fixture
def state_dir(root: Path) -> Path:
    return paths(root)[1]


@pytest.fixture
def disk(root: Path) -> NamespaceDisk:
    d = open_disk(root)
    d.load()
    return d


@pytest.fixture
def other_fs(tmp_path: Path) -> Iterator[Path]:
    """A directory on a different file system than ``tmp_path``: a fresh tmpfs mount when we
    may mount (root), else a directory in /dev/shm; skipped when neither differs."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    mounted = (
        os.geteuid() == 0
        and shutil.which("mount") is not None
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mnt)],
            capture_output=True,
        ).returncode
        == 0
    )
    if mounted:
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        return
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system to put the state dir on")
    where = shm / f"confbus-test-{uuid.uuid4().hex}"
    where.mkdir()
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)
