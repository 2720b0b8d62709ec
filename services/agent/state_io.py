"""Crash-safe file primitives. Every durable change is: write a temp file → fsync it → rename
it over the target → fsync the directory.

Why each step:

- the temp file lives in the target's own directory, so the rename never crosses file systems
  (a cross-device "rename" is a copy, and a copy is not atomic);
- fsync the file before the rename: otherwise, after a power cut, the rename can be durable
  while the data is not, and the name points at an empty or torn file;
- fsync the directory after the rename: the new name lives in the directory, and without it
  the rename itself may not survive a power cut.

Temp files carry ``TMP_MARK`` in their name, so a restart can tell them from anything else in
a directory it shares with the application and remove only its own leftovers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

TMP_MARK = ".confbus-tmp-"
_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class FileMode:
    """Permission bits and owner a new file should get (those of the file it replaces)."""

    mode: int = 0o644
    uid: int | None = None
    gid: int | None = None


def mode_of(path: Path, default: int = 0o644) -> FileMode:
    """The mode and owner of ``path``, so a replacement keeps them (the app must still read it)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return FileMode(default)
    return FileMode(st.st_mode & 0o7777, st.st_uid, st.st_gid)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Make bytes written earlier without fsync durable."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path, mode: int = 0o755) -> None:
    """Create ``path`` and missing parents, each made durable in its parent directory."""
    missing: list[Path] = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made by someone else meanwhile: fine
            os.mkdir(directory, mode)
        fsync_dir(directory.parent)


def tmp_prefix(target: Path) -> str:
    """Name prefix of the temp files written for ``target`` (hidden, next to it)."""
    return f".{target.name}{TMP_MARK}"


def write_temp(
    target: Path, data: bytes, mode: FileMode, *, reuse: Path | None = None, sync: bool = True
) -> Path:
    """Write ``data`` to a new temp file beside ``target``, fsynced unless ``sync=False``, and
    return its path.

    ``reuse``: a file of ours in the same directory that is about to be deleted and that no
    one else holds open — its inode holds the new bytes instead of a new one. Creating a file
    is the agent's dearest system call on a file system that searches past recently deleted
    inodes for a free one (ext4 without a journal, as on the benchmark machine)."""
    tmp = target.with_name(tmp_prefix(target) + secrets.token_hex(6))
    fd = _recycled(reuse, tmp, len(data)) if reuse is not None else None
    if fd is None:
        fd = _create(tmp)
    _fill(fd, tmp, data, mode, sync=sync)
    return tmp


def write_new(path: Path, data: bytes, mode: FileMode) -> None:
    """Create ``path`` (removing a leftover of ours first) with ``data``, fsync it and its
    directory. No temp file and no rename: for a file that nobody trusts by its name alone —
    the agent's staged file, which only counts once a record naming its sha256 is durable,
    and is checked against that sha256 before it is renamed over the live file."""
    try:
        fd = _create(path)
    except FileExistsError:
        remove_quietly(path)
        fd = _create(path)
    _fill(fd, path, data, mode)
    fsync_dir(path.parent)


def _create(path: Path) -> int:
    # O_EXCL: never write through a file (or symlink) someone else put at this name.
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


