"""The console's one door to the bus: every read and act of its pages and its HTTP API.

It is a front end like the CLI, so it goes through the Python client (on the service's own
connection, which reconnects for as long as the service lives) and the APIs the other services
declare; nothing here knows how a service keeps its state. Two rules live here so that no page
and no API answer can miss them: a secret namespace's content is never read out, and every act
names the console user who made it (the author in the store, the actor in the audit log).
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import anyio
import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import StreamInfo

from confbus.client import (
    Client,
    FleetAt,
    FleetDiff,
    StreamedEvent,
    VersionVariants,
    Why,
    check_change_id,
    check_namespace,
)
from confbus.console.metrics import ConsoleMetrics
from confbus.runtime.bus import Bus
from confbus.runtime.errors import Conflict, InvalidInput, NotFound, Unavailable
from confbus.runtime.identity import Forbidden
from confbus.runtime.since import Moment
from confbus.schemas import subjects
from confbus.schemas.api import dist as dist_api
from confbus.schemas.api import rollback as rollback_api
from confbus.schemas.api import store as store_api
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.events import NodeApplied, TxnAborted, TxnCommitted, VoteRecord
from confbus.schemas.policy import Policy
from confbus.schemas.selectors import SelectorError, parse_selector
from confbus.schemas.streams import CFG_EVENTS
from confbus.schemas.variants import Variant
from confbus.schemas.versions import VersionInfo

if TYPE_CHECKING:
    # The console's request types name this module's views; the backend needs only their shape.
    from confbus.console.apitypes import PublishRequest

HISTORY_PAGE = 1000  # the store's largest page
DRAFT_SCAN = 100  # the newest versions the overview looks through for drafts
ROLLOUTS_KEPT = 64  # rollouts whose progress is kept for the next refresh


class NamespaceSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One namespace at a glance: the overview's row."""

    namespace: str
    production_version: int | None = None
    rollout: dist_api.RolloutInfo | None = None
    nodes: int = 0
    live: int = 0
    away: int = 0
    gone: int = 0
    attention: int = 0  # nodes whose status is not ok (drift, failing, in doubt, …)
    waiting: list[VersionInfo] = []  # drafts waiting for approval, newest first
    error: str = ""  # what could not be read (the distributor down, say)


class RolloutView(msgspec.Struct, frozen=True, kw_only=True):
    """A rollout with what its nodes did: each node's last vote and whether it applied."""

    rollout: dist_api.RolloutInfo | None
    fleet: dist_api.StatusReply | None
    votes: dict[str, VoteRecord] = {}
    applied: list[str] = []
    seq: int = 0  # the audit log's events up to this sequence are in it


@dataclass
class _RolloutProgress:
    """What a rollout's nodes did, folded from the audit log up to ``seq``: a page's next
    refresh reads only the events after it."""

    seq: int = 0
    votes: dict[str, list[VoteRecord]] = field(default_factory=dict)  # by txid, stream order
    applied: set[str] = field(default_factory=set)
    lock: anyio.Lock = field(default_factory=anyio.Lock)


class _BusClient(Client):
    """The client on a connection it does not own: the service's, which reconnects for as
    long as the service lives (a CLI's gives up after a few tries)."""

    def __init__(self, bus: Bus) -> None:
        super().__init__(bus.nc.connected_url.geturl() if bus.nc.connected_url else "")
        self._bus = bus

    async def close(self) -> None:
        """Nothing to close: the service closes its connection itself."""


