"""Installs outside a transaction, and the install intent that makes them crash-safe.

``InstallingDisk`` adds to ``RecordedDisk`` every way a version reaches the live file other than
a commit's rename of a staged file: ``apply`` (catch-up, a commit this node never staged, drift
repair), the last known good (``mark_last_good``, ``restore_last_good``), and the install
intent — written before the rename, finished or forgotten by ``load`` after a crash
(``_resolve_install``). See ``confbus.agent.disk`` for the whole crash-safety argument.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from confbus.agent.disk_record import RecordedDisk
from confbus.agent.state import (
    AppliedRecord,
    DiskState,
    Installing,
    IntegrityError,
    LastGood,
    PreparedRecord,
    VersionNotOnDisk,
)
from confbus.agent.state_io import (
    ensure_dir,
    fsync_dir,
    fsync_file,
    mode_of,
    read_if_exists,
    remove_quietly,
    replace_durably,
    sha256_bytes,
    write_temp,
)


class InstallingDisk(RecordedDisk):
    """Installs of whole versions over the live file, each behind a durable intent."""

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
                fsync_file(self._history.path(version))
                fsync_dir(self._history.dir)
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
        good = st.last_good
        if good is not None and good.version == intent.version and good.sha256 != intent.sha256:
            # Another variant of the last known good (the node's labels changed): the history
            # keeps one copy per version, which is now this node's own bytes of it.
            good = LastGood(version=good.version, sha256=intent.sha256)
        st = msgspec.structs.replace(
            st,
            applied=applied,
            installing=None,
            prepared=None if stale else prepared,
            last_good=good,
        )
        return st, stale

    def _finish_install(self, st: DiskState, intent: Installing) -> DiskState:
        st, stale = self._installed(st, intent)
        st = self._write(st)
        if stale is not None:
            self._staged.remove(stale.staged)
        return st

    def _renamed_sha256(self, st: DiskState) -> str | None:
        """The live file's sha256 if the prepared transaction's staged file is gone (renamed
        over the live file?), else None."""
        if st.prepared is None or self._staged.named(st.prepared.staged).exists():
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
