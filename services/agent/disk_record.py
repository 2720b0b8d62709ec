"""The durable state of one namespace on an agent: its record, what it caches, its history.

``RecordedDisk`` is the base of ``confbus.agent.disk.NamespaceDisk`` (read that module's
docstring first: files, fsync discipline, crash safety). It owns the ``DiskState`` record in
its two slots (``confbus.agent.record``), the cached view of the live file and of the history
(``confbus.agent.history``), the bookkeeping folded into the next record write (stream
sequence, announcements), and the commit's deferred work (``flush``). Every public method is
synchronous and blocking, and holds the namespace's lock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec

from confbus.agent.history import PRIVATE, VersionHistory
from confbus.agent.record import RecordCorrupt, SlotRecord
from confbus.agent.staging import StagedFiles
from confbus.agent.state import (
    DiskState,
    Installing,
    LocalState,
    PreparedRecord,
    Refused,
    StateCorrupt,
    VersionNotOnDisk,
    decode_state,
    encode_state,
)
from confbus.agent.state_io import FileHash, ensure_dir
from confbus.schemas.names import check_name

STATE_FILE = "state"  # two slots, state.a and state.b (confbus.agent.record)
LEGACY_STATE_FILE = "state.json"  # one file replaced by rename: agents before 2026-11-27


class RecordedDisk:
    """One namespace's state record, caches and history. Sync and blocking."""

    def __init__(self, namespace: str, live_path: Path, state_dir: Path, keep: int = 10) -> None:
        self.namespace = check_name(namespace, "namespace")
        self.live_path = Path(live_path)
        self.dir = Path(state_dir) / namespace
        self._record = SlotRecord(
            self.dir, STATE_FILE, PRIVATE, legacy=self.dir / LEGACY_STATE_FILE
        )
        self._history = VersionHistory(self.dir, keep)
        self._staged = StagedFiles(self.live_path)
        self._lock = threading.RLock()
        self._state: DiskState | None = None
        # A staged file whose PREPARED record is not written yet (validation running). Memory
        # only: after a crash that staged file is stale, and no vote was sent for it.
        self._staging: PreparedRecord | None = None
        # The stream sequence of the message being handled: folded into the next state write
        # instead of costing a write (two fsyncs) of its own. Skipping a message whose state
        # write carried its sequence is safe: that write is its outcome (a PREPARED record is
        # resolved by asking for the decision; an install intent is finished or forgotten).
        self._pending_seq = 0
        self._announced_version = 0
        # A commit renamed over the live file whose applied record is not on disk yet
        # (``flush`` writes it): the version's bytes, for the history.
        self._deferred: tuple[Installing, bytes] | None = None
        # What the disk held when we last read or wrote it ourselves: the live file's sha256
        # (None: unknown), and the history's listing (``VersionHistory``). The state each 2PC
        # step returns is built from them (``snapshot(reread=False)``) rather than re-read
        # from the disk three times per switch; the heartbeat stats the live file each beat
        # (``live_unchanged``) and takes a full ``snapshot()``, which re-reads both, when the
        # stat moved, so a change made behind our back (drift) shows in the next heartbeat.
        self._live_seen: str | None = None
        self._live_hash = FileHash()  # not read again while its stat stays as it was

    @property
    def keep(self) -> int:
        return self._history.keep

    # --- reading ------------------------------------------------------------------------

    def staged_path(self, txid: str) -> Path:
        return self._staged.path(txid)

    def live_sha256(self) -> str | None:
        """sha256 of the live file as on disk now (None: no file) — for drift detection."""
        self._live_seen = self._live_hash.current(self.live_path)
        return self._live_seen

    def live_unchanged(self, sha256: str | None) -> bool:
        """Whether the live file is, by its stat, the one last hashed, with ``sha256`` — what
        a full ``snapshot()`` would report for it now. One ``stat``, without the lock or a
        thread: the heartbeat's drift check on the event loop (``NodeAgent._publish_heartbeat``),
        which takes the full snapshot only when this says False."""
        return self._live_hash.unchanged(self.live_path, sha256)

    def history(self, *, reread: bool = True) -> list[int]:
        """Versions whose bytes are kept on disk, ascending (``reread=False``: as we last
        listed and changed them)."""
        versions = self._history.listed(reread=reread)
        if self._deferred is not None:
            # On its way into the history (``flush``), which is then pruned: report what
            # will be kept, so that nothing seen changes when the deferred work is done.
            versions.add(self._deferred[0].version)
            versions &= self._history.kept(sorted(versions), self._pinned(self._state))
        return sorted(versions)

    def version_bytes(self, version: int) -> bytes:
        """The bytes of a version from the local history (``VersionNotOnDisk`` if absent)."""
        deferred = self._deferred
        if deferred is not None and deferred[0].version == version:
            return deferred[1]
        data = self._history.read(version)
        if data is None:
            raise VersionNotOnDisk(self.namespace, version)
        return data

    def snapshot(self, *, reread: bool = True) -> LocalState:
        """The namespace as it is now (reads the live file to hash it, and lists the history).

        ``reread=False``: the live file's hash and the history as we last read or wrote them —
        for the state returned right after our own change, which is what the disk holds
        unless something else wrote it in between (the next full snapshot sees that)."""
        with self._lock:
            st = self._current()
            live = self._live_seen
            if reread or live is None:
                live = self.live_sha256()
            return LocalState(
                namespace=self.namespace,
                applied_version=st.applied.version if st.applied else None,
                applied_sha256=st.applied.sha256 if st.applied else None,
                live_sha256=live,
                highest_epoch=st.highest_epoch,
                stream_seq=st.stream_seq,
                prepared=st.prepared,
                last_good=st.last_good.version if st.last_good else None,
                history=tuple(self.history(reread=reread)),
                applied_txid=st.applied.txid if st.applied else None,
                unannounced=st.applied is not None and not st.applied.announced,
            )

    # --- bookkeeping --------------------------------------------------------------------

    def observe_epoch(self, epoch: int) -> bool:
        """Persist ``epoch`` if it is the highest seen (monotonic). True if it was raised."""
        with self._guard():
            st = self._current()
            if epoch <= st.highest_epoch:
                return False
            self._write(msgspec.structs.replace(st, highest_epoch=epoch))
            return True

    def note_stream_seq(self, seq: int) -> None:
        """Remember ``seq`` for the next state write (no I/O of its own).

        Without the lock: the event loop calls this for every message, and the lock is held
        by a worker thread for a whole disk step of this namespace (the periodic heartbeat's
        re-read, a last-good mark with its fsync) — the loop, and every agent of a host with
        it, waited up to 30 ms for it. The loop is the only writer of ``_pending_seq`` and an
        attribute store is atomic, so a concurrent state write carries the new sequence or
        the one before, as it would have before or after the lock."""
        if seq > self._pending_seq:
            self._pending_seq = seq

    def note_announced(self, version: int) -> None:
        """Remember that ``node.applied`` of ``version`` was published, for the next state
        write (no I/O of its own: a crash before it only repeats the announcement)."""
        with self._lock:
            self._announced_version = max(self._announced_version, version)
            st = self._state
            if st is not None and st.applied is not None and st.applied.version <= version:
                self._state = msgspec.structs.replace(
                    st, applied=msgspec.structs.replace(st.applied, announced=True)
                )

    def flush(self) -> LocalState:
        """Record what ``commit`` deferred: the applied record and the history copy (every
        other change of the disk does it first, too). Returns the state."""
        with self._guard():
            return self.snapshot(reread=False)

    def save_stream_seq(self, seq: int) -> None:
        """Persist the last CFG_TXN sequence processed (the ordered consumer resumes after it)."""
        with self._guard():
            st = self._current()
            if seq != st.stream_seq:
                self._write(msgspec.structs.replace(st, stream_seq=seq))

    def load(self) -> LocalState:
        """Read the state and recover from a crash (``NamespaceDisk.load``)."""
        raise NotImplementedError

    # --- internals ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Hold the lock; after a failure, forget the cached state so the next call reloads
        (and recovers) from disk instead of trusting a state that may not have been written."""
        with self._lock:
            try:
                self._settle()
                yield
            except Refused:
                raise
            except BaseException:
                self._state = None
                self._forget_seen()
                raise

    def _forget_seen(self) -> None:
        self._live_seen = None
        self._live_hash.forget()
        self._history.forget_seen()

    def _settle(self) -> None:
        """Finish what ``commit`` deferred: write the applied record, keep the bytes."""
        if self._deferred is None:
            return
        intent, data = self._deferred
        self._deferred = None
        if self._state is None:
            return  # reloading after a failure: ``load`` finishes the commit from the disk
        # Without fsync: until the next durable write carries it, the PREPARED record on
        # disk is this install's intent, and ``load`` finishes it from the live file's hash
        # (``confbus.agent.record`` keeps that record safe from this write).
        self._write(self._state, durable=False)
        # Without fsync either: every reader of the history checks the bytes against the
        # version's sha256 (``load`` the applied one's, and copies it back from the live
        # file if a power cut spoilt it), and the last known good is made durable when it
        # is marked. The copy goes into the inode of the version it pushes out of the
        # history, if any (lost with the record in a power cut, ``load`` finishes the
        # install, and then that version is not kept either).
        reuse = self._pushed_out(intent)
        self._remember(intent.version, data, durable=False, reuse=reuse)
        self._prune()

    def _current(self) -> DiskState:
        if self._state is None:
            self.load()
        assert self._state is not None
        return self._state

    def _read(self) -> DiskState:
        where = self.dir / f"{STATE_FILE}.{{a,b}}"
        try:
            data = self._record.read()
        except RecordCorrupt as exc:
            raise StateCorrupt(where, str(exc)) from exc
        if data is None:
            return DiskState(namespace=self.namespace)
        try:
            st = decode_state(data)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            raise StateCorrupt(where, str(exc)) from exc
        if st.namespace != self.namespace:
            raise StateCorrupt(where, f"it belongs to namespace {st.namespace!r}")
        return st

    def _write(self, st: DiskState, *, durable: bool = True) -> DiskState:
        if self._pending_seq > st.stream_seq:
            st = msgspec.structs.replace(st, stream_seq=self._pending_seq)
        a = st.applied
        if a is not None and not a.announced and a.version <= self._announced_version:
            st = msgspec.structs.replace(st, applied=msgspec.structs.replace(a, announced=True))
        body = encode_state(st)
        try:
            self._record.write(body, durable=durable)
        except FileNotFoundError:  # the first write, or the state dir was removed under us
            ensure_dir(self.dir, 0o700)
            self._record.write(body)
        self._state = st
        return st

    def _remember(
        self, version: int, data: bytes, *, durable: bool = True, reuse: int | None = None
    ) -> None:
        self._history.remember(version, data, durable=durable, reuse=reuse)

    def _pinned(self, st: DiskState | None) -> set[int]:
        """The versions the history keeps whatever their age: the applied and the last good."""
        if st is None:
            return set()
        return {r.version for r in (st.applied, st.last_good) if r is not None}

    def _pushed_out(self, intent: Installing) -> int | None:
        """The oldest version that pruning will remove once ``intent``'s is in the history."""
        versions = sorted(set(self.history(reread=False)) | {intent.version})
        return next(iter(self._history.let_go(versions, self._pinned(self._current()))), None)

    def _prune(self) -> None:
        self._history.prune(self.history(reread=False), self._pinned(self._current()))
