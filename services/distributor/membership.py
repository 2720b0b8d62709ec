"""Who is alive, from agent heartbeats (``cfg.node.<node>.heartbeat``), shared in ``CFG_STATE``.

A node is *live* while its heartbeats keep coming (within ``AWAY_AFTER`` = 3 of its own
intervals), *away* after that — or at once when its agent says it is stopping (a last
heartbeat with ``leaving``) — and *gone* after ``GONE_AFTER`` = 10 intervals without one. Only
live nodes are rollout targets; away ones catch up when they are back. Every replica hears
every heartbeat and keeps the view in memory (liveness is judged on its monotonic clock); the
replica holding the ``lease.distributor._members`` lease also writes ``node.<node>`` records
(labels, namespaces and their applied state, last heartbeat, liveness) and emits
``node.status`` on transitions.

No flood: a node's transitions are announced at most once per ``min_event_gap_s`` (the
latest state wins when the gap is over), and nobody's liveness is judged while *we* hear no
heartbeat at all (the distributor, not the fleet, is then the one cut off). A time when we
heard no one at all — our connection down, a broker restarting — does not count against the
nodes afterwards either: their last heartbeats are moved on by it when hearing resumes, and
the rollout driver waits for the first heartbeat before it judges anyone (``warm``). A node gone for
``forget_after_s`` is forgotten: its records are deleted, so an agent that never returns pins
nothing. An operator may forget a node that is not live sooner (``confbus forget``, op
``dist.forget``). Either way ``node.forgotten`` is said in each namespace it followed, and every
replica drops it from its view on that event.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Literal

import anyio

from confbus.distributor.metrics import DistributorMetrics
from confbus.distributor.strategy import matches
from confbus.distributor.targets import forget_target
from confbus.runtime.bus import Bus
from confbus.runtime.errors import ConfbusError, Conflict, NotFound
from confbus.runtime.events import emit
from confbus.runtime.kv import Entry, StateKV
from confbus.runtime.leases import Leases
from confbus.schemas.api.dist import Liveness
from confbus.schemas.events import NodeDuplicate, NodeForgotten, NodeStatusChanged
from confbus.schemas.node import Heartbeat, NamespaceState, claim
from confbus.schemas.state import NODES, NodeRecord, decode_node, node_key

log = logging.getLogger("confbus.distributor")

AWAY_AFTER = 3.0  # heartbeat intervals missed
GONE_AFTER = 10.0
PERSIST_EVERY_S = 30.0  # refresh last_heartbeat and the applied state in the record this often
DEAF_FLOOR_S = 0.05  # the shortest heartbeat interval taken into account by ``deaf``
MEMBERS_LEASE = "_members"  # lease.distributor._members: the replica writing node records


DUPLICATE_SHOWN_S = 600.0  # status names a refused second agent this long


NodeStatus = Literal["live", "away", "gone", "failing"]


async def announce_status(
    bus: Bus,
    namespace: str,
    node: str,
    status: NodeStatus,
    *,
    actor: str,
    reason: str,
    msg_id: str | None = None,
) -> None:
    """Say ``node.status`` in ``namespace``, best effort: one that cannot be said is logged, not
    raised (membership and catch-up go on; the node's next change is said again)."""
    try:
        event = NodeStatusChanged(
            namespace=namespace, actor=actor, reason=reason, node=node, status=status
        )
        await emit(bus, event, msg_id=msg_id)
    except ConfbusError as exc:
        log.warning("could not announce node status", extra={"error": str(exc)})


@dataclass(frozen=True)
class Duplicate:
    instance: str  # the refused one
    started_at: datetime | None
    live_instance: str  # the one holding the node
    at: datetime  # when it was heard
    seen: float  # monotonic, ditto

    def describe(self, node: str) -> str:
        started = self.started_at.isoformat(timespec="seconds") if self.started_at else "?"
        return (
            f"a second agent with node id {node} (instance {self.instance}, started {started}) "
            f"was refused at {self.at.isoformat(timespec='seconds')}: {node} is live as "
            f"instance {self.live_instance}"
        )


@dataclass
class Member:
    node: str
    labels: dict[str, str]
    states: dict[str, NamespaceState]
    interval_s: float
    seen: float  # monotonic time of the last heartbeat (or of our start, for a loaded one)
    last_heartbeat: datetime | None
    started_at: datetime | None = None
    heard: bool = False  # a heartbeat reached this process (loaded records do not count)
    ready: bool | None = None  # ready to vote, as its last heartbeat said (None: not said)
    unready_at: float = -1.0  # monotonic time of the last heartbeat that said not ready
    left: bool = False  # its last heartbeat said it was stopping
    instance: str = ""
    # The last second agent heard with this node id while this one held it (refused by the
    # agents themselves, by the same rule: ``confbus.schemas.node.keeps_node``); for status.
    duplicate: Duplicate | None = None
    duplicate_announced: str = ""  # the instance of the last one announced (node.duplicate)
    # What CFG_STATE holds, as far as we know, and what we last announced.
    recorded: NodeRecord | None = None
    recorded_rev: int = 0
    recorded_at: float = 0.0
    announced: str | None = None
    announced_at: float = 0.0
    since: datetime | None = None

    def liveness(self, now: float) -> Liveness:
        missed = (now - self.seen) / max(self.interval_s, 0.05)
        if missed <= AWAY_AFTER and not self.left:
            return "live"
        return "away" if missed <= GONE_AFTER else "gone"

    def duplicate_report(self, now: float) -> str:
        """A second agent with this node id refused lately, in words (empty: none)."""
        d = self.duplicate
        if d is None or now - d.seen > DUPLICATE_SHOWN_S:
            return ""
        return d.describe(self.node)

    def why(self, now: float) -> str:
        """Why it is not live, in words (empty when it is)."""
        if self.liveness(now) == "live":
            return ""
        last = self.last_heartbeat.isoformat(timespec="seconds") if self.last_heartbeat else "never"
        if self.left:
            return f"stopped (node.left) at {last}; catches up when it is back"
        missed = int((now - self.seen) / max(self.interval_s, 0.05))
        return f"missed {missed} heartbeats (last {last}); catches up when it is back"

    def state(self, namespace: str) -> NamespaceState | None:
        return self.states.get(namespace)

    def material(self, liveness: str) -> object:
        """``_material`` of ``record(liveness, …)``, without building the record: the sweep
        asks it of every member every second, and nearly always nothing changed."""
        return (self.labels, list(self.states), liveness, self.started_at)

    def record(self, liveness: str, since: datetime | None) -> NodeRecord:
        return NodeRecord(
            node=self.node,
            labels=self.labels,
            namespaces=list(self.states.values()),
            interval_s=self.interval_s,
            last_heartbeat=self.last_heartbeat,
            started_at=self.started_at,
            liveness=liveness,
            since=since,
        )


def _material(rec: NodeRecord | None) -> object:
    """What, when it changes, is worth a write: who the node is and what it follows — not the
    heartbeat time, nor the per-namespace state (applied versions, epochs, prepared txids),
    which changes with every switch and which the heartbeats carry to whoever needs it live;
    the record gets it with the next write (``PERSIST_EVERY_S`` at the latest)."""
    if rec is None:
        return None
    followed = [s.namespace for s in rec.namespaces]
    return (rec.labels, followed, rec.liveness, rec.started_at)


@dataclass
class Membership:
    heartbeat_interval_s: float = 2.0
    members: dict[str, Member] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    last_any: float = 0.0  # monotonic time of the last heartbeat from anyone
    loaded: bool = False  # the node records of CFG_STATE were read (``load``)
    # Set by the next heartbeat; made only when someone waits for it (``_next_heard``).
    _heard: anyio.Event | None = None

    # -- reading -------------------------------------------------------------------------------

    async def warm(self) -> None:
        """Just after start we have heard from nobody: wait one and a half heartbeat
        intervals before judging who is live, or a restart would roll out to no one — less
        once every node the stored records call live has spoken (a replica taking over
        waits one heartbeat, not the whole window). The same when we have heard no one for a
        while (``deaf``): wait, as long at most, for the next heartbeat — the fleet speaks up
        at once after a broker restart."""
        remaining = self.started + 1.5 * self.heartbeat_interval_s - time.monotonic()
        if remaining > 0:
            with anyio.move_on_after(remaining):
                while not self._recorded_live_heard():
                    await self._next_heard().wait()
        elif self.deaf():
            with anyio.move_on_after(1.5 * self.heartbeat_interval_s):
                await self._next_heard().wait()

    async def first_heard(self, namespace: str, within_s: float) -> None:
        """Wait, at most ``within_s``, until some node of ``namespace`` is known."""
        with anyio.move_on_after(within_s):
            while not self.known_nodes(namespace):
                await self._next_heard().wait()

    def _next_heard(self) -> anyio.Event:
        """Set by the next heartbeat. Made by a waiter, not by each heartbeat: hundreds come
        a second, and nearly none is waited for."""
        if self._heard is None:
            self._heard = anyio.Event()
        return self._heard

    def _recorded_live_heard(self) -> bool:
        """The records were read and every node they call live has been heard since."""
        live = [
            m
            for m in self.members.values()
            if m.recorded is not None and m.recorded.liveness == "live"
        ]
        return self.loaded and bool(live) and all(m.heard for m in live)

    def deaf(self) -> bool:
        """We have heard no one for longer than two of the fleet's shortest intervals."""
        if not self.last_any:
            return False
        silent = time.monotonic() - self.last_any
        if silent <= 2 * DEAF_FLOOR_S:
            # Never deaf this soon, whatever the intervals: asked on every heartbeat (hundreds
            # a second), it must not walk every member each time.
            return False
        heard = [m.interval_s for m in self.members.values() if m.heard]
        return bool(heard) and silent > 2 * max(min(heard), DEAF_FLOOR_S)

    def get(self, node: str) -> Member | None:
        return self.members.get(node)

    def forgotten(self, node: str) -> None:
        """Another replica forgot ``node`` (``node.forgotten``): drop it, unless it has
        spoken since (a node that came back is a member again)."""
        member = self.members.get(node)
        if member is not None and member.liveness(time.monotonic()) != "live":
            del self.members[node]

    def liveness(self, node: str) -> Liveness | None:
        m = self.members.get(node)
        return None if m is None else m.liveness(time.monotonic())

    def is_live(self, node: str) -> bool:
        m = self.members.get(node)
        return m is not None and m.heard and m.liveness(time.monotonic()) == "live"

    def live_nodes(self, namespace: str, selector: dict[str, str] | None = None) -> list[str]:
        now = time.monotonic()
        return sorted(
            node
            for node, m in self.members.items()
            if m.heard
            and m.liveness(now) == "live"
            and namespace in m.states
            and matches(m.labels, selector or {})
        )

    def away_nodes(self, namespace: str, selector: dict[str, str] | None = None) -> list[str]:
        """The namespace's known nodes (matching ``selector``) that are not live — away, or
        away so long they are gone, until forgotten: they catch up when they are back, and a
        rollout says so."""
        live = set(self.live_nodes(namespace, selector))
        return sorted(
            node
            for node, m in self.members.items()
            if namespace in m.states and matches(m.labels, selector or {}) and node not in live
        )

    def known_nodes(self, namespace: str) -> list[str]:
        return sorted(n for n, m in self.members.items() if namespace in m.states)

    def namespaces(self) -> set[str]:
        return {ns for m in self.members.values() for ns in m.states}

    def not_ready_since(self, nodes: list[str], since: float) -> list[str]:
        """Those of ``nodes`` whose heartbeat said, at some point since ``since`` (monotonic),
        that they were not ready to vote (an agent whose reading of the stream was down, as
        after a broker restart): a missed vote of theirs says nothing about the config. A node
        that said it was ready and then went silent is not among them: it failed mid-vote."""
        out = []
        for node in nodes:
            m = self.members.get(node)
            if m is None or m.ready is False or m.unready_at >= since:
                out.append(node)
        return out

    def applied(self, namespace: str, node: str) -> int | None:
        m = self.members.get(node)
        st = m.state(namespace) if m else None
        return st.applied_version if st else None

    # -- writing -------------------------------------------------------------------------------

    def observe(self, hb: Heartbeat) -> Member:
        now = time.monotonic()
        if self.deaf():
            self._discount(now - self.last_any)
        self.last_any = now
        heard, self._heard = self._heard, None
        if heard is not None:
            heard.set()
        wall = datetime.now(UTC)
        states = {s.namespace: s for s in hb.namespaces}
        m = self.members.get(hb.node)
        if m is None:
            m = Member(
                node=hb.node,
                labels=dict(hb.labels),
                states=states,
                interval_s=hb.interval_s,
                seen=now,
                last_heartbeat=wall,
                started_at=hb.started_at,
                heard=True,
                ready=hb.ready,
                unready_at=now if hb.ready is False else -1.0,
                left=hb.leaving,
                instance=hb.instance,
            )
            self.members[hb.node] = m
            return m
        if hb.instance != m.instance and hb.instance and m.instance:
            if m.liveness(now) == "live" and claim(m.started_at, m.instance) <= claim(
                hb.started_at, hb.instance
            ):
                # A second agent while this one holds the node: not a member's heartbeat.
                if not hb.leaving:
                    m.duplicate = Duplicate(hb.instance, hb.started_at, m.instance, wall, now)
                return m
            if m.liveness(now) == "live":  # the one heard first is the second agent
                m.duplicate = Duplicate(m.instance, m.started_at, hb.instance, wall, now)
        m.labels = dict(hb.labels)
        m.left = hb.leaving
        m.instance = hb.instance
        m.states = states
        m.interval_s = hb.interval_s
        m.seen = now
        m.last_heartbeat = wall
        m.started_at = hb.started_at
        m.heard = True
        m.ready = hb.ready
        if hb.ready is False:
            m.unready_at = now
        return m

    def _discount(self, deaf_s: float) -> None:
        """We heard no one for ``deaf_s``: the nodes that were live then are judged as if
        that time had not passed (one that died meanwhile turns away a little later)."""
        for m in self.members.values():
            if (self.last_any - m.seen) / max(m.interval_s, 0.05) <= AWAY_AFTER:
                m.seen = min(m.seen + deaf_s, time.monotonic())

    def load(self, records: list[tuple[NodeRecord, int]]) -> None:
        """Members known from CFG_STATE (a restarted replica), until they heartbeat again.

        A node recorded live is taken as just seen: it has 3 intervals to be heard before it
        turns away, so a restart causes no false transitions.
        """
        now = time.monotonic()
        wall = datetime.now(UTC)
        self.loaded = True
        for rec, rev in records:
            if rec.node in self.members:
                continue
            if rec.liveness == "live" or rec.last_heartbeat is None:
                seen = now
            else:
                age = (wall - rec.last_heartbeat).total_seconds()
                seen = now - max(0.0, age)
            self.members[rec.node] = Member(
                node=rec.node,
                labels=dict(rec.labels),
                states={s.namespace: s for s in rec.namespaces},
                interval_s=rec.interval_s,
                seen=seen,
                last_heartbeat=rec.last_heartbeat,
                started_at=rec.started_at,
                recorded=rec,
                recorded_rev=rev,
                recorded_at=now,
                announced=rec.liveness,
                announced_at=now,
                since=rec.since,
            )


@dataclass
class MembershipKeeper:
    """Writes ``node.<node>`` records and announces transitions (one replica at a time)."""

    bus: Bus
    kv: StateKV
    membership: Membership
    leases: Leases
    metrics: DistributorMetrics
    instance: str
    min_event_gap_s: float = 5.0
    forget_after_s: float = 3600.0

    async def load(self) -> None:
        try:
            keys = await self.kv.keys(NODES)
        except ConfbusError as exc:  # heard again from their heartbeats soon enough
            log.warning("cannot load the node records", extra={"error": str(exc)})
            return
        records = []
        for key in keys:
            entry = await self.kv.read(key, decode_node)
            if entry.value is not None:
                records.append((entry.value, entry.revision))
        self.membership.load(records)

    async def run(self) -> None:
        while True:
            tick = max(0.1, min(1.0, self.membership.heartbeat_interval_s / 2))
            await anyio.sleep(tick)
            try:
                await self.sweep()
            except ConfbusError as exc:
                log.warning("membership sweep failed", extra={"error": str(exc)})
            except Exception:
                log.exception("membership sweep failed")

    async def sweep(self) -> None:
        now = time.monotonic()
        m = self.membership
        counts: dict[str, int] = {"live": 0, "away": 0, "gone": 0}
        for member in m.members.values():
            counts[member.liveness(now)] += 1
        for name, value in counts.items():
            self.metrics.nodes.labels(name).set(value)
        if not self.leases.held(MEMBERS_LEASE):
            return
        # If nobody at all is heard, we are the ones cut off: judge no one.
        quiet = now - m.last_any > AWAY_AFTER * max(m.heartbeat_interval_s, 0.05)
        judging = not quiet and now - m.started > AWAY_AFTER * m.heartbeat_interval_s
        for member in list(m.members.values()):
            liveness = member.liveness(now) if judging else (member.announced or "live")
            if not member.heard and liveness == "live":
                liveness = member.announced or "live"  # loaded: not heard yet, not judged yet
            await self._settle(member, liveness, now)
            d = member.duplicate
            if d is not None and member.duplicate_announced != d.instance:
                await self._announce_duplicate(member, d)
            if (
                judging
                and liveness == "gone"
                and now - member.seen > self.forget_after_s
                and self.forget_after_s > 0
            ):
                await self._forget(member)

    async def _settle(self, member: Member, liveness: str, now: float) -> None:
        transition = member.announced != liveness
        gap_open = now - member.announced_at >= self.min_event_gap_s
        if transition and member.announced is not None and not gap_open:
            transition = False  # coalesced: announced when the gap is over
            liveness = member.recorded.liveness if member.recorded else liveness
        stale_time = now - member.recorded_at > PERSIST_EVERY_S
        if (
            not transition
            and not stale_time
            and member.material(liveness) == _material(member.recorded)
        ):
            return
        since = member.since
        if transition:
            since = datetime.now(UTC)
        rec = member.record(liveness, since)
        # Last writer wins for the record (one lease holder writes); the revision keeps
        # our view in step with what another replica may have written before us: tried first
        # against the revision of our own last write, read only if someone wrote since.
        ours = Entry(member.recorded, member.recorded_rev) if member.recorded else None
        try:
            entry, _ = await self.kv.mutate(
                node_key(member.node), decode_node, lambda _cur: rec, hint=ours
            )
            rev = entry.revision
        except ConfbusError as exc:
            log.info("could not write node record", extra={"node": member.node, "error": str(exc)})
            return
        member.recorded, member.recorded_rev, member.recorded_at = rec, rev, now
        member.since = since
        if transition:
            member.announced, member.announced_at = liveness, now
            await self._announce(member, liveness, rev)

    async def _announce_duplicate(self, member: Member, d: Duplicate) -> None:
        log.warning("second agent with one node id", extra={"node": member.node, **asdict(d)})
        for ns in sorted(member.states):
            try:
                await emit(
                    self.bus,
                    NodeDuplicate(
                        namespace=ns,
                        actor=self.instance,
                        node=member.node,
                        instance=d.instance,
                        live_instance=d.live_instance,
                        reason=d.describe(member.node),
                    ),
                    msg_id=f"node-duplicate:{member.node}:{ns}:{d.instance}",
                )
            except ConfbusError as exc:
                log.warning("node.duplicate not emitted", extra={"error": str(exc)})
                return
        member.duplicate_announced = d.instance

    async def _announce(self, member: Member, liveness: str, rev: int) -> None:
        status: NodeStatus = liveness  # type: ignore[assignment]
        log.info("node status", extra={"node": member.node, "status": status})
        for ns in sorted(member.states):
            await announce_status(
                self.bus,
                ns,
                member.node,
                status,
                actor=self.instance,
                reason=member.why(time.monotonic()) or "heartbeats are coming",
                msg_id=f"node-status:{member.node}:{ns}:{rev}",
            )

    async def _forget(self, member: Member) -> None:
        try:
            await self.forget(member.node, self.instance, f"gone for over {self.forget_after_s:g}s")
        except ConfbusError as exc:
            log.warning("could not forget node", extra={"node": member.node, "error": str(exc)})

    async def forget(self, node: str, actor: str, reason: str) -> list[str]:
        """Forget ``node``, which must not be live: delete its record and targets, say
        ``node.forgotten`` in each namespace it followed, drop it from this view. Returns
        those namespaces."""
        member = self.membership.get(node)
        if member is None:
            raise NotFound(f"no node {node!r} is known (nothing to forget)")
        liveness = member.liveness(time.monotonic())
        if liveness == "live":
            raise Conflict(
                f"node {node!r} is live (its agent heartbeats): stop its agent first, then "
                "forget it once it is no longer live"
            )
        log.info("forgetting node", extra={"node": node, "actor": actor, "reason": reason})
        namespaces = sorted(member.states)
        for ns in namespaces:
            await forget_target(self.kv, ns, node)
        await self.kv.delete(node_key(node))
        self.membership.members.pop(node, None)
        for ns in namespaces:
            event = NodeForgotten(namespace=ns, node=node, actor=actor, reason=reason)
            await emit(self.bus, event, msg_id=f"node-forgotten:{node}:{ns}:{member.recorded_rev}")
        return namespaces
