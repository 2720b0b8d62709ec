"""``cfg.api.store.*``: the version-store's request/reply API.

Every operation that records who acted is also served pinned (``approve.<user>``, …, see
``confbus.runtime.identity``): with authentication on, only confbus services may use the plain,
self-declared twin. ``export``/``import`` page through one session, held by the replica that
took it: the pages after the first go to that replica's own operation (``export_<replica>``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from confbus.schemas.api.operation import Operation, seconds
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.names import Label, Namespace, VersionNumber
from confbus.schemas.policy import Policy
from confbus.schemas.signing import Signature
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
    signatures: list[Signature] = []  # as stored with the version (given with the content)


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
    # The bytes a node with these labels runs of each version (docs/design.md §2.6); None:
    # the stored bytes (a version with overlays: its envelope).
    labels: dict[Label, Label] | None = None


class DiffReply(msgspec.Struct, frozen=True, kw_only=True):
    a: int
    b: int
    diff: str


class ApproveRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    version: VersionNumber
    approver: str


class _VersionAct(msgspec.Struct, frozen=True, kw_only=True):
    """Someone acting on one version of a namespace, with a reason: what a promotion, a
    last-good mark and a rejection each carry (and record in their event)."""

    namespace: Namespace
    version: VersionNumber
    actor: str
    reason: str = ""


class PromoteRequest(_VersionAct, frozen=True, kw_only=True):
    """Make a version ``production`` (the previous one becomes ``superseded``)."""


class MarkGoodRequest(_VersionAct, frozen=True, kw_only=True):
    """Record a version as the namespace's last known good (after a bake with data)."""


class PolicyGetRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace


class PolicySetRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Replace a namespace's policy (checked whole), announced as ``policy.changed`` with what
    changed; ``dry_run``: check it and answer it as it would be stored, store nothing."""

    policy: Policy
    actor: str = ""
    dry_run: bool = False


class DryRunRequest(msgspec.Struct, frozen=True, kw_only=True):
    change: ChangeProposed


class VariantDiff(msgspec.Struct, frozen=True, kw_only=True):
    """One variant a change with overlays would make: the current members that would run it
    (none: the base, or an overlay alone, which no member runs now), its sha256, and the diff
    from what those nodes run now (docs/design.md §2.6)."""

    name: str
    nodes: list[str] = []
    sha256: str
    diff: str = ""


class DryRunReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    reason: str = ""
    where: str = ""
    would_be_version: int | None = None
    diff: str = ""  # of the stored content (the base, for a change with overlays)
    variants: list[VariantDiff] = []


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
    # ``rejected`` only: the policy that refused it has been changed since (``policy_digest``
    # is the one in force now), so the rejection no longer answers a retry: the change sent
    # again (message id ``changes.msg_id(ns, change_id, policy_digest)``) is judged afresh.
    outdated: bool = False
    policy_digest: str = ""


class RejectRequest(_VersionAct, frozen=True, kw_only=True):
    """Refuse a draft (or a not yet rolled out approved version) for good."""


class NamespacesRequest(msgspec.Struct, frozen=True, kw_only=True):
    pass


class NamespacesReply(msgspec.Struct, frozen=True, kw_only=True):
    namespaces: list[str]


class ExportedVersion(msgspec.Struct, frozen=True, kw_only=True):
    info: VersionInfo
    content: bytes
    strategy: str | None = None
    selector: dict[str, str] | None = None
    signatures: list[Signature] = []


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
    actor: str = ""  # who restores: the actor of the policy.changed a new policy is announced by


class ImportReply(msgspec.Struct, frozen=True, kw_only=True):
    session: str
    received: int  # versions received so far in this session
    imported: int | None = None  # versions written (0: the identical namespace was there)
    replica: str = ""  # send the next pages to op ``import_<replica>``
    policy_changed: bool = False  # the last page replaced the namespace's policy


class ProposeReply(msgspec.Struct, frozen=True, kw_only=True):
    """The stream's ack for a change the store put on ``cfg.change.<ns>`` for its caller: the
    caller then waits for the outcome as after a publish of its own."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False


# -- the operations -------------------------------------------------------------------------------

# A read or a write of the store: one commit, or a page of one.
_STORE = seconds(10.0)

