"""The agent's durable, crash-safe side of the two-phase commit, for one namespace
(docs/design.md §4.2, §4.4, §5).

Every method of ``NamespaceDisk`` is **synchronous and blocking** (fsync): the agent calls them
through ``offload.run`` (a thread), never on the event loop. They are thread-safe (one lock
per namespace), so two worker threads cannot interleave one namespace's steps. ``prepare_txn``
is the async composition the agent uses for a prepare::

    disk = NamespaceDisk(ns, Path("/etc/app/config.json"), Path("/var/lib/confbus"),
                         keep=policy.keep_versions)
    state = await offload.run(disk.load)    # serve state at once; resume from
                                            # state.stream_seq; in doubt → ask
    # Prepare (if this node is a participant):
    try:
        await prepare_txn(disk, prepare, validate_cmd=..., validate_timeout=...)  # → vote yes
    except Refused as no:
        ...                                          # → vote no, reason=no.reason
    # Decision (the agent calls observe_epoch(decision.epoch) first):
    outcome = await offload.run(disk.commit, txid, version, sha256)
    # APPLIED → announce it, then disk.flush() (records it; the commit deferred that)
    # MISSING → fetch the version's content, then disk.apply(version, sha256, content)
    await offload.run(disk.abort, txid)
    await offload.run(disk.save_stream_seq, seq)   # after each CFG_TXN message

A commit decision is applied whatever its epoch: it was written under the head's
compare-and-set while that epoch was current, so it is the decision (a newer leader only aborts
*undecided* transactions). Epoch fencing applies to prepares.

Files
-----
Live file (the app's): replaced only whole, by rename of a complete, fsynced file from its own
directory. Beside it, hidden: ``.<name>.confbus-staged-<txid>`` (the staged file of a prepare)
and ``.<name>.confbus-tmp-*`` (an interrupted write, removed on load). A symlink at the live
path is replaced by the file, not followed.

State directory ``<state_dir>/<namespace>/`` (mode 0700; may be on another file system):
``state.a``/``state.b`` (the ``DiskState`` record in two slots written in turn, one fsync per
write — ``confbus.agent.record``: applied version and sha256, highest epoch, last stream
sequence, the PREPARED record, the install intent, the last known good) and
``versions/<version>`` (the bytes of the last ``keep`` applied versions, plus the applied
one and the last known good).

Crash safety
------------
Stage: staged file durable *before* the PREPARED record (so a record always has its bytes).
Abort: record dropped *before* the staged file (so a record never lacks its bytes).
Install (apply, restore): write the ``installing`` intent → rename the new file over the
live one → record it as applied → copy it into the history. ``load`` finishes or forgets an
interrupted install by comparing the live file's sha256 with the intent's: the live file is
whole either way, and the applied record is only ever written once the live file holds
exactly that version's bytes.
Commit: the PREPARED record is the intent (it names the version, sha256 and staged file), so
the commit is one rename (+ the directory's fsync) and the agent announces the apply at once.
``flush`` then records the apply and copies the bytes into the history, both *without* fsync:
the next durable write carries the record, and until then a power cut leaves the PREPARED
record, from which ``load`` finishes a commit whose staged file is gone and whose bytes the
live file holds (only a commit decision renames); every reader of the history checks the
bytes' sha256, and the last known good is made durable when it is marked. So a switch costs
four fsyncs: the staged file and its directory, the PREPARED record, and the live file's
directory after the rename.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec

from confbus.agent import offload
from confbus.agent.formats import check_content, run_validate
from confbus.agent.record import RecordCorrupt, SlotRecord
from confbus.agent.state import (
    AppliedRecord,
    CommitOutcome,
    DiskState,
    Installing,
    IntegrityError,
    LastGood,
    LocalState,
    PreparedRecord,
    Refused,
    Staged,
    StateCorrupt,
    VersionNotOnDisk,
    decode_state,
    encode_state,
)
from confbus.agent.state_io import (
    FileMode,
    atomic_write,
    ensure_dir,
    fsync_dir,
    fsync_file,
    mode_of,
    read_if_exists,
    remove_quietly,
    remove_temps,
    replace_durably,
    sha256_bytes,
    sha256_file,
    tmp_prefix,
    write_new,
    write_temp,
)
from confbus.schemas.names import check_name, check_txid
from confbus.schemas.txn import Prepare

STATE_FILE = "state"  # two slots, state.a and state.b (confbus.agent.record)
LEGACY_STATE_FILE = "state.json"  # one file replaced by rename: agents before 2026-11-27
VERSIONS_DIR = "versions"
_PRIVATE = FileMode(0o600)  # history may hold secret configs


class NamespaceDisk:
    """One namespace's live file and local state. Sync and blocking: call via a worker thread."""

    def __init__(self, namespace: str, live_path: Path, state_dir: Path, keep: int = 10) -> None:
        self.namespace = check_name(namespace, "namespace")
        self.live_path = Path(live_path)
        self.dir = Path(state_dir) / namespace
        self.keep = max(1, keep)
        self._record = SlotRecord(
            self.dir, STATE_FILE, _PRIVATE, legacy=self.dir / LEGACY_STATE_FILE
        )
        self._versions = self.dir / VERSIONS_DIR
        self._staged_prefix = f".{self.live_path.name}.confbus-staged-"
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
        # and the history's versions (None: unknown). The state each 2PC step returns is
        # built from them (``snapshot(reread=False)``) rather than re-read from the disk
        # three times per switch; the periodic heartbeat's ``snapshot()`` re-reads both, so
        # a change made behind our back (drift) shows within one heartbeat as before.
        self._live_seen: str | None = None
        self._history_seen: set[int] | None = None

    # --- reading ------------------------------------------------------------------------

    def staged_path(self, txid: str) -> Path:
        return self.live_path.with_name(self._staged_prefix + check_txid(txid))

    def live_sha256(self) -> str | None:
        """sha256 of the live file as on disk now (None: no file) — for drift detection."""
        self._live_seen = sha256_file(self.live_path)
        return self._live_seen

    def history(self, *, reread: bool = True) -> list[int]:
        """Versions whose bytes are kept on disk, ascending (``reread=False``: as we last
        listed and changed them)."""
        versions = self._listed_versions(reread)
        if self._deferred is not None:
            # On its way into the history (``flush``), which is then pruned: report what
            # will be kept, so that nothing seen changes when the deferred work is done.
            versions.add(self._deferred[0].version)
            versions &= self._kept(sorted(versions), self._state)
        return sorted(versions)

    def _listed_versions(self, reread: bool) -> set[int]:
        if reread or self._history_seen is None:
            try:
                names = os.listdir(self._versions)
            except FileNotFoundError:
                names = []
            self._history_seen = {int(n) for n in names if n.isdigit()}
        return set(self._history_seen)

    def version_bytes(self, version: int) -> bytes:
        """The bytes of a version from the local history (``VersionNotOnDisk`` if absent)."""
        deferred = self._deferred
        if deferred is not None and deferred[0].version == version:
            return deferred[1]
        data = read_if_exists(self._versions / str(version))
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

    # --- start-up -----------------------------------------------------------------------

    def load(self) -> LocalState:
        """Read the state and recover from a crash; on a first boot write nothing.

        Recovery: finish or forget an interrupted install; remove temp files and staged files
        that have no PREPARED record (no yes vote was ever sent for them); put the applied
        version's bytes back into the history if a crash came before they were copied. A
        PREPARED record with its staged file survives: the namespace is in doubt, and the agent
        asks for the decision of ``state.prepared.txid``.
        """
        with self._guard():
            self._staging = None
            self._forget_seen()
            self._state = st = self._read()
            # Only our own leftovers: the live file's directory belongs to the app.
            remove_temps(self.live_path.parent, tmp_prefix(self.live_path))
            remove_temps(self.live_path.parent, "." + self._staged_prefix)
            remove_temps(self.dir)
            remove_temps(self._versions)
            if st.installing is not None:
                st = self._resolve_install(st, st.installing)
            if st.prepared is not None and st.prepared.sha256 == self._renamed_sha256(st):
                # A commit renamed the staged file over the live one and the process stopped
                # before recording it (``flush``): only a commit decision renames, so the
                # PREPARED record was that install's intent. Finish it (announced: no).
                p = st.prepared
                intent = Installing(version=p.version, sha256=p.sha256, txid=p.txid)
                st = self._finish_install(st, intent)
            keep = st.prepared.staged if st.prepared else None
            for name in self._staged_names():
                if name != keep:
                    remove_quietly(self.live_path.parent / name)
            applied = st.applied
            # Absent, or spoilt by a power cut (``flush`` writes the copy without fsync).
            if applied is not None and sha256_file(self._versions / str(applied.version)) != (
                applied.sha256
            ):
                live = read_if_exists(self.live_path)
                if live is not None and sha256_bytes(live) == applied.sha256:
                    self._remember(applied.version, live)
            self._prune()
            return self.snapshot()

    # --- the prepare --------------------------------------------------------------------

    def stage(self, prepare: Prepare) -> Staged:
        """Check a prepare and write its staged file (durably) next to the live file.

        Raises ``Refused`` (→ vote no). Returns a ``Staged`` whose file the validation command
        may inspect; ``seal`` then writes the PREPARED record. A redelivered prepare of the
        transaction already PREPARED returns ``already_prepared=True``: vote yes again.
        """
        txid = check_txid(prepare.txid)
        with self._guard():
            st = self._current()
            if prepare.namespace != self.namespace:
                raise Refused(
                    "wrong-namespace",
                    f"prepare for {prepare.namespace!r} sent to {self.namespace!r}",
                )
            if prepare.epoch < st.highest_epoch:
                raise Refused(
                    "stale-epoch",
                    f"epoch {prepare.epoch} is older than epoch {st.highest_epoch} already seen",
                )
            if prepare.epoch > st.highest_epoch:
                st = self._write(msgspec.structs.replace(st, highest_epoch=prepare.epoch))
            digest = sha256_bytes(prepare.content)
            held = st.prepared
            if held is not None and held.txid == txid:
                if (held.version, held.sha256) != (prepare.version, prepare.sha256):
                    raise Refused(
                        "conflict",
                        f"transaction {txid} is prepared for version {held.version} "
                        f"({held.sha256[:12]}), not version {prepare.version} "
                        f"({prepare.sha256[:12]})",
                    )
                path = self.staged_path(txid)
                if sha256_file(path) != held.sha256 and digest == held.sha256:
                    # The staged file was lost (deleted by hand?): the prepare carries the
                    # bytes, so restore them rather than fail the commit later.
                    self._write_staged(path, prepare.content)
                return Staged(txid, held.version, path, already_prepared=True)
            if held is not None:
                raise Refused(
                    "busy",
                    f"transaction {held.txid} (version {held.version}) is prepared and "
                    "undecided; a node holds one prepared transaction per namespace",
                )
            applied = st.applied.version if st.applied else 0
            if prepare.version <= applied:
                raise Refused(
                    "not-newer",
                    f"version {prepare.version} is not newer than applied version {applied}",
                )
            if digest != prepare.sha256:
                raise Refused(
                    "sha256", f"content hashes to {digest}, prepare says {prepare.sha256}"
                )
            check_content(prepare.format, prepare.content)
            # A staging that never reached seal never voted yes: a newer prepare replaces it.
            self._drop_staging()
            path = self.staged_path(txid)
            self._write_staged(path, prepare.content)
            self._staging = PreparedRecord(
                txid=txid,
                version=prepare.version,
                sha256=prepare.sha256,
                epoch=prepare.epoch,
                format=prepare.format,
                staged=path.name,
                timeout_s=prepare.timeout_s,
            )
            return Staged(txid, prepare.version, path, already_prepared=False)

    def seal(self, txid: str, *, reread_staged: bool = True) -> None:
        """Write the PREPARED record of a staged transaction. Only after this may it vote yes.

        ``reread_staged=False``: no validation command ran since ``stage`` wrote the file, so
        there is nothing that could have rewritten it (the commit checks its bytes again)."""
        with self._guard():
            st = self._current()
            if st.prepared is not None and st.prepared.txid == txid:
                return  # sealed already: idempotent
            rec = self._staging
            if rec is None or rec.txid != txid:
                raise Refused("conflict", f"transaction {txid} is not staged")
            if rec.epoch < st.highest_epoch:
                # A newer coordinator appeared while the validator ran: this one is fenced.
                self._drop_staging()
                raise Refused(
                    "stale-epoch",
                    f"epoch {rec.epoch} is older than epoch {st.highest_epoch} already seen",
                )
            if reread_staged and sha256_file(self.live_path.with_name(rec.staged)) != rec.sha256:
                # E.g. a validation command that rewrote the file it was asked to check.
                self._drop_staging()
                raise Refused("sha256", "the staged file changed on disk before it was prepared")
            try:
                self._write(msgspec.structs.replace(st, prepared=rec))
            except OSError as exc:
                # The record may or may not be on disk: reload before anything else trusts it.
                self._state = None
                self._drop_staging()
                raise Refused("io", f"cannot write the PREPARED record: {exc}") from exc
            self._staging = None

    # --- the decision -------------------------------------------------------------------

    def commit(self, txid: str, version: int, sha256: str) -> CommitOutcome:
        """Apply a commit decision: rename the staged file over the live one.

        Idempotent: a repeated commit, or one for a version not higher than the applied one,
        is ``NOT_NEWER`` and changes nothing (beyond dropping that transaction's staged file).
        ``MISSING``: no verified bytes for this transaction here; fetch and ``apply`` them.
        """
        txid = check_txid(txid)
        with self._guard():
            st = self._current()
            held = st.prepared if st.prepared is not None and st.prepared.txid == txid else None
            applied = st.applied.version if st.applied else 0
            if version <= applied:
                self._forget(txid)
                return CommitOutcome.NOT_NEWER
            if held is None or (held.version, held.sha256) != (version, sha256):
                return CommitOutcome.MISSING
            intent = Installing(version=version, sha256=sha256, txid=txid)
            staged = self.live_path.with_name(held.staged)
            data = read_if_exists(staged)
            if data is None or sha256_bytes(data) != sha256:
                # Never rename bytes that are not the version's (docs/design.md §8.4).
                return CommitOutcome.MISSING
            # The commit's critical path is this one rename (and its directory's fsync): the
            # PREPARED record on disk already names the version, its sha256 and its staged
            # file, so it serves as the install intent. Recording the apply and keeping the
            # bytes in the history wait for ``flush``, which the agent calls once it has
            # announced the apply; the state in memory says applied at once.
            replace_durably(staged, self.live_path)
            self._live_seen = sha256
            self._state, _ = self._installed(st, intent)
            self._deferred = (intent, data)
            return CommitOutcome.APPLIED

    def abort(self, txid: str) -> bool:
        """Drop the transaction's staged file and PREPARED record. Idempotent; True if any."""
        txid = check_txid(txid)
        with self._guard():
            return self._forget(txid)

    # --- installs outside a transaction -------------------------------------------------

    def apply(self, version: int, sha256: str, content: bytes) -> bool:
        """Install a version fetched from the store (catch-up, ``MISSING``, drift repair).

        The content is checked against ``sha256`` (``IntegrityError``). Installs if the version
        is newer than the applied one, or is the applied one but the live file drifted.
        True if the live file was written.
        """
        digest = sha256_bytes(content)
        if digest != sha256:
            raise IntegrityError(f"version {version} of {self.namespace}", sha256, digest)
        with self._guard():
            st = self._current()
            if st.applied is not None:
                if version < st.applied.version:
                    return False
                if version == st.applied.version:
                    if st.applied.sha256 != sha256:
                        raise IntegrityError(
                            f"applied version {version}", st.applied.sha256, sha256
                        )
                    if self.live_sha256() == sha256:
                        return False
            self._install_bytes(version, sha256, content, None)
            return True

    def mark_last_good(
        self, version: int, *, sha256: str | None = None, content: bytes | None = None
    ) -> None:
        """Record ``version`` as the last known good; its bytes are kept until another is.

        Bytes come from ``content`` (a version this node never ran), or from the local
        history, checked against ``sha256`` (or the applied record's, for the applied
        version). ``VersionNotOnDisk`` if they are not there, or there is no sha256 to check
        them against; ``IntegrityError`` if they do not match it.
        """
        with self._guard():
            st = self._current()
            if content is not None:
                digest = sha256_bytes(content)
                if sha256 is not None and digest != sha256:
                    raise IntegrityError(f"last good version {version}", sha256, digest)
                self._remember(version, content)
            else:
                # The history's copies are written without fsync: trusted only once checked.
                if sha256 is None and st.applied is not None and st.applied.version == version:
                    sha256 = st.applied.sha256
                if sha256 is None:
                    raise VersionNotOnDisk(self.namespace, version)  # no way to check it
                data = self.version_bytes(version)
                digest = sha256_bytes(data)
                if digest != sha256:
                    raise IntegrityError(f"kept version {version}", sha256, digest)
                # Kept after an apply without fsync (``_settle``): its bytes and its name
                # must survive a power cut before the node may fall back to them.
                fsync_file(self._versions / str(version))
                fsync_dir(self._versions)
            self._write(
                msgspec.structs.replace(st, last_good=LastGood(version=version, sha256=digest))
            )
            self._prune()

    def restore_last_good(self) -> int | None:
        """Make the last known good the live file (policy ``cold_start_last_good``).

        The one way the applied version moves *backward*, on purpose: the node then runs the
        last known good until it catches up with its target. Returns the version, or None when
        there is no last known good.
        """
        with self._guard():
            st = self._current()
            good = st.last_good
            if good is None:
                return None
            data = self.version_bytes(good.version)
            digest = sha256_bytes(data)
            if digest != good.sha256:
                raise IntegrityError(f"last good version {good.version}", good.sha256, digest)
            already = st.applied is not None and st.applied.version == good.version
            if not (already and self.live_sha256() == good.sha256):
                self._install_bytes(good.version, good.sha256, data, None)
            return good.version

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
        """Remember ``seq`` for the next state write (no I/O of its own)."""
        with self._lock:
            self._pending_seq = max(self._pending_seq, seq)

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

    def prepare_sealed(self, prepare: Prepare) -> LocalState:
        """``stage`` then ``seal`` in one call (no validation command): one thread hop for the
        whole prepare. Raises ``Refused`` like ``stage``; returns the new state."""
        with self._lock:
            staged = self.stage(prepare)
            if not staged.already_prepared:
                try:
                    self.seal(prepare.txid, reread_staged=False)
                except BaseException:
                    self.abort(prepare.txid)
                    raise
            return self.snapshot(reread=False)

    def decide(
        self, txid: str, outcome: str, version: int, sha256: str, epoch: int
    ) -> tuple[CommitOutcome | bool, LocalState]:
        """A decision in one call: raise the epoch, then commit (→ ``CommitOutcome``) or abort
        (→ whether anything was dropped); returns the outcome and the new state."""
        with self._lock:
            self.observe_epoch(epoch)
            if outcome == "commit":
                result: CommitOutcome | bool = self.commit(txid, version, sha256)
            else:
                result = self.abort(txid)
            return result, self.snapshot(reread=False)

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
        self._history_seen = None

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

    def _staged_names(self) -> list[str]:
        try:
            names = os.listdir(self.live_path.parent)
        except FileNotFoundError:
            return []
        return [n for n in names if n.startswith(self._staged_prefix)]

    def _write_staged(self, path: Path, content: bytes) -> None:
        try:
            ensure_dir(path.parent)
            # Written at its own name (no temp file, no rename): a staged file counts only
            # once the PREPARED record naming its sha256 is durable, and a crash before that
            # leaves one without a record, which ``load`` removes.
            write_new(path, content, mode_of(self.live_path))
        except OSError as exc:
            remove_quietly(path)
            raise Refused("io", f"cannot write the staged file {path}: {exc}") from exc

    def _drop_staging(self) -> None:
        if self._staging is not None:
            remove_quietly(self.live_path.with_name(self._staging.staged))
            self._staging = None

    def _forget(self, txid: str) -> bool:
        st = self._current()
        dropped = False
        if st.prepared is not None and st.prepared.txid == txid:
            # Record first, file second: a crash in between leaves a staged file without a
            # record (swept by load), never a record without its bytes.
            self._write(msgspec.structs.replace(st, prepared=None))
            dropped = True
        if self._staging is not None and self._staging.txid == txid:
            self._staging = None
            dropped = True
        remove_quietly(self.staged_path(txid))
        return dropped

    def _install_bytes(self, version: int, sha256: str, data: bytes, txid: str | None) -> None:
        ensure_dir(self.live_path.parent)
        tmp = write_temp(self.live_path, data, mode_of(self.live_path))
        try:
            self._install(version, sha256, tmp, data, txid)
        finally:
            remove_quietly(tmp)  # gone already if the rename happened

    def _install(
        self, version: int, sha256: str, source: Path, data: bytes, txid: str | None
    ) -> None:
        """Rename ``source`` (complete, fsynced, beside the live file) over the live file."""
        st = self._current()
        intent = Installing(version=version, sha256=sha256, txid=txid)
        st = self._write(msgspec.structs.replace(st, installing=intent))
        replace_durably(source, self.live_path)
        self._live_seen = sha256_bytes(data)
        self._finish_install(st, intent)
        self._remember(version, data)
        self._prune()

    def _installed(
        self, st: DiskState, intent: Installing
    ) -> tuple[DiskState, PreparedRecord | None]:
        """The state once ``intent`` is installed, and the prepared transaction it made stale."""
        applied = AppliedRecord(
            version=intent.version, sha256=intent.sha256, txid=intent.txid, announced=False
        )
        prepared = st.prepared
        # A prepared transaction at or below what is now applied can never apply: drop it.
        stale = prepared if prepared is not None and prepared.version <= intent.version else None
        st = msgspec.structs.replace(
            st, applied=applied, installing=None, prepared=None if stale else prepared
        )
        return st, stale

    def _finish_install(self, st: DiskState, intent: Installing) -> DiskState:
        st, stale = self._installed(st, intent)
        st = self._write(st)
        if stale is not None:
            remove_quietly(self.live_path.with_name(stale.staged))
        return st

    def _renamed_sha256(self, st: DiskState) -> str | None:
        """The live file's sha256 if the prepared transaction's staged file is gone (renamed
        over the live file?), else None."""
        if st.prepared is None or self.live_path.with_name(st.prepared.staged).exists():
            return None
        return self.live_sha256()

    def _resolve_install(self, st: DiskState, intent: Installing) -> DiskState:
        live = read_if_exists(self.live_path)
        if live is not None and sha256_bytes(live) == intent.sha256:
            # The rename happened (or the live bytes already were exactly these): finish it.
            st = self._finish_install(st, intent)
            self._remember(intent.version, live)
            return st
        # The rename never happened: the live file is the old one, whole. Forget the intent;
        # a commit's PREPARED record and staged file are intact, so its decision is asked again.
        return self._write(msgspec.structs.replace(st, installing=None))

    def _remember(
        self, version: int, data: bytes, *, durable: bool = True, reuse: int | None = None
    ) -> None:
        """Keep a version's bytes in the history (pruning is the caller's next step, once the
        state says which versions must stay). ``durable=False``: no fsync of the copy or of
        its name (``_settle``); ``reuse``: a version being pruned whose file may hold the
        copy (``write_temp``)."""
        path = self._versions / str(version)
        if sha256_file(path) != sha256_bytes(data):
            ensure_dir(self._versions, 0o700)
            old = None if reuse is None else self._versions / str(reuse)
            atomic_write(path, data, _PRIVATE, durable=durable, reuse=old)
            if self._history_seen is not None and reuse is not None:
                self._history_seen.discard(reuse)  # gone, whether its inode was reused or not
        if self._history_seen is not None:
            self._history_seen.add(version)

    def _pushed_out(self, intent: Installing) -> int | None:
        """The oldest version that pruning will remove once ``intent``'s is in the history."""
        versions = sorted(set(self.history(reread=False)) | {intent.version})
        return next(iter(self._let_go(versions)), None)

    def _let_go(self, versions: list[int]) -> list[int]:
        """Of ``versions`` (ascending), those the history does not keep."""
        kept = self._kept(versions, self._current())
        return [v for v in versions if v not in kept]

    def _kept(self, versions: list[int], st: DiskState | None) -> set[int]:
        """Of ``versions`` (ascending), those the history keeps: the newest ``keep``, the
        applied one and the last good one."""
        keep = set(versions[-self.keep :])
        if st is not None and st.applied is not None:
            keep.add(st.applied.version)
        if st is not None and st.last_good is not None:
            keep.add(st.last_good.version)
        return keep

    def _prune(self) -> None:
        # As last listed (a version someone else removed meanwhile is just not there to
        # remove; one they added stays until the next full listing): no listing per apply.
        for version in self._let_go(self.history(reread=False)):
            remove_quietly(self._versions / str(version))
            if self._history_seen is not None:
                self._history_seen.discard(version)


async def prepare_txn(
    disk: NamespaceDisk,
    prepare: Prepare,
    *,
    validate_cmd: str | Sequence[str] | None = None,
    validate_timeout: float = 30.0,
) -> Staged:
    """The node's whole side of a prepare: stage → validate → seal, off the event loop.

    Returns → vote yes (the PREPARED record is durable). ``Refused`` → vote no with its
    ``reason``; nothing of the transaction is left behind. Any other exception (an unexpected
    I/O error) → vote no as well: only a returned ``Staged`` is a yes.
    """
    staged = await offload.run(disk.stage, prepare)
    if staged.already_prepared:
        return staged
    try:
        if validate_cmd:
            await run_validate(validate_cmd, staged.path, validate_timeout)
        await offload.run(disk.seal, prepare.txid)
    except Exception:
        await offload.run(disk.abort, prepare.txid)
        raise
    return staged
