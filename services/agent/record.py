"""A small record replaced durably with ONE fsync: two slots written in turn, in place.

``atomic_write`` costs two fsyncs (the temp file, then its directory after the rename). The agent
writes its state record on every step of a transaction, on a disk shared with its app (and, in a
benchmark, with a hundred other agents), so the record lives in two slot files instead,
``<name>.a`` and ``<name>.b``. A write goes to the slot that does not hold the newest record:
``pwrite`` at offset 0, ``ftruncate``, ``fsync`` — no rename, so no directory fsync (except
when a slot file is first created). Each slot starts with a header line::

    confbus-record 1 <sequence> <length> <sha256 of the body>\\n<body>

and the reader takes the valid slot with the highest sequence. A crash mid-write can spoil only
the slot being written (its checksum then fails): the other slot still holds the previous
record, which is exactly the state before the write that did not complete. The same
reasoning as a database's double-buffered meta pages (LMDB, for one).

``write(body, durable=False)`` skips the fsync, for a record whose loss in a power cut the
caller can recover from (the agent's applied record after a commit: the PREPARED record and
the live file's hash prove the install). Such a write never touches the slot holding the
newest *durable* record: it goes to the other slot, and so does every write after it until one
is durable. A power cut can then spoil or lose only records that were never promised, and
``read`` fsyncs the slot it returns, so what a restart trusts is durable before anything is
written over the other slot.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from confbus.agent.state_io import (
    FileMode,
    fsync_dir,
    fsync_file,
    read_if_exists,
    remove_quietly,
)

_MAGIC = b"confbus-record 1 "
_SLOTS = ("a", "b")


class RecordCorrupt(ValueError):
    pass


def _frame(seq: int, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest().encode()
    return _MAGIC + b"%d %d %s\n" % (seq, len(body), digest) + body


def _parse(data: bytes | None) -> tuple[int, bytes] | None:
    """(sequence, body) of a slot, or None if it is missing, torn or not a record."""
    if not data or not data.startswith(_MAGIC):
        return None
    header, sep, rest = data.partition(b"\n")
    if not sep:
        return None
    try:
        seq_s, len_s, digest = header[len(_MAGIC) :].split(b" ")
        seq, length = int(seq_s), int(len_s)
    except ValueError:
        return None
    body = rest[:length]
    if len(body) != length or hashlib.sha256(body).hexdigest().encode() != digest:
        return None
    return seq, body


class SlotRecord:
    """The newest body written, durably, in ``directory``. Not thread-safe: the caller holds
    its own lock (``NamespaceDisk`` does). ``legacy``: a single-file record of an older agent,
    read when no slot exists yet and removed once a slot holds a newer record."""

    def __init__(self, directory: Path, name: str, mode: FileMode, legacy: Path | None = None):
        self.paths = tuple(directory / f"{name}.{s}" for s in _SLOTS)
        self.mode = mode
        self.legacy = legacy
        self._seq = -1  # newest sequence on disk; -1: not read yet
        # Index of the slot holding the newest durable record: every write goes to the
        # other one (so the first write goes to slot a).
        self._durable = 1

    def read(self) -> bytes | None:
        """The newest valid body (None: nothing written yet). ``RecordCorrupt`` when both slots
        exist and neither is valid: no crash does that (it spoils one slot at most), so an
        operator must look."""
        best: tuple[int, bytes] | None = None
        self._seq, self._durable = 0, 1
        present = 0
        for i, path in enumerate(self.paths):
            data = read_if_exists(path)
            present += bool(data)
            got = _parse(data)
            if got is not None and (best is None or got[0] > best[0]):
                best, self._seq, self._durable = got, got[0], i
        if best is not None:
            # It may be a write made without fsync before a crash: make it durable before
            # the next write may overwrite the other slot.
            fsync_file(self.paths[self._durable])
            return best[1]
        if present == len(self.paths):
            raise RecordCorrupt(f"neither {self.paths[0].name} nor {self.paths[1].name} is valid")
        # One spoilt slot and no other: the very first write was cut short.
        return read_if_exists(self.legacy) if self.legacy is not None else None

    def write(self, body: bytes, *, durable: bool = True) -> None:
        """Write ``body`` as the newest record; ``durable=False``: without fsync (see above)."""
        if self._seq < 0:
            self.read()
        slot = 1 - self._durable
        path = self.paths[slot]
        data = _frame(self._seq + 1, body)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            created = False
        except FileNotFoundError:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            created = True
        try:
            if created:
                if self.mode.uid is not None and self.mode.gid is not None and os.geteuid() == 0:
                    os.fchown(fd, self.mode.uid, self.mode.gid)
                os.fchmod(fd, self.mode.mode)
            view, offset = memoryview(data), 0
            while offset < len(data):
                offset += os.pwrite(fd, view[offset:], offset)
            os.ftruncate(fd, len(data))
            durable = durable or created  # a new slot is made durable at once (rare)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(path.parent)  # the new slot's name must survive too
        self._seq += 1
        if not durable:
            return
        self._durable = slot
        if self.legacy is not None:
            # Superseded; a copy resurrected by a power cut loses to the slots anyway.
            remove_quietly(self.legacy)
            self.legacy = None
