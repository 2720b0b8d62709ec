"""What the agent keeps on disk about one namespace, what it reports, and how it fails.

Errors (rooted in ``confbus.runtime.errors``)::

    ConfbusError
     └── Permanent
          ├── Refused           vote no on this prepare: ``.kind`` is the check, ``.reason`` why
          ├── IntegrityError    bytes do not hash to the sha256 they claim: fetch them again
          ├── StateCorrupt      the state record is unreadable: an operator must look, nothing lost
          └── NotFound
               └── VersionNotOnDisk   the bytes of that version are not in the local history

The on-disk record is one msgspec Struct (``DiskState``) in ``<state dir>/<ns>/state.{a,b}``
(``confbus.agent.record``: two checksummed slots written in turn), so a crash leaves either the
previous record or the new one. Readers ignore fields they do not know, so a newer agent's
record stays readable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal

import msgspec

from confbus.runtime.errors import NotFound, Permanent
from confbus.schemas.base import project, utcnow
from confbus.schemas.node import NamespaceState

RefusalKind = Literal[
    "stale-epoch",  # an older coordinator epoch than one already seen: a zombie's prepare
    "wrong-namespace",
    "busy",  # another transaction is prepared and undecided here
    "conflict",  # same txid seen before with a different version or sha256
    "not-newer",  # version not higher than the applied one
    "sha256",  # the bytes do not hash to the prepare's sha256
    "format",  # the bytes do not parse for the namespace's format
    "schema",  # a variant breaks the namespace's JSON Schema the prepare carries
    "validate",  # the node's validation command said no (or could not run)
    "io",  # the staged file or the PREPARED record could not be written (disk full, ...)
    "untrusted",  # not signed as this node's trust roots require (confbus.agent.trust)
    "sealed",  # sealed content this node cannot open, or not this version's
    "variant",  # a prepare with variants that names none for this node
]


class Refused(Permanent):
    """This node votes ``no`` on the prepare, with ``reason``."""

    def __init__(self, kind: RefusalKind, reason: str) -> None:
        self.kind: RefusalKind = kind
        self.reason = reason
        super().__init__(f"{kind}: {reason}")


class IntegrityError(Permanent):
    def __init__(self, what: str, expected: str, actual: str | None) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"{what}: sha256 is {actual or 'missing'}, expected {expected}")


class StateCorrupt(Permanent):
    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        super().__init__(f"cannot read agent state {path}: {detail}")


class VersionNotOnDisk(NotFound):
    def __init__(self, namespace: str, version: int) -> None:
        self.version = version
        super().__init__(f"version {version} of {namespace} is not in the local history")


# --- the on-disk record -------------------------------------------------------------------


class PreparedRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The PREPARED record: this node voted (or is about to vote) yes on ``txid``."""

    txid: str
    version: int
    sha256: str
    epoch: int
    format: str
    staged: str  # file name of the staged file, in the live file's directory
    timeout_s: float = 0.0  # the prepare's; recovery asks the coordinator once it has passed
    prepared_at: datetime = msgspec.field(default_factory=utcnow)  # for display: age of doubt
    # The sha256 the decision names, when it is not the staged bytes' (a variant: the
    # version's, while ``sha256`` is this node's own bytes'). None: the same.
    version_sha256: str | None = None

    @property
    def decided_sha256(self) -> str:
        return self.version_sha256 or self.sha256


class AppliedRecord(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    sha256: str
    txid: str | None = None  # None: applied by catch-up or by a restore of the last known good
    applied_at: datetime = msgspec.field(default_factory=utcnow)
    # False from the install until node.applied was published (folded into the next state
    # write, no fsync of its own): an agent that died in between announces it on restart.
    announced: bool = True


class Installing(msgspec.Struct, frozen=True, kw_only=True):
    """Intent written before the live file is renamed; resolved by ``load`` after a crash."""

    version: int
    sha256: str
    txid: str | None = None


class LastGood(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    sha256: str


class DiskState(msgspec.Struct, frozen=True, kw_only=True):
    layout: int = 1
    namespace: str
    applied: AppliedRecord | None = None
    highest_epoch: int = 0
    stream_seq: int = 0
    prepared: PreparedRecord | None = None
    installing: Installing | None = None
    last_good: LastGood | None = None


encode_state = msgspec.json.Encoder().encode
decode_state = msgspec.json.Decoder(DiskState).decode


# --- what the disk side tells the agent ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalState:
    """One namespace as this node has it now (from ``NamespaceDisk.load`` / ``snapshot``)."""

    namespace: str
    applied_version: int | None  # None: no config yet
    applied_sha256: str | None
    live_sha256: str | None  # of the live file as read back now; differs from applied → drift
    highest_epoch: int
    stream_seq: int  # last CFG_TXN sequence processed; resume the ordered consumer after it
    prepared: PreparedRecord | None  # set → in doubt: ask for the decision of prepared.txid
    last_good: int | None
    history: tuple[int, ...]  # versions whose bytes are on disk, ascending
    applied_txid: str | None = None  # the transaction that installed the applied version
    unannounced: bool = False  # installed, but node.applied may not have been published

    @property
    def has_config(self) -> bool:
        return self.applied_version is not None

    @property
    def in_doubt(self) -> bool:
        return self.prepared is not None

    @property
    def drifted(self) -> bool:
        return self.applied_sha256 is not None and self.live_sha256 != self.applied_sha256

    @property
    def status(self) -> str:
        if not self.has_config:
            return "no-config"
        return "in-doubt" if self.in_doubt else "ok"

    def to_namespace_state(self) -> NamespaceState:
        """The heartbeat's view of this namespace (docs/design.md §5.6)."""
        return project(
            self,
            NamespaceState,
            sha256=self.live_sha256,
            prepared_txid=self.prepared.txid if self.prepared else None,
        )


@dataclass(frozen=True, slots=True)
class Staged:
    """A staged file ready for validation (``stage``) or already PREPARED (redelivery)."""

    txid: str
    version: int
    path: Path
    already_prepared: bool  # True: a redelivered prepare; the vote was yes and stays yes


class CommitOutcome(StrEnum):
    APPLIED = "applied"  # the live file now holds the version
    NOT_NEWER = "not-newer"  # version ≤ applied: nothing to do (a repeated commit, or superseded)
    # No verified staged bytes for this txid (away during the prepare, or the staged file was
    # lost): fetch the version's content and call ``NamespaceDisk.apply``.
    MISSING = "missing"
