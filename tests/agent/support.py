"""Helpers shared by the agent's disk tests and the crash child (importable from both)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from confbus.agent.disk import STATE_FILE, NamespaceDisk
from confbus.agent.record import SlotRecord
from confbus.agent.state import CommitOutcome
from confbus.agent.state_io import FileMode
from confbus.schemas.names import Format
from confbus.schemas.txn import Prepare

NS = "payments"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_for(version: int) -> bytes:
    """The (fixed) bytes of a version: a version's content never changes."""
    return f'{{"version": {version}, "pool": {{"size": {version * 10}}}}}\n'.encode()


def make_prepare(
    version: int,
    content: bytes | None = None,
    *,
    txid: str | None = None,
    epoch: int = 1,
    fmt: Format = "json",
    sha256: str | None = None,
    namespace: str = NS,
) -> Prepare:
    data = content_for(version) if content is None else content
    return Prepare(
        txid=txid or f"tx-v{version}",
        namespace=namespace,
        version=version,
        sha256=sha256 or sha(data),
        format=fmt,
        content=data,
        participants=["node-1"],
        epoch=epoch,
        timeout_s=5.0,
    )


def paths(root: Path) -> tuple[Path, Path]:
    """(live file, state dir) under ``root``, as the crash tests lay them out."""
    return root / "etc" / "app" / "config.json", root / "state"


def open_disk(root: Path, keep: int = 3) -> NamespaceDisk:
    live, state_dir = paths(root)
    return NamespaceDisk(NS, live, state_dir, keep=keep)


def commit_version(disk: NamespaceDisk, version: int, *, epoch: int = 1) -> None:
    """Stage, seal and commit ``version`` with its standard content (a whole 2PC round)."""
    p = make_prepare(version, epoch=epoch)
    disk.stage(p)
    disk.seal(p.txid)
    assert disk.commit(p.txid, p.version, p.sha256) is CommitOutcome.APPLIED
    disk.flush()


def state_record(ns_dir: Path) -> SlotRecord:
    """The namespace's state record (two slot files) in ``<state dir>/<ns>``."""
    return SlotRecord(ns_dir, STATE_FILE, FileMode(0o600))


def record_bytes(ns_dir: Path) -> bytes | None:
    """The newest state record's body as it is on disk now."""
    return state_record(ns_dir).read()
