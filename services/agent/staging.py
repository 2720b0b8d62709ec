"""Staged files: a prepare's bytes beside the live file, and the prepare as the agent runs it.

A staged file is ``.<name>.confbus-staged-<txid>`` in the live file's directory, so that the
commit's rename never crosses file systems. It counts only once the PREPARED record naming its
sha256 is durable (``confbus.agent.disk``): one without a record is a leftover of a crash before
the vote, and ``load`` removes it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from confbus.agent import offload
from confbus.agent.formats import run_validate
from confbus.agent.state import Refused, Staged
from confbus.agent.state_io import ensure_dir, mode_of, remove_quietly, write_new
from confbus.schemas.names import check_txid
from confbus.schemas.txn import Prepare

if TYPE_CHECKING:
    from confbus.agent.disk import NamespaceDisk


class StagedFiles:
    """The staged files next to one live file."""

    def __init__(self, live_path: Path) -> None:
        self.live_path = live_path
        self.prefix = f".{live_path.name}.confbus-staged-"

    def path(self, txid: str) -> Path:
        return self.live_path.with_name(self.prefix + check_txid(txid))

    def named(self, name: str) -> Path:
        return self.live_path.with_name(name)

    def names(self) -> list[str]:
        try:
            names = os.listdir(self.live_path.parent)
        except FileNotFoundError:
            return []
        return [n for n in names if n.startswith(self.prefix)]

    def write(self, path: Path, content: bytes) -> None:
        """Write a staged file durably, with the live file's mode; ``Refused`` ("io") if not."""
        try:
            ensure_dir(path.parent)
            # Written at its own name (no temp file, no rename): a staged file counts only
            # once the PREPARED record naming its sha256 is durable, and a crash before that
            # leaves one without a record, which ``load`` removes.
            write_new(path, content, mode_of(self.live_path))
        except OSError as exc:
            remove_quietly(path)
            raise Refused("io", f"cannot write the staged file {path}: {exc}") from exc

    def remove(self, name: str) -> None:
        remove_quietly(self.named(name))

    def remove_all_but(self, keep: str | None) -> None:
        for name in self.names():
            if name != keep:
                self.remove(name)


async def prepare_txn(
    disk: NamespaceDisk,
    prepare: Prepare,
    *,
    validate_cmd: str | Sequence[str] | None = None,
    validate_timeout: float = 30.0,
    node: str | None = None,
) -> Staged:
    """The node's whole side of a prepare: stage → validate → seal, off the event loop.

    Returns → vote yes (the PREPARED record is durable). ``Refused`` → vote no with its
    ``reason``; nothing of the transaction is left behind. Any other exception (an unexpected
    I/O error) → vote no as well: only a returned ``Staged`` is a yes. ``node``: this node's
    id, which picks its own bytes from a prepare that carries variants.
    """
    staged = await offload.run(disk.stage, prepare, node)
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
