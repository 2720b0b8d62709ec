"""Model-based test: random sequences of prepares, decisions, epochs, catch-ups, restarts and
restores against a real directory, checked against a small model of docs/design.md §4, §5.

After every step: the live file's bytes hash to the recorded applied sha256 and are exactly the
applied version's; the applied version never decreases except by ``restore_last_good``, which
lands exactly on the last known good; an aborted transaction's bytes are never live.

``power_cut`` puts every file back to what its last fsync made durable (a write never fsynced
is lost, or torn) and restarts: what was durable must be enough. File names are taken as
durable (the directory fsyncs are checked by ``test_fsync_discipline``).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from confbus.agent.state import CommitOutcome, Refused
from tests.agent.support import content_for, make_prepare, open_disk, sha

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

KEEP = 3
versions = st.integers(min_value=1, max_value=12)
epochs = st.integers(min_value=0, max_value=4)
# Relative draws keep most prepares plausible (a refused prepare tests less of the machine).
version_steps = st.integers(min_value=-2, max_value=3)
epoch_steps = st.sampled_from([0, 0, 0, 1, -1])
rarely = st.integers(min_value=0, max_value=4).map(lambda n: n == 0)


class DiskModel(RuleBasedStateMachine):
    txns = Bundle("txns")  # every transaction prepared so far, refused or not

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="confbus-model-"))
        self.disk = open_disk(self.root, keep=KEEP)
        self.disk.load()
        self.applied = 0
        self.epoch = 0
        self.prepared: tuple[str, int, int] | None = None  # (txid, version, epoch)
        self.last_good: int | None = None
        self.aborted: set[int] = set()  # versions whose only transaction aborted
        self.restored = False  # applied moved back by restore_last_good since the last advance
        self.previous = 0
        self.count = 0
        # (st_dev, st_ino) -> the file's bytes at its last fsync: what a power cut leaves.
        self.durable: dict[tuple[int, int], bytes] = {}
        self._real_fsync = os.fsync
        os.fsync = self._fsync

    def _fsync(self, fd: FileDescriptorLike) -> None:
        self._real_fsync(fd)
        fd = fd if isinstance(fd, int) else fd.fileno()
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            path = os.readlink(f"/proc/self/fd/{fd}")
            self.durable[(st.st_dev, st.st_ino)] = Path(path).read_bytes()

    def teardown(self) -> None:
        os.fsync = self._real_fsync
        shutil.rmtree(self.root, ignore_errors=True)

    def _txid(self) -> str:
        self.count += 1
        return f"t{self.count}"

    # --- rules ------------------------------------------------------------------------

    @rule(target=txns, dv=version_steps, de=epoch_steps, bad_sha=rarely)
    def prepare(self, dv: int, de: int, bad_sha: bool) -> tuple[str, int]:
        version, epoch = max(1, self.applied + dv), max(0, self.epoch + de)
        txid = self._txid()
        p = make_prepare(version, txid=txid, epoch=epoch, sha256="0" * 64 if bad_sha else None)
        expected: str | None = None
        if epoch < self.epoch:
            expected = "stale-epoch"
        elif self.prepared is not None:
            expected = "busy"
        elif version <= self.applied:
            expected = "not-newer"
        elif bad_sha:
            expected = "sha256"
        self.epoch = max(self.epoch, epoch)
        try:
            self.disk.stage(p)
            self.disk.seal(txid)
        except Refused as no:
            assert no.kind == expected, (no, expected)
            event(f"prepare refused: {no.kind}")
            return (txid, version)
        assert expected is None, expected
        event("prepare: yes")
        self.prepared = (txid, version, epoch)
        return (txid, version)

    @rule()
    def redeliver_prepared(self) -> None:
        if self.prepared is None:
            return
        txid, version, epoch = self.prepared
        try:
            staged = self.disk.stage(make_prepare(version, txid=txid, epoch=epoch))
        except Refused as no:
            # Only a newer coordinator's epoch may fence a redelivered prepare.
            assert no.kind == "stale-epoch" and epoch < self.epoch
            return
        assert staged.already_prepared and epoch == self.epoch

    @precondition(lambda self: self.prepared is not None)
    @rule(commit=st.booleans(), flush=st.booleans())
    def decide(self, commit: bool, flush: bool) -> None:
        assert self.prepared is not None
        txid, version, _ = self.prepared
        if commit:
            outcome = self.disk.commit(txid, version, sha(content_for(version)))
            event(f"commit: {outcome}")
            assert outcome is CommitOutcome.APPLIED  # prepared ⇒ newer than applied
            if flush:  # what the agent does once it has announced the apply
                self.disk.flush()
            self.applied = version
            self.restored = False
            self.aborted.discard(version)
        else:
            assert self.disk.abort(txid) is True
            self.aborted.add(version)
        self.prepared = None

    @rule(txn=txns)
    def stray_decision(self, txn: tuple[str, int]) -> None:
        # Redelivered decisions, and commits of transactions this node refused or aborted (a
        # zombie coordinator's), change nothing.
        txid, version = txn
        if self.prepared is not None and self.prepared[0] == txid:
            return
        before = self.disk.snapshot()
        outcome = self.disk.commit(txid, version, sha(content_for(version)))
        assert outcome is not CommitOutcome.APPLIED
        assert self.disk.abort(txid) is False
        assert self.disk.snapshot() == before

    @rule(epoch=epochs)
    def observe_epoch(self, epoch: int) -> None:
        raised = self.disk.observe_epoch(epoch)
        assert raised == (epoch > self.epoch)
        self.epoch = max(self.epoch, epoch)

    @rule(version=versions)
    def catch_up(self, version: int) -> None:
        installed = self.disk.apply(version, sha(content_for(version)), content_for(version))
        assert installed == (version > self.applied)
        if installed:
            self.applied = version
            self.restored = False
            self.aborted.discard(version)
            if self.prepared is not None and self.prepared[1] <= version:
                self.prepared = None  # it can never apply now: dropped

    @precondition(lambda self: self.applied > 0)
    @rule()
    def mark_last_good(self) -> None:
        self.disk.mark_last_good(self.applied)
        self.last_good = self.applied

    @rule()
    def restore_last_good(self) -> None:
        restored = self.disk.restore_last_good()
        assert restored == self.last_good
        event(f"restore: {'to ' if restored else 'no '}last good")
        if restored is not None:
            self.applied = restored
            self.restored = True

    @rule()
    def restart(self) -> None:
        self.disk = open_disk(self.root, keep=KEEP)
        state = self.disk.load()
        assert state.highest_epoch == self.epoch
        assert (state.prepared.txid if state.prepared else None) == (
            self.prepared[0] if self.prepared else None
        )
        assert state.last_good == self.last_good

    @rule(tear=st.booleans())
    def power_cut(self, tear: bool) -> None:
        """Every file as its last fsync left it: bytes written since are lost (or, ``tear``,
        cut short); a file never fsynced holds garbage. Then a restart."""
        spoilt = 0
        for directory, _, names in os.walk(self.root):
            for name in names:
                path = Path(directory) / name
                st_ = path.stat()
                now = path.read_bytes()
                kept = self.durable.get((st_.st_dev, st_.st_ino))
                if kept == now:
                    continue
                spoilt += 1
                lost = kept if kept is not None and not tear else now[: len(now) // 2]
                if kept is None:
                    lost = b"\0" * len(now)  # never fsynced: anything, say zeros
                with open(path, "r+b") as f:  # in place: the same inode
                    f.write(lost)
                    f.truncate(len(lost))
        event(f"power cut: {'some' if spoilt else 'no'} unsynced bytes lost")
        self.restart()

    # --- invariants -------------------------------------------------------------------

    @invariant()
    def live_file_is_the_applied_version(self) -> None:
        state = self.disk.snapshot()
        if self.applied == 0:
            assert state.applied_version is None and state.live_sha256 is None
            return
        assert state.applied_version == self.applied
        live = self.disk.live_path.read_bytes()
        assert sha(live) == state.applied_sha256 == state.live_sha256
        assert live == content_for(self.applied)
        assert self.applied not in self.aborted
        assert self.applied in state.history
        assert len(state.history) <= KEEP + 2  # the last N, the applied one, the last good

    @invariant()
    def applied_version_only_moves_forward(self) -> None:
        current = self.disk.snapshot().applied_version or 0
        assert current >= self.previous or (self.restored and current == self.last_good)
        self.previous = current


DiskModel.TestCase.settings = settings(
    max_examples=200, stateful_step_count=30, deadline=None, print_blob=True
)
test_disk_model = DiskModel.TestCase
