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

import msgspec

from confbus.agent.disk_install import InstallingDisk
from confbus.agent.disk_record import STATE_FILE
from confbus.agent.formats import check_content
from confbus.agent.history import VERSIONS_DIR
from confbus.agent.staging import prepare_txn
from confbus.agent.state import (
    CommitOutcome,
    DiskState,
    Installing,
    LocalState,
    PreparedRecord,
    Refused,
    Staged,
)
from confbus.agent.state_io import (
    read_if_exists,
    remove_quietly,
    remove_temps,
    replace_durably,
    sha256_bytes,
    sha256_file,
    tmp_prefix,
)
from confbus.schemas.names import check_txid
from confbus.schemas.txn import Prepare

__all__ = ["STATE_FILE", "VERSIONS_DIR", "NamespaceDisk", "prepare_txn"]


class NamespaceDisk(InstallingDisk):
    """One namespace's live file and local state. Sync and blocking: call via a worker thread."""

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
            remove_temps(self.live_path.parent, "." + self._staged.prefix)
            remove_temps(self.dir)
            remove_temps(self._history.dir)
            if st.installing is not None:
                st = self._resolve_install(st, st.installing)
            if st.prepared is not None and st.prepared.sha256 == self._renamed_sha256(st):
                # A commit renamed the staged file over the live one and the process stopped
                # before recording it (``flush``): only a commit decision renames, so the
                # PREPARED record was that install's intent. Finish it (announced: no).
                p = st.prepared
                intent = Installing(version=p.version, sha256=p.sha256, txid=p.txid)
                st = self._finish_install(st, intent)
            self._staged.remove_all_but(st.prepared.staged if st.prepared else None)
            applied = st.applied
            # Absent, or spoilt by a power cut (``flush`` writes the copy without fsync).
            if applied is not None and self._history.sha256_of(applied.version) != (applied.sha256):
                live = read_if_exists(self.live_path)
                if live is not None and sha256_bytes(live) == applied.sha256:
                    self._remember(applied.version, live)
            self._prune()
            return self.snapshot()

    # --- the prepare --------------------------------------------------------------------

    def stage(self, prepare: Prepare, node: str | None = None) -> Staged:
        """Check a prepare and write its staged file (durably) next to the live file.

        ``node``: this node's id, which picks its own bytes from a prepare that carries
        variants (each checked against its own entry's sha256).

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
            own = prepare.bytes_for(node or "")
            if own is None:
                raise Refused(
                    "variant",
                    f"the prepare of version {prepare.version} carries no variant for {node}",
                )
            content, sha256 = own
            digest = sha256_bytes(content)
            held = st.prepared
            if held is not None and held.txid == txid:
                if (held.version, held.decided_sha256) != (prepare.version, prepare.sha256):
                    raise Refused(
                        "conflict",
                        f"transaction {txid} is prepared for version {held.version} "
                        f"({held.decided_sha256[:12]}), not version {prepare.version} "
                        f"({prepare.sha256[:12]})",
                    )
                path = self.staged_path(txid)
                if sha256_file(path) != held.sha256 and digest == held.sha256:
                    # The staged file was lost (deleted by hand?): the prepare carries the
                    # bytes, so restore them rather than fail the commit later.
                    self._staged.write(path, content)
                return Staged(txid, held.version, path, already_prepared=True)
            if held is not None:
                raise Refused(
                    "busy",
                    f"transaction {held.txid} (version {held.version}) is prepared and "
                    "undecided; a node holds one prepared transaction per namespace",
                )
            applied = st.applied.version if st.applied else 0
            if prepare.version < applied or (
                prepare.version == applied and not _moves_variant(st, prepare, sha256)
            ):
                raise Refused(
                    "not-newer",
                    f"version {prepare.version} is not newer than applied version {applied}",
                )
            if digest != sha256:
                raise Refused("sha256", f"content hashes to {digest}, prepare says {sha256}")
            check_content(prepare.format, content, prepare.json_schema)
            # A staging that never reached seal never voted yes: a newer prepare replaces it.
            self._drop_staging()
            path = self.staged_path(txid)
            self._staged.write(path, content)
            self._staging = PreparedRecord(
                txid=txid,
                version=prepare.version,
                sha256=sha256,
                version_sha256=prepare.sha256 if prepare.sha256 != sha256 else None,
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
            if reread_staged and sha256_file(self._staged.named(rec.staged)) != rec.sha256:
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
            moving = held is not None and _moves_variant(st, held, held.sha256)
            if version < applied or (version == applied and not moving):
                self._forget(txid)
                return CommitOutcome.NOT_NEWER
            if held is None or (held.version, held.decided_sha256) != (version, sha256):
                return CommitOutcome.MISSING
            # This node's own bytes: the version's, or its variant's (``held.sha256``).
            intent = Installing(version=version, sha256=held.sha256, txid=txid)
            staged = self._staged.named(held.staged)
            data = read_if_exists(staged)
            if data is None or sha256_bytes(data) != held.sha256:
                # Never rename bytes that are not the version's (docs/design.md §8.4).
                return CommitOutcome.MISSING
            # The commit's critical path is this one rename (and its directory's fsync): the
            # PREPARED record on disk already names the version, its sha256 and its staged
            # file, so it serves as the install intent. Recording the apply and keeping the
            # bytes in the history wait for ``flush``, which the agent calls once it has
            # announced the apply; the state in memory says applied at once.
            replace_durably(staged, self.live_path)
            self._live_seen = held.sha256
            self._state, _ = self._installed(st, intent)
            self._deferred = (intent, data)
            return CommitOutcome.APPLIED

    def abort(self, txid: str) -> bool:
        """Drop the transaction's staged file and PREPARED record. Idempotent; True if any."""
        txid = check_txid(txid)
        with self._guard():
            return self._forget(txid)

    def prepare_sealed(self, prepare: Prepare, node: str | None = None) -> LocalState:
        """``stage`` then ``seal`` in one call (no validation command): one thread hop for the
        whole prepare. Raises ``Refused`` like ``stage``; returns the new state."""
        with self._lock:
            staged = self.stage(prepare, node)
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

    def _drop_staging(self) -> None:
        if self._staging is not None:
            self._staged.remove(self._staging.staged)
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


def _moves_variant(st: DiskState, to: Prepare | PreparedRecord, sha256: str) -> bool:
    """A switch to the applied version that moves this node to another variant of it (its
    labels changed, docs/design.md §2.6): the only switch that may repeat a version. ``to`` must
    be a variant prepare (its own bytes are not the version's) with bytes other than those
    applied; anything else at the applied version is not newer."""
    version_sha256 = to.sha256 if isinstance(to, Prepare) else to.decided_sha256
    return (
        st.applied is not None
        and to.version == st.applied.version
        and sha256 != version_sha256
        and sha256 != st.applied.sha256
    )
