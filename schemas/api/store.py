"""``cfg.api.store.*``: the version-store's request/reply API."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from confbus.schemas.changes import ChangeProposed
from confbus.schemas.names import Namespace, VersionNumber
from confbus.schemas.policy import Policy
from confbus.schemas.versions import VersionInfo

SERVICE = "store"

# A version reference: a number, or one of these names.
VersionRef = Annotated[
    str,
    msgspec.Meta(
        # A number of at most 15 digits stays below 2^53 (confbus.schemas.names.MAX_INT).
        pattern=r"^([1-9][0-9]{0,14}|production|last-good|latest)$",
        description='a version number, or "production", "last-good" or "latest"',
    ),
]


class GetRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    ref: VersionRef = "latest"
    content: bool = True


class VersionReply(msgspec.Struct, frozen=True, kw_only=True):
    info: VersionInfo
    content: bytes | None = None


class HistoryRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    before: VersionNumber | None = None  # page backwards from this version (exclusive)
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50


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
    version: VersionNumber
    approver: str


class PromoteRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Make a version ``production`` (the previous one becomes ``superseded``)."""

    namespace: Namespace
    version: VersionNumber
    actor: str
    reason: str = ""


class MarkGoodRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Record a version as the namespace's last known good (after a bake with data)."""

    namespace: Namespace
    version: VersionNumber
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
    """``stored``: ``version`` holds the change id and ``sha256`` is its bytes' hash.
    ``rejected``: the last attempt under this id was refused (``reason``, ``where``; ``sha256``
    of the refused bytes). Rejections are remembered for 7 days (``CFG_REJECTIONS``)."""

    status: Literal["unknown", "stored", "rejected"]
    version: int | None = None
    reason: str = ""
    where: str = ""
    sha256: str = ""


# -- additions: rejections, listing, backup and restore ------------------------------------------
# Ops added beside the ones above: ``reject``, ``namespaces``, ``export``, ``import``.


class RejectRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Refuse a draft (or a not yet rolled out approved version) for good."""

    namespace: Namespace
    version: VersionNumber
    actor: str
    reason: str = ""


class NamespacesRequest(msgspec.Struct, frozen=True, kw_only=True):
    pass


class NamespacesReply(msgspec.Struct, frozen=True, kw_only=True):
    namespaces: list[str]


class ExportedVersion(msgspec.Struct, frozen=True, kw_only=True):
    info: VersionInfo
    content: bytes
    strategy: str | None = None
    selector: dict[str, str] | None = None


class ExportRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Page through one consistent snapshot of a namespace.

    The first call (no ``session``) takes the snapshot; the next calls pass the ``session`` and
    the ``offset`` of the next version, to the replica that holds it (``ExportReply.replica``).
    A page holds at most ``max_bytes`` of content (at least one version), so a reply stays
    under the bus's payload limit.
    """

    namespace: Namespace
    session: str = ""
    offset: int = 0
    max_bytes: int = 1024 * 1024


class ExportReply(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    session: str
    total: int  # versions in the snapshot
    offset: int  # of the first version in this page
    versions: list[ExportedVersion]
    production: int | None = None
    last_good: int | None = None
    policy: Policy | None = None
    done: bool = False
    # The replica holding the session: send the next pages to op ``export_<replica>``, since
    # replicas share the plain ``export`` subject in one queue group.
    replica: str = ""


class ImportRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Restore a namespace in pages: the same ``session`` for every page (sent to op
    ``import_<replica>`` after the first), ``done`` on the last.

    Nothing is written before the last page; then all of it is checked (hashes, numbering,
    pointers) and written in one go, or refused.
    """

    namespace: Namespace
    session: str = ""
    versions: list[ExportedVersion] = []
    done: bool = False
    production: int | None = None
    last_good: int | None = None
    policy: Policy | None = None


class ImportReply(msgspec.Struct, frozen=True, kw_only=True):
    session: str
    received: int  # versions received so far in this session
    imported: int | None = None  # versions written (0: the identical namespace was there)
    replica: str = ""  # send the next pages to op ``import_<replica>``