def _fill(fd: int, path: Path, data: bytes, mode: FileMode, *, sync: bool = True) -> None:
    """Write ``data`` through ``fd``, give it ``mode``, fsync (``sync``) and close it; on any
    failure, close it and remove ``path``."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if mode.uid is not None and mode.gid is not None and os.geteuid() == 0:
            # As root, keep the replaced file's owner: an app running as its own user must
            # still be able to read its config after the switch.
            os.fchown(fd, mode.uid, mode.gid)
        os.fchmod(fd, mode.mode)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_quietly(path)
        raise
    os.close(fd)


def _recycled(old: Path, tmp: Path, size: int) -> int | None:
    """``old`` renamed to ``tmp`` and opened for writing, cut to ``size`` bytes (the caller
    overwrites them all); None if that cannot be done. Not ``O_TRUNC``: freeing the blocks and
    allocating them again cost more than the write itself (~60 µs of a ~150 µs copy)."""
    try:
        os.rename(old, tmp)
    except OSError:
        return None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        remove_quietly(tmp)
        return None
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        remove_quietly(tmp)
        return None
    return fd


def replace_durably(source: Path, target: Path) -> None:
    """Rename ``source`` over ``target`` (same directory) and make the rename durable."""
    os.replace(source, target)
    fsync_dir(target.parent)


def atomic_write(
    target: Path,
    data: bytes,
    mode: FileMode | None = None,
    *,
    durable: bool = True,
    reuse: Path | None = None,
) -> None:
    """Replace ``target`` with ``data``: readers see the old bytes or the new, never a mix.

    ``durable=False`` skips both fsyncs (the bytes', and the directory's after the rename), for
    a copy that every reader checks against a known sha256: after a power cut the name may be
    absent, or hold the old bytes, or the new ones, whole or spoilt — never a mix that passes
    the check. (A process that dies without a power cut loses nothing: the page cache stays.)"""
    tmp = write_temp(target, data, mode or mode_of(target), reuse=reuse, sync=durable)
    try:
        if durable:
            replace_durably(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException:
        remove_quietly(tmp)
        raise


def remove_quietly(path: Path) -> bool:
    """Unlink ``path`` if it exists; True if it did.

    No directory fsync: every caller removes something whose resurrection after a power cut
    is harmless (a temp file, a stale staged file, an old history entry) and is swept again
    on the next start.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def remove_temps(directory: Path, prefix: str = "") -> list[str]:
    """Remove the temp files an interrupted write left in ``directory``; return their names.

    ``prefix`` narrows the sweep to one target's temp files, for directories shared with the app.
    """
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        if name.startswith(prefix) and TMP_MARK in name and remove_quietly(directory / name):
            removed.append(name)
    return removed


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_if_exists(path: Path) -> bytes | None:
    """The file's bytes, or None if there is no such file.

    Plain ``os.open``/``os.read``: ``open()`` adds an fstat, an isatty ioctl and a seek per
    file, and the agent reads the live and staged files several times per switch."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def sha256_file(path: Path) -> str | None:
    """sha256 of the file as it is on disk now, or None if there is no such file."""
    data = read_if_exists(path)
    return None if data is None else sha256_bytes(data)


# A file whose last change (ctime) is this long before we hashed it may keep its hash while
# its stat stays the same: a write within the clock's granularity of our read could leave the
# times as they were, but not one that far apart (git's "racily clean" rule).
SETTLED_NS = 1_000_000_000


_Stat = tuple[int, int, int, int, int]
_ABSENT: _Stat = (-1, -1, -1, -1, -1)  # the stat key of "there is no such file"


def _stat_key(path: Path) -> _Stat:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return _ABSENT
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(slots=True)
class FileHash:
    """The sha256 of a file that is read again only when its stat (device, inode, size,
    modification and change times) is not what it was when last hashed — every write, rename
    over it or truncation moves its change time, which nobody can set back. For the
    heartbeat's drift check, which looks at the live file every interval."""

    # (stat key, sha256) of the last settled read, one attribute: ``unchanged`` reads it on
    # the event loop while a worker thread may be replacing it, and sees both or neither.
    _seen: tuple[_Stat, str | None] | None = None

    def current(self, path: Path) -> str | None:
        """sha256 of the file as it is on disk now, or None if there is no such file."""
        key = _stat_key(path)
        seen = self._seen
        if seen is not None and seen[0] == key:
            return seen[1]
        if key == _ABSENT:
            self._seen = (key, None)  # an absence has no times to be racy about
            return None
        hashed_at = time.time_ns()
        sha256 = sha256_file(path)
        settled = key[4] < hashed_at - SETTLED_NS
        self._seen = (key, sha256) if settled and sha256 is not None else None
        return sha256

    def unchanged(self, path: Path, sha256: str | None) -> bool:
        """Whether ``current`` would return ``sha256`` without reading the file: its stat is
        the one last hashed, and that hash was ``sha256``. One stat, no lock, no read: the
        heartbeat asks this on the event loop, and only a False costs the full check."""
        seen = self._seen
        return seen is not None and seen[1] == sha256 and seen[0] == _stat_key(path)

    def forget(self) -> None:
        self._seen = None