GET = Operation(
    SERVICE,
    "get",
    GetRequest,
    VersionReply,
    _STORE,
    "A version by number or name (latest, production, last-good), with its bytes if asked.",
)
HISTORY = Operation(
    SERVICE,
    "history",
    HistoryRequest,
    HistoryReply,
    _STORE,
    "A page of a namespace's versions, newest first.",
)
DIFF = Operation(
    SERVICE, "diff", DiffRequest, DiffReply, _STORE, "A unified diff between two versions."
)
APPROVE = Operation(
    SERVICE,
    "approve",
    ApproveRequest,
    VersionReply,
    _STORE,
    "Approve a draft, as the approver the request names.",
    acts=True,
)
PROMOTE = Operation(
    SERVICE,
    "promote",
    PromoteRequest,
    VersionReply,
    _STORE,
    "Make a version production (the previous one becomes superseded).",
    acts=True,
)
MARK_GOOD = Operation(
    SERVICE,
    "mark_good",
    MarkGoodRequest,
    VersionReply,
    _STORE,
    "Record a version as the namespace's last known good.",
    acts=True,
)
REJECT = Operation(
    SERVICE,
    "reject",
    RejectRequest,
    VersionReply,
    _STORE,
    "Refuse a draft (or a not yet rolled out approved version) for good.",
    acts=True,
)
POLICY_GET = Operation(
    SERVICE,
    "policy_get",
    PolicyGetRequest,
    Policy,
    _STORE,
    "A namespace's policy (its default when none was set).",
)
POLICY_SET = Operation(
    SERVICE,
    "policy_set",
    PolicySetRequest,
    Policy,
    _STORE,
    "Store a namespace's policy; answers it as stored.",
    acts=True,
)
DRY_RUN = Operation(
    SERVICE,
    "dry_run",
    DryRunRequest,
    DryRunReply,
    seconds(30.0),  # validation may run the namespace's JSON Schema over a large document
    "Validate a change as the consumer would, and diff it; store nothing.",
)
CHANGE_STATUS = Operation(
    SERVICE,
    "change_status",
    ChangeStatusRequest,
    ChangeStatusReply,
    _STORE,
    "What became of a change id: stored (as which version), rejected (why), or unknown.",
)
NAMESPACES = Operation(
    SERVICE,
    "namespaces",
    NamespacesRequest,
    NamespacesReply,
    _STORE,
    "Every namespace the store holds.",
)
EXPORT = Operation(
    SERVICE,
    "export",
    ExportRequest,
    ExportReply,
    seconds(30.0),
    "The first page of a consistent snapshot of a namespace (backup).",
)
EXPORT_AT = Operation(
    SERVICE,
    "export_{replica}",
    ExportRequest,
    ExportReply,
    seconds(30.0),
    "The next pages of a snapshot, from the replica that holds it (ExportReply.replica).",
)
IMPORT = Operation(
    SERVICE,
    "import",
    ImportRequest,
    ImportReply,
    seconds(60.0),  # the last page checks and writes the whole namespace at once
    "The first page of a restore (all of it written, or refused, with the last page).",
    acts=True,
)
IMPORT_AT = Operation(
    SERVICE,
    "import_{replica}",
    ImportRequest,
    ImportReply,
    seconds(60.0),
    "The next pages of a restore, to the replica that holds it (ImportReply.replica).",
    acts=True,
)

# The acts that record who acted, with the caller's NATS user pinned in the subject.
APPROVE_AS = Operation(
    SERVICE,
    "approve_as",
    ApproveRequest,
    VersionReply,
    _STORE,
    "Approve a draft as the NATS user in the subject.",
    acts=True,
    subject="approve.*",
    twin=APPROVE,
)
REJECT_AS = Operation(
    SERVICE,
    "reject_as",
    RejectRequest,
    VersionReply,
    _STORE,
    "Reject a version as the NATS user in the subject.",
    acts=True,
    subject="reject.*",
    twin=REJECT,
)
PROMOTE_AS = Operation(
    SERVICE,
    "promote_as",
    PromoteRequest,
    VersionReply,
    _STORE,
    "Promote a version as the NATS user in the subject.",
    acts=True,
    subject="promote.*",
    twin=PROMOTE,
)
MARK_GOOD_AS = Operation(
    SERVICE,
    "mark_good_as",
    MarkGoodRequest,
    VersionReply,
    _STORE,
    "Record a last known good as the NATS user in the subject.",
    acts=True,
    subject="mark_good.*",
    twin=MARK_GOOD,
)
POLICY_SET_AS = Operation(
    SERVICE,
    "policy_set_as",
    PolicySetRequest,
    Policy,
    _STORE,
    "Store a policy as the NATS user in the subject.",
    acts=True,
    subject="policy_set.*",
    twin=POLICY_SET,
)
PROPOSE = Operation(
    SERVICE,
    "propose",
    ChangeProposed,
    ProposeReply,
    _STORE,
    "Put a change on cfg.change.<ns> authored by the NATS user in the subject "
    "(propose.<ns>.<user>); the outcome comes as for a publish.",
    acts=True,
    idempotent="the change id is the stream's message id: a repeat is dropped as a duplicate",
    subject="propose.*.*",
    scope=("namespace",),
)

OPERATIONS: tuple[Operation[Any, Any], ...] = (
    GET,
    HISTORY,
    DIFF,
    APPROVE,
    PROMOTE,
    MARK_GOOD,
    REJECT,
    POLICY_GET,
    POLICY_SET,
    DRY_RUN,
    CHANGE_STATUS,
    NAMESPACES,
    EXPORT,
    EXPORT_AT,
    IMPORT,
    IMPORT_AT,
    APPROVE_AS,
    REJECT_AS,
    PROMOTE_AS,
    MARK_GOOD_AS,
    POLICY_SET_AS,
    PROPOSE,
)
