"""``confbus backup [NS] --out FILE`` and ``confbus restore FILE``.

A backup is one JSON document: for each namespace its policy, every version with its exact
bytes (base64), metadata and status, and its ``production``/``last-good`` pointers — each
namespace taken as one consistent snapshot. ``restore`` checks every hash, the numbering and the
pointers before sending anything, and the store checks them again and writes each namespace
all at once: a tampered file is refused, never half restored. Restoring into a store that
already holds the identical namespace writes nothing; into one holding *different* versions of
it, it is refused.

The file holds the content of secret namespaces too (it must, to restore them): it is written
with mode 0600, and should be kept like the store itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
from datetime import datetime
from pathlib import Path

import msgspec

from confbus.cli.commands.args import acting_as, input_file
from confbus.cli.commands.options import NAMESPACE, Subparsers, add, command
from confbus.cli.exitcodes import FAILED, OK, USAGE, CliError
from confbus.client import Client, NamespaceBackup, check_namespace
from confbus.runtime.errors import InvalidInput
from confbus.schemas.api.store import ImportReply
from confbus.schemas.base import DECODE_ERRORS, utcnow
from confbus.schemas.sealing import content_sha256

BACKUP_KIND = "confbus-backup"
BACKUP_VERSION = 1


class BackupFile(msgspec.Struct, frozen=True, kw_only=True):
    kind: str = BACKUP_KIND
    format_version: int = BACKUP_VERSION
    created_at: datetime = msgspec.field(default_factory=utcnow)
    namespaces: list[NamespaceBackup] = []


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(BackupFile).decode


def register(sub: Subparsers) -> None:
    p = command(sub, "backup")
    add(p, NAMESPACE.but(nargs="?", help="default: every namespace"))
    p.add_argument("--out", required=True, metavar="FILE", help="the backup file to write")
    p.set_defaults(func=run_backup)

    p = command(sub, "restore")
    p.add_argument("file", metavar="FILE", type=input_file)
    p.set_defaults(func=run_restore)


async def run_backup(args: argparse.Namespace, client: Client) -> int:
    if args.namespace is not None:
        try:
            check_namespace(args.namespace)
        except InvalidInput as exc:
            raise CliError(exc.message, USAGE) from None
        names = [args.namespace]
    else:
        names = await client.namespaces()
    backups = [await client.export_namespace(ns) for ns in names]
    for b in backups:
        verify(b)  # never write a backup that restore would refuse
    write_atomically(Path(args.out), _encode(BackupFile(namespaces=backups)))
    versions = sum(len(b.versions) for b in backups)
    sys.stderr.write(
        f"confbus: backed up {len(backups)} namespace(s), {versions} version(s) to {args.out}\n"
    )
    return OK


async def run_restore(args: argparse.Namespace, client: Client) -> int:
    backup = read_backup(Path(args.file))
    for b in backup.namespaces:
        verify(b)
    who = acting_as(args, None)
    for b in backup.namespaces:
        reply = await client.import_namespace(b, actor=who)
        sys.stdout.write(f"{b.namespace}: {restored(reply)}\n")
    return OK


def restored(reply: ImportReply) -> str:
    """What a restore did to one namespace, in words."""
    done = [f"{reply.imported} version(s) restored"] if reply.imported else []
    if reply.policy_changed:
        done.append("policy replaced")
    return ", ".join(done) if done else "already there, unchanged"


def read_backup(path: Path) -> BackupFile:
    try:
        with open(path, "rb") as f:
            # A backup is a regular file; a device or a FIFO (say a link to /dev/zero) could
            # be read forever.
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise CliError(f"{path} is not a regular file", FAILED)
            raw = f.read()
    except OSError as exc:  # gone since the arguments were checked
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", USAGE) from None
    try:
        backup = _decode(raw)
    except DECODE_ERRORS as exc:
        raise CliError(f"{path} is not a confbus backup: {exc}", FAILED) from None
    if backup.kind != BACKUP_KIND or backup.format_version != BACKUP_VERSION:
        raise CliError(
            f"{path}: a {backup.kind!r} file of format {backup.format_version}; this confbus "
            f"reads {BACKUP_KIND!r} format {BACKUP_VERSION}",
            FAILED,
        )
    return backup


def verify(b: NamespaceBackup) -> None:
    """Refuse a namespace whose bytes do not match its hashes, or whose numbering is broken.
    (The store checks all of it again; this only fails earlier, before anything is sent.)"""
    for i, v in enumerate(b.versions, start=1):
        info = v.info
        where = f"{b.namespace} v{info.version}"
        if info.namespace != b.namespace or info.version != i:
            raise CliError(f"{where}: expected {b.namespace} v{i} at position {i}", FAILED)
        actual = content_sha256(v.content)
        if actual != info.sha256 or len(v.content) != info.size:
            raise CliError(
                f"{where}: content does not match its recorded hash (sha256 {actual[:12]}…, "
                f"recorded {info.sha256[:12]}…): the file was altered or damaged; "
                "nothing was restored",
                FAILED,
            )


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, rename: a crash leaves the old file or
    the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CliError(f"cannot write {path}: {exc.strerror or exc}", FAILED) from None
