"""``cfg.api.store.*``: the version-store's request/reply API."""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.changes import ChangeProposed
from schemas.names import Namespace
from schemas.policy import Policy
from schemas.versions import VersionInfo

SERVICE = "store"

# A version reference: a number, or one of these names.
VersionRef = str  # "12" | "production" | "last-good" | "latest"


class GetRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    ref: VersionRef = "latest"
    content: bool = True


class VersionReply(msgspec.Struct, frozen=True, kw_only=True):
    info: VersionInfo
    content: bytes | None = None


class HistoryRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    before: int | None = None  # page backwards from this version (exclusive)
    limit: int = 50


class HistoryReply(msgspec.Struct, frozen=True, kw_only=True):
    versions: list[VersionInfo]
    next_before: int | None = None


class DiffRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    a: VersionRef
    b: VersionRef


class DiffReply(msgspec.Struct, frozen=True, kw_only=True):
    a: int
    b: int
    diff: str


class ApproveRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    version: int
    approver: str


class PromoteRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Make a version ``production`` (the previous one becomes ``superseded``)."""

    namespace: Namespace
    version: int
    actor: str
    reason: str = ""


class MarkGoodRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Record a version as the namespace's last known good (after a bake with data)."""

    namespace: Namespace
    version: int
    actor: str
    reason: str = ""


class PolicyGetRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace


class PolicySetRequest(msgspec.Struct, frozen=True, kw_only=True):
    policy: Policy
    actor: str = ""


class DryRunRequest(msgspec.Struct, frozen=True, kw_only=True):
    change: ChangeProposed


class DryRunReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    reason: str = ""
    where: str = ""
    would_be_version: int | None = None
    diff: str = ""


class ChangeStatusRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    change_id: str


class ChangeStatusReply(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["unknown", "stored", "rejected"]
    version: int | None = None
    reason: str = ""
