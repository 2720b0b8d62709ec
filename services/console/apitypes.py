"""The bodies, queries and answers of the console's HTTP API, beside the bus types it passes
through (``confbus.schemas.api``): the OpenAPI document is generated from these."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from confbus.console.backend import NamespaceSummary
from confbus.schemas import subjects
from confbus.schemas.api.store import VersionRef
from confbus.schemas.events import AnyEvent, VoteRecord
from confbus.schemas.names import ChangeId, Format, NodeId, VersionNumber
from confbus.schemas.tokens import Role

MAX_HISTORY = 10_000
MAX_EVENTS = 1_000


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """Every error, in one shape: the HTTP status, a word for the kind, the reason, and where
    (a field, a path in the config, ``namespace``, ``token``…)."""

    status: int
    error: str
    reason: str
    where: str = ""


class WhoAmI(msgspec.Struct, frozen=True, kw_only=True):
    user: str
    role: Role


class Overview(msgspec.Struct, frozen=True, kw_only=True):
    namespaces: list[NamespaceSummary]


class PublishRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A change, as ``confbus publish`` sends it: ``change_id`` makes a retry harmless (the
    same id with the same bytes is the same version; other bytes under it are refused)."""

    content: str  # the config's text (UTF-8)
    format: Format | None = None  # None: the namespace policy's
    change_id: ChangeId | None = None  # None: derived from the content and the newest version
    message: str = ""
    base: Annotated[int, msgspec.Meta(ge=0)] | None = None  # refuse unless this is the newest
    strategy: str | None = None  # this version's rollout strategy instead of the policy's
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=120)] = 30.0


class ActRequest(msgspec.Struct, frozen=True, kw_only=True):
    reason: str = ""


class RollbackRequest(msgspec.Struct, frozen=True, kw_only=True):
    to: VersionNumber | None = None  # None: the last known good
    reason: str = ""
    strategy: str | None = None  # all-at-once or batches:N; None: the policy's


class HistoryQuery(msgspec.Struct, frozen=True, kw_only=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_HISTORY)] = 50
    before: VersionNumber | None = None  # older than this version (the reply's next_before)


LABELS = (
    "the labels of a node, as `confbus show --for` takes them (dc=eu1,tier=web): the bytes such "
    "a node runs (docs/design.md §2.6)"
)


class ForQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Whose bytes of a version with overlays: a node's (by its labels now), or any labels'.
    Neither: the version's bytes as stored."""

    for_: Annotated[str, msgspec.Meta(description=LABELS)] | None = msgspec.field(
        default=None, name="for"
    )
    node: NodeId | None = None


class DiffQuery(ForQuery, frozen=True, kw_only=True):
    a: VersionRef
    b: VersionRef


class NodeVariant(msgspec.Struct, frozen=True, kw_only=True):
    """Which variant a node's bytes are: the overlays that applied, "+"-joined (``base``: none);
    None when its sha256 is none of its version's variants known now, or it applied nothing."""

    node: str
    version: int | None
    sha256: str | None
    variant: str | None


class FleetVariants(msgspec.Struct, frozen=True, kw_only=True):
    nodes: list[NodeVariant]


class EventsQuery(msgspec.Struct, frozen=True, kw_only=True):
    """The filters of ``confbus replay``, and a few of the timeline's own."""

    filter: str = subjects.EVENTS_ALL  # a subject, a namespace, or NAMESPACE.TYPE-PATTERN
    since: str | None = None  # 30s, 10m, 2h, 7d, or an ISO-8601 time
    from_seq: Annotated[int, msgspec.Meta(ge=1)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_EVENTS)] = 100
    txid: str | None = None  # only this transaction's events
    rollout: str | None = None  # only this rollout's
    rollback: str | None = None  # only this rollback's
    version: Annotated[int, msgspec.Meta(ge=1)] | None = None  # only events naming it


class StreamQuery(msgspec.Struct, frozen=True, kw_only=True):
    filter: str = subjects.EVENTS_ALL
    from_seq: Annotated[int, msgspec.Meta(ge=1)] | None = None


class EventItem(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    subject: str
    time: datetime | None
    type: str
    event: AnyEvent | None  # None: a type this console does not know (see raw)
    raw: str = ""


class EventsReply(msgspec.Struct, frozen=True, kw_only=True):
    events: list[EventItem]  # newest first


class RolloutNodes(msgspec.Struct, frozen=True, kw_only=True):
    """Each node's vote in the rollout's switches, and which nodes applied its version."""

    votes: dict[str, VoteRecord]
    applied: list[str]
    seq: int = 0  # the audit log's events up to this sequence are in it


MOMENT = (
    "a stream sequence (1234), a duration ago (30s, 10m, 2h, 7d) or an ISO-8601 time (UTC unless "
    "it has an offset)"
)
Moment = Annotated[str, msgspec.Meta(min_length=1, description=MOMENT)]


class AtQuery(msgspec.Struct, frozen=True, kw_only=True):
    """``confbus status NS --at``: the moment."""

    at: Moment


class WhyQuery(msgspec.Struct, frozen=True, kw_only=True):
    at: Moment | None = None  # None: now


class FleetDiffQuery(msgspec.Struct, frozen=True, kw_only=True):
    """``confbus diff-fleet NS --from T1 --to T2``."""

    from_: Moment = msgspec.field(name="from")
    to: Moment | None = None  # None: now
