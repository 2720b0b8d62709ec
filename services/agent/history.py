"""One namespace's history of applied versions: ``<state_dir>/<namespace>/versions/<version>``.

The bytes of the last ``keep`` applied versions, plus the applied one and the last known good
(``kept``), each in a file named by its version number, mode 0600 (history may hold secret
configs). The copies are written without fsync after a commit (``confbus.agent.disk``'s
``flush``): every reader checks them against the version's sha256 before trusting them.

The listing is cached (``listed(reread=False)``) so that a switch costs no directory listing;
the heartbeat's snapshot lists it again, so a change made behind our back shows within one
heartbeat.
"""

from __future__ import annotations

import os
from pathlib import Path

from confbus.agent.state_io import (
    FileMode,
    atomic_write,
    ensure_dir,
    read_if_exists,
    remove_quietly,
    sha256_bytes,
    sha256_file,
)

VERSIONS_DIR = "versions"
PRIVATE = FileMode(0o600)  # history may hold secret configs


class VersionHistory:
    """The ``versions/`` directory of one namespace. Not thread-safe: the caller's lock."""

    def __init__(self, state_dir: Path, keep: int) -> None:
        self.dir = state_dir / VERSIONS_DIR
        self.keep = max(1, keep)
        # The versions as we last listed and changed them (None: unknown, list again).
        self._seen: set[int] | None = None

    def forget_seen(self) -> None:
        self._seen = None

    def listed(self, *, reread: bool) -> set[int]:
        """Versions whose files are there (``reread=False``: as we last listed and changed
        them)."""
        if reread or self._seen is None:
            try:
                names = os.listdir(self.dir)
            except FileNotFoundError:
                names = []
            self._seen = {int(n) for n in names if n.isdigit()}
        return set(self._seen)

    def path(self, version: int) -> Path:
        return self.dir / str(version)

    def read(self, version: int) -> bytes | None:
        return read_if_exists(self.path(version))

    def sha256_of(self, version: int) -> str | None:
        return sha256_file(self.path(version))

    def remember(
        self, version: int, data: bytes, *, durable: bool = True, reuse: int | None = None
    ) -> None:
        """Keep a version's bytes (pruning is the caller's next step, once the state says which
        versions must stay). ``durable=False``: no fsync of the copy or of its name;
        ``reuse``: a version being pruned whose file may hold the copy (``write_temp``)."""
        path = self.path(version)
        if sha256_file(path) != sha256_bytes(data):
            ensure_dir(self.dir, 0o700)
            old = None if reuse is None else self.path(reuse)
            atomic_write(path, data, PRIVATE, durable=durable, reuse=old)
            if self._seen is not None and reuse is not None:
                self._seen.discard(reuse)  # gone, whether its inode was reused or not
        if self._seen is not None:
            self._seen.add(version)

    def kept(self, versions: list[int], pinned: set[int]) -> set[int]:
        """Of ``versions`` (ascending), those kept: the newest ``keep`` and the ``pinned`` ones
        (the applied version and the last known good)."""
        return set(versions[-self.keep :]) | (pinned & set(versions))

    def let_go(self, versions: list[int], pinned: set[int]) -> list[int]:
        """Of ``versions`` (ascending), those not kept."""
        kept = self.kept(versions, pinned)
        return [v for v in versions if v not in kept]

    def prune(self, versions: list[int], pinned: set[int]) -> None:
        """Remove what is not kept of ``versions`` (as last listed: a version someone else
        removed meanwhile is just not there to remove; one they added stays until the next
        full listing — no listing per apply)."""
        for version in self.let_go(versions, pinned):
            remove_quietly(self.path(version))
            if self._seen is not None:
                self._seen.discard(version)
