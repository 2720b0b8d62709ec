"""The storage contract: what every backend (SQLite, etcd) must do, and the values it speaks in.

A backend stores, per namespace, versions numbered 1, 2, 3… with no gap and no duplicate,
each with its bytes (kept once per sha256), metadata, status and lineage; two pointers
(``production`` and ``last-good``); and the namespace policy. The whole contract is exercised
by ``tests/version_store/test_contract.py`` against both backends.

Status transitions (anything else raises ``InvalidTransition``)::

    draft ──approve──▶ approved ──promote──▶ production ──(another promoted)──▶ superseded
      │                   │                      ▲                                │
      └──reject──▶ rejected ◀──reject──┘          └────────────promote────────────┘

``approve`` needs an approver other than the author. ``mark_last_good`` accepts a version that is
approved, production or superseded (never a draft or a rejected one) and moves the namespace's
single last-good pointer; ``VersionInfo.last_good`` is derived from that pointer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

import msgspec

from confbus.runtime.opening import OpenClose
from confbus.schemas.api.store import ExportedVersion
from confbus.schemas.base import utcnow
from confbus.schemas.names import Format
from confbus.schemas.policy import Policy
from confbus.schemas.sealing import content_sha256
from confbus.schemas.signing import Signature
from confbus.schemas.versions import VersionInfo
from confbus.version_store.errors import StoreError

NewStatus = Literal["draft", "approved"]


class NewVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One proposed version, as the consumer hands it to ``Store.append``."""

    namespace: str
    change_id: str
    content: bytes
    sha256: str
    format: Format = "json"
    author: str = ""
    message: str = ""
    base: int | None = None  # refuse unless this is the namespace's newest version (0: empty)
    rollback_of: int | None = None
    status: NewStatus = "approved"
    created_at: datetime = msgspec.field(default_factory=utcnow)
    # Rollout hints for this version only; stored as given and handed back by ``get``.
    strategy: str | None = None
    selector: dict[str, str] | None = None
    signatures: list[Signature] = []

    @classmethod
    def build(
        cls,
        namespace: str,
        change_id: str,
        content: bytes,
        *,
        format: Format = "json",
        author: str = "",
        message: str = "",
        base: int | None = None,
        rollback_of: int | None = None,
        status: NewStatus = "approved",
        created_at: datetime | None = None,
        strategy: str | None = None,
        selector: dict[str, str] | None = None,
        signatures: list[Signature] | None = None,
    ) -> NewVersion:
        """A ``NewVersion`` whose sha256 is computed from ``content`` (the plaintext's, for
        sealed content: ``confbus.schemas.sealing``)."""
        return cls(
            namespace=namespace,
            change_id=change_id,
            content=content,
            sha256=content_sha256(content),
            format=format,
            author=author,
            message=message,
            base=base,
            rollback_of=rollback_of,
            status=status,
            created_at=created_at or utcnow(),
            strategy=strategy,
            selector=selector,
            signatures=signatures or [],
        )


Outcome = Literal["stored", "duplicate", "conflict", "invalid"]


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What happened to one item of an ``append`` batch.

    ``stored``: a new version (``info``). ``duplicate``: the change id already names these
    exact bytes — ``info`` is that version, nothing was written. ``conflict``: ``error`` is a
    ``VersionConflict`` (stale base, or the change id names other bytes). ``invalid``:
    ``error`` is an ``InvalidConfig`` (a sha256 that does not match the bytes, a bad name).
    """

    outcome: Outcome
    info: VersionInfo | None = None
    error: StoreError | None = None

    @property
    def version(self) -> int | None:
        return self.info.version if self.info is not None else None


# A stored version is what a backup carries of it, field for field: one type, the wire's, so a
# page of an export or an import is the store's own versions.
StoredVersion = ExportedVersion


class Head(msgspec.Struct, frozen=True, kw_only=True):
    """A namespace's pointers. ``newest`` is 0 for a namespace without versions."""

    namespace: str
    newest: int = 0
    production: int | None = None
    last_good: int | None = None


class Promotion(msgspec.Struct, frozen=True, kw_only=True):
    info: VersionInfo
    previous: int | None  # the version that was production before (now superseded)


class NamespaceExport(msgspec.Struct, frozen=True, kw_only=True):
    """Everything about one namespace, for backup and restore (msgspec-encodable)."""

    namespace: str
    versions: list[StoredVersion]
    production: int | None = None
    last_good: int | None = None
    policy: Policy | None = None


class IntegrityReport(msgspec.Struct, frozen=True, kw_only=True):
    namespace: str
    checked: int
    corrupt: list[int] = []  # bytes whose sha256 differs from the version's
    missing: list[int] = []  # version numbers absent from 1..newest, or whose bytes are gone

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing


VersionRef = int | str  # 12, "12", "latest", "production", "last-good"


class Store(OpenClose, Protocol):
    """The version-store's storage, used as ``async with store:`` (``OpenClose``). Every method
    may raise ``StoreUnavailable`` (retryable)."""

    async def append(self, batch: list[NewVersion]) -> list[AppendResult]:
        """Group commit: store many proposed versions, one result per item, in order.

        Items are applied as if one after the other (a ``base`` is checked against the newest
        version *including* earlier items of the batch). Raises only for the whole batch
        (``StoreUnavailable``, ``QuotaExceeded``); per-item refusals are results.
        """
        ...

    async def head(self, namespace: str) -> Head: ...

    async def get(self, namespace: str, version: int) -> StoredVersion:
        """The version with its bytes; ``NotFound`` if absent."""
        ...

    async def resolve(self, namespace: str, ref: VersionRef) -> VersionInfo:
        """``NotFound`` if the ref names nothing (e.g. no production version yet)."""
        ...

    async def history(
        self, namespace: str, before: int | None = None, limit: int = 50
    ) -> list[VersionInfo]:
        """Versions newest first, only those below ``before`` if given."""
        ...

    async def by_change_id(self, namespace: str, change_id: str) -> VersionInfo | None: ...

    async def approve(self, namespace: str, version: int, approver: str) -> VersionInfo: ...

    async def promote(self, namespace: str, version: int) -> Promotion: ...

    async def reject(self, namespace: str, version: int) -> VersionInfo: ...

    async def mark_last_good(self, namespace: str, version: int) -> VersionInfo: ...

    async def get_policy(self, namespace: str) -> Policy: ...

    async def set_policy(self, policy: Policy) -> None:
        """``InvalidConfig`` for a policy whose JSON Schema is not a valid schema."""
        ...

    async def namespaces(self) -> list[str]:
        """Namespaces with versions or a policy, sorted."""
        ...

    async def export(self, namespace: str) -> NamespaceExport: ...

    async def import_(self, data: NamespaceExport) -> int:
        """Restore a namespace from ``export``; returns the number of versions written.

        Refuses (``InvalidConfig``) bytes whose sha256 differs from the recorded one, and
        (``VersionConflict``) a namespace that already has different versions; importing the
        identical export again writes nothing and returns 0.
        """
        ...

    async def check_integrity(self, namespace: str) -> IntegrityReport: ...


def sha256_hex(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()