class Backend:
    def __init__(self, bus: Bus, metrics: ConsoleMetrics | None = None) -> None:
        self.client = _BusClient(bus)
        self.metrics = metrics
        self._progress: collections.OrderedDict[tuple[str, str], _RolloutProgress] = (
            collections.OrderedDict()
        )

    # -- namespaces and versions ----------------------------------------------------------------

    async def namespaces(self) -> list[str]:
        return await self.client.namespaces()

    async def known(self, namespace: str) -> str:
        """``namespace`` if it has versions or a policy; ``NotFound`` otherwise."""
        if namespace not in await self.namespaces():
            raise NotFound(f"no namespace {namespace!r}", where="namespace")
        return namespace

    async def overview(self) -> list[NamespaceSummary]:
        names = await self.namespaces()
        rows: dict[str, NamespaceSummary] = {}

        async def one(ns: str) -> None:
            rows[ns] = await self._summary(ns)

        async with anyio.create_task_group() as tg:
            for ns in names:
                tg.start_soon(one, ns)
        return [rows[ns] for ns in names]

    async def _summary(self, ns: str) -> NamespaceSummary:
        try:
            status = await self.client.fleet_status(ns)
            recent = await self.client.call(
                store_api.HISTORY, store_api.HistoryRequest(namespace=ns, limit=DRAFT_SCAN)
            )
        except Unavailable as exc:
            return NamespaceSummary(namespace=ns, error=f"fleet unknown: {exc.message}")
        count = collections.Counter(n.liveness for n in status.nodes)
        return NamespaceSummary(
            namespace=ns,
            production_version=status.production_version,
            rollout=status.rollout,
            nodes=len(status.nodes),
            live=count["live"],
            away=count["away"],
            gone=count["gone"],
            attention=sum(1 for n in status.nodes if n.status != "ok"),
            waiting=[v for v in recent.versions if v.status == "draft"],
        )

    async def history(
        self, namespace: str, *, limit: int = 50, before: int | None = None
    ) -> store_api.HistoryReply:
        """Up to ``limit`` versions, newest first, below ``before``; ``next_before`` pages on."""
        await self.known(namespace)
        versions: list[VersionInfo] = []
        next_before = before
        while len(versions) < limit:
            page = await self.client.call(
                store_api.HISTORY,
                store_api.HistoryRequest(
                    namespace=namespace,
                    before=next_before,
                    limit=min(limit - len(versions), HISTORY_PAGE),
                ),
            )
            versions.extend(page.versions)
            next_before = page.next_before
            if next_before is None or not page.versions:
                break
        return store_api.HistoryReply(versions=versions, next_before=next_before)

    async def version(self, namespace: str, ref: str) -> VersionInfo:
        await self.known(namespace)
        return (await self.client.get(namespace, ref, content=False)).info

    async def content(self, namespace: str, ref: str) -> store_api.VersionReply:
        """A version with its bytes; ``Forbidden`` for a secret namespace."""
        await self._not_secret(namespace)
        return await self.client.get(namespace, ref, content=True)

    async def diff(
        self, namespace: str, a: str, b: str, labels: dict[str, str] | None = None
    ) -> store_api.DiffReply:
        """``labels``: of the bytes a node with them runs of each version (§2.6)."""
        await self._not_secret(namespace)
        return await self.client.diff(namespace, a, b, labels=labels)

    # -- variants (docs/design.md §2.6) ------------------------------------------------------------

    async def labels_for(
        self, namespace: str, labels: str | None, node: str | None
    ) -> dict[str, str] | None:
        """The labels a page or call asks for: given (``dc=eu1,tier=web``), or a member's now;
        None when neither is asked."""
        if node is not None:
            members = await self.client.members(namespace)
            if node not in members:
                raise NotFound(f"no member {node!r} of {namespace!r}", where="node")
            return members[node]
        if labels is None:
            return None
        try:
            return parse_selector(labels)
        except SelectorError as exc:
            raise InvalidInput(str(exc), where="for") from None

    async def version_variants(self, namespace: str, ref: str) -> VersionVariants:
        """Its overlays and their nodes now (selectors and node names: never content)."""
        await self.known(namespace)
        return await self.client.version_variants(namespace, ref)

    async def rendered(
        self, namespace: str, ref: str, labels: dict[str, str]
    ) -> tuple[VersionInfo, Variant]:
        """The bytes a node with ``labels`` runs; ``Forbidden`` for a secret namespace."""
        await self._not_secret(namespace)
        return await self.client.render(namespace, ref, labels)

    async def fleet_variants(self, fleet: dist_api.StatusReply) -> dict[str, str | None]:
        """Which variant each node of ``fleet`` runs, told by its sha256 (and its labels)."""
        return await self.client.fleet_variants(fleet)

    async def secret(self, namespace: str) -> bool:
        return (await self.policy(namespace)).secret

    async def _not_secret(self, namespace: str) -> None:
        if await self.secret(namespace):
            raise Forbidden(
                f"namespace {namespace!r} is secret: the console never shows its content",
                where="namespace",
            )

    # -- acts of a user ---------------------------------------------------------------------------

    async def publish(self, namespace: str, request: PublishRequest, *, author: str) -> VersionInfo:
        """As ``confbus publish``: the same change ids, answers and reasons (``ChangeRejected``)."""
        return await self.client.publish(
            namespace,
            request.content.encode(),
            format=request.format,
            change_id=request.change_id,
            author=author,
            message=request.message,
            base=request.base,
            strategy=request.strategy,
            timeout=request.timeout_s,
        )

    async def dry_run(
        self, namespace: str, request: PublishRequest, *, author: str
    ) -> store_api.DryRunReply:
        """As ``confbus publish --dry-run``: validated and diffed, nothing stored (a secret
        namespace's diff is withheld by the store)."""
        check_namespace(namespace)
        content = request.content.encode()
        change_id = request.change_id
        if change_id is None:
            sha = hashlib.sha256(content).hexdigest()
            change_id = await self.client.default_change_id(namespace, sha, request.base)
        change = ChangeProposed(
            namespace=namespace,
            change_id=check_change_id(change_id),
            content=content,
            format=request.format,
            author=author,
            message=request.message,
            base=request.base,
        )
        return await self.client.dry_run(change)

    async def approve(self, namespace: str, version: int, user: str) -> VersionInfo:
        await self.known(namespace)
        return await self.client.approve(namespace, version, user)

    async def reject(self, namespace: str, version: int, user: str, reason: str) -> VersionInfo:
        await self.known(namespace)
        return await self.client.reject(namespace, version, user, reason)

    async def policy(self, namespace: str) -> Policy:
        await self.known(namespace)
        return await self.client.policy(namespace)

    async def set_policy(self, policy: Policy, user: str) -> Policy:
        return await self.client.set_policy(policy, actor=user)

    async def rollout_control(
        self, op: str, namespace: str, user: str, reason: str
    ) -> dist_api.RolloutInfo:
        await self.known(namespace)
        return await self.client.rollout_control(op, namespace, reason=reason, actor=user)

    async def rollback(
        self,
        namespace: str,
        user: str,
        *,
        to: int | None = None,
        reason: str = "",
        strategy: str | None = None,
    ) -> rollback_api.RollbackReply:
        await self.known(namespace)
        reply = await self.client.rollback(
            namespace, to=to, reason=reason, strategy=strategy, actor=user
        )
        if reply.state == "refused":
            raise Conflict(f"rollback refused: {reply.reason}", where="to" if to else "rollback")
        return reply

    # -- rollouts and the fleet -------------------------------------------------------------------

    async def rollout(self, namespace: str) -> dist_api.RolloutInfo | None:
        await self.known(namespace)
        return await self.client.rollout_info(namespace)

    async def fleet(self, namespace: str) -> dist_api.StatusReply:
        await self.known(namespace)
        return await self.client.fleet_status(namespace)

    async def rollout_view(self, namespace: str) -> RolloutView:
        """The namespace's rollout, its fleet, and each node's vote and apply: from the events
        since the rollout began, read once; each later view reads only the events after the
        last one it read (a live page refreshes at every event)."""
        fleet = await self.fleet(namespace)
        rollout = fleet.rollout
        if rollout is None or rollout.started_at is None:
            return RolloutView(rollout=rollout, fleet=fleet)
        progress = self._rollout_progress(namespace, rollout.rollout_id)
        async with progress.lock:
            await self._read_progress(namespace, rollout.version, rollout.started_at, progress)
            txids = {t for w in rollout.waves for t in (*w.txids, w.txid) if t}
            votes: dict[str, VoteRecord] = {}
            for txid, records in progress.votes.items():  # in stream order: the last one wins
                if txid in txids:
                    votes.update((v.node, v) for v in records)
            applied = progress.applied | {
                n.node for n in fleet.nodes if n.applied_version == rollout.version and n.sha256
            }
            seq = progress.seq
        return RolloutView(
            rollout=rollout, fleet=fleet, votes=votes, applied=sorted(applied), seq=seq
        )

    def _rollout_progress(self, namespace: str, rollout_id: str) -> _RolloutProgress:
        key = (namespace, rollout_id)
        progress = self._progress.get(key)
        if progress is None:
            progress = self._progress[key] = _RolloutProgress()
            while len(self._progress) > ROLLOUTS_KEPT:
                self._progress.popitem(last=False)
        self._progress.move_to_end(key)
        return progress

    async def _read_progress(
        self, namespace: str, version: int, started_at: datetime, progress: _RolloutProgress
    ) -> None:
        """Fold the namespace's events after ``progress.seq`` (the first time: since the
        rollout started) into ``progress``."""
        last = await self._last_seq()
        if progress.seq >= last:
            return
        from_seq = progress.seq + 1 if progress.seq else None
        since = None if progress.seq else started_at - timedelta(seconds=1)
        read = 0
        events = self.client.events(subjects.events_of(namespace), since=since, from_seq=from_seq)
        async for item in events:
            read += 1
            ev = item.event
            # Only switches to this version: a wave's (the rollout's txids say which, and a wave
            # may start after its votes were read) or a catch-up's.
            if isinstance(ev, TxnCommitted | TxnAborted) and ev.version == version:
                progress.votes[ev.txid] = list(ev.votes)
            elif isinstance(ev, NodeApplied) and ev.version == version:
                progress.applied.add(ev.node)
            progress.seq = max(progress.seq, item.seq)
        progress.seq = max(progress.seq, last)
        if self.metrics is not None:
            self.metrics.rollout_events_read.inc(read)

    # -- the past (docs/design.md §8.10) ---------------------------------------------------------

    async def status_at(self, namespace: str, at: Moment) -> FleetAt:
        await self.known(namespace)
        return await self.client.status_at(namespace, at)

    async def why(self, namespace: str, node: str, at: Moment | None = None) -> Why:
        await self.known(namespace)
        return await self.client.why(namespace, node, at)

    async def diff_fleet(self, namespace: str, before: Moment, after: Moment) -> FleetDiff:
        await self.known(namespace)
        return await self.client.diff_fleet(namespace, before, after)

    async def moments(self) -> tuple[int, int]:
        """The audit log's first and last sequence: the span a slider over the past covers."""
        info = await self._stream_info()
        return max(1, int(info.state.first_seq)), int(info.state.last_seq)

    # -- the audit log ----------------------------------------------------------------------------

    async def recent_events(
        self,
        subject_filter: str,
        *,
        limit: int,
        since: datetime | timedelta | None = None,
        from_seq: int | None = None,
        keep: Callable[[StreamedEvent], bool] | None = None,
    ) -> list[StreamedEvent]:
        """The last ``limit`` events that match (newest first). From ``since``/``from_seq`` if
        given; otherwise from the end backwards, in growing windows, so a page of a long log
        does not read all of it."""
        found: collections.deque[StreamedEvent] = collections.deque(maxlen=limit)
        if since is not None or from_seq is not None:
            async for item in self.client.events(subject_filter, since=since, from_seq=from_seq):
                if keep is None or keep(item):
                    found.append(item)
            return list(reversed(found))
        last = await self._last_seq()
        window = max(4 * limit, 256)
        while True:
            start = max(1, last - window + 1)
            found.clear()
            async for item in self.client.events(subject_filter, from_seq=start):
                if item.seq <= last and (keep is None or keep(item)):
                    found.append(item)
            if len(found) >= limit or start == 1:
                return list(reversed(found))
            window *= 8

    def follow(
        self,
        subject_filter: str,
        *,
        from_seq: int | None = None,
        on_subscribed: Callable[[], object] | None = None,
    ) -> AsyncIterator[StreamedEvent]:
        """New events as they are stored (from ``from_seq`` if given): for Server-Sent Events.
        ``on_subscribed`` is called once the consumer exists."""
        return self.client.events(
            subject_filter, from_seq=from_seq, follow=True, on_subscribed=on_subscribed
        )

    async def _last_seq(self) -> int:
        return int((await self._stream_info()).state.last_seq)

    async def _stream_info(self) -> StreamInfo:
        try:
            return await self.client.bus.js.stream_info(CFG_EVENTS.name)
        except nats.js.errors.NotFoundError as exc:
            raise Unavailable(f"no {CFG_EVENTS.name} stream: is confbus provisioned?") from exc
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise Unavailable(f"JetStream is not answering: {exc!r}") from exc
