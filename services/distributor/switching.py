"""One wave's switch: recorded first, asked of the coordinator, its outcome recorded — and a
switch whose outcome never got recorded (a crash, a timeout) found out before anything else.

Per wave: record ``switching`` (with the participants and the time) *before* asking the
coordinator for one atomic switch (for the first wave, in the same write as the plan), then
record its outcome: committed → bake; aborted by a ``no`` → failed; answered by no node ready
to vote → retried whole after a backoff, for the policy's ``retry_unanswered_s``; aborted by
ready nodes missing the deadline → retried once without those nodes, unless that leaves out
more live targets than ``max_excluded`` allows → failed. Nodes away when their wave begins
are left out uncounted: no vote was to be had (one that falls silent during the vote counts:
it was live and did not vote). Who was not ready to vote during an attempt is what
membership heard from the heartbeats (``Membership.not_ready_since``).

A wave left in ``switching`` is resolved from the coordinator's head and decision records (a
committed one is recorded, not re-run; one still preparing is waited for; one that never
reached the coordinator is re-run once the request can no longer be in flight).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio

from confbus.distributor import record as R
from confbus.distributor import record_waves as W
from confbus.distributor.membership import Membership
from confbus.distributor.metrics import DistributorMetrics
from confbus.distributor.rollouts import Rollouts
from confbus.distributor.store import Store
from confbus.distributor.targets import Targets
from confbus.distributor.txnlog import abort_votes, find_decision, read_head
from confbus.runtime.bus import Bus
from confbus.runtime.concurrency import gather, settle
from confbus.runtime.errors import Permanent
from confbus.runtime.failpoints import failpoint
from confbus.schemas.api.dist import ACTIVE_STATES, TERMINAL_STATES, RolloutInfo
from confbus.schemas.api.txn import switch_deadline_s
from confbus.schemas.events import VoteRecord

log = logging.getLogger("confbus.distributor")

# A switch request can sit at the coordinator this long (its own deadline, plus a queue
# behind another transaction of the namespace) before we may conclude it never ran.
IN_FLIGHT_GRACE_S = 10.0


@dataclass
class WaveSwitch:
    rollouts: Rollouts
    bus: Bus
    store: Store
    membership: Membership
    targets: Targets
    metrics: DistributorMetrics
    instance: str
    busy: dict[str, set[str]] = field(default_factory=dict)  # nodes in a wave switch now
    # Nodes of a namespace with a catch-up switch in flight (set by the service).
    catching_up: Callable[[str], set[str]] = field(default=lambda _ns: set())

    async def switch(
        self,
        namespace: str,
        rec: RolloutInfo,
        i: int,
        *,
        plan: Callable[[RolloutInfo], RolloutInfo] | None = None,
    ) -> None:
        """Start wave ``i``'s attempt (recorded first), ask for the switch, record its outcome.

        ``plan``: the record is not planned yet — ``rec`` is as it will be once ``plan`` is
        applied, and the same write records the plan and this attempt."""
        retry_at = rec.waves[i].retry_at
        if retry_at is not None and (left := (retry_at - datetime.now(UTC)).total_seconds()) > 0:
            await self.rollouts.wait(namespace, left)  # backing off after an unanswered attempt
            return
        todo = R.wave_nodes(rec, i)
        already = [n for n in todo if (self.membership.applied(namespace, n) or 0) >= rec.version]
        down = [n for n in todo if n not in already and not self.membership.is_live(n)]
        nodes = [n for n in todo if n not in already and n not in down]
        timeout = rec.vote_timeout_s or 5.0
        # No new catch-up for these nodes from here on; let one in flight finish first, so
        # that the wave and a one-node switch do not trip over each other at the agent.
        self.busy[namespace] = set(nodes)
        with anyio.move_on_after(timeout + 5.0):
            while set(nodes) & self.catching_up(namespace):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        try:
            entry = await self.rollouts.transition(
                namespace,
                rec,
                lambda c: W.start_attempt(
                    plan(c) if plan else c,
                    i,
                    nodes=nodes,
                    already=already,
                    down=down,
                    actor=self.instance,
                ),
                planned=plan is None,
                publish=not nodes,  # else with the switch request, below
            )
        except BaseException:
            self.busy.pop(namespace, None)
            raise
        if not nodes:
            self.busy.pop(namespace, None)
            return  # nothing to switch in this wave: it bakes with the nodes switched so far
        assert entry.value is not None
        started = time.monotonic()
        # The attempt's events (``rollout.started`` before a first wave) and the switch
        # request at once, the events first: neither call yields before its message is on
        # the connection, so the server has the events before the request, and the stream
        # stores them long before anything the switch leads to. What was published is
        # dropped from the outbox by the write of the outcome; what was not, is published
        # by that write's flush.
        try:
            published, answered = await settle(
                self.rollouts.flush(namespace, entry, clear=False),
                self.store.switch(
                    namespace,
                    rec.version,
                    nodes,
                    timeout,
                    self.instance,
                    sha256=self.targets.known_sha256(namespace, rec.version),
                ),
            )
        finally:
            self.busy.pop(namespace, None)
        if isinstance(published, Exception):
            log.warning("rollout events not published yet", extra={"error": repr(published)})
        if isinstance(answered, Permanent):
            why = f"wave {i}: the coordinator refused the switch: {answered}"
            await self.rollouts.transition(
                namespace,
                entry.value,
                lambda c: R.fail(c, i, why, actor=self.instance),
                states=ACTIVE_STATES,
            )
            return
        if isinstance(answered, Exception):
            # Unavailable (a timeout, no coordinator): the wave stays "switching" and the next
            # step finds out from the head and the decision records what happened.
            raise answered
        reply = answered
        switch_s = time.monotonic() - started
        self.metrics.wave_switch_seconds.observe(switch_s)
        if reply.outcome == "commit":
            await failpoint("distributor.after_wave_committed")
        unready = self.membership.not_ready_since(nodes, started)
        await self.record(namespace, entry.value, i, reply.txid, reply.outcome, reply.votes,
                           switch_s, unready=unready)  # fmt: skip

    async def record(
        self,
        namespace: str,
        rec: RolloutInfo,
        i: int,
        txid: str,
        outcome: str,
        votes: list[VoteRecord],
        switch_s: float | None,
        decision_reason: str = "",
        unready: list[str] | None = None,
    ) -> None:
        def change(cur: RolloutInfo | None) -> RolloutInfo | None:
            if cur is None or cur.rollout_id != rec.rollout_id or i >= len(cur.waves):
                return None
            w = cur.waves[i]
            if txid in w.txids or w.state != "switching":
                return None  # recorded already
            if outcome == "commit":
                out = W.record_commit(
                    cur, i, txid=txid, votes=votes, switch_s=switch_s, actor=self.instance
                )
            else:
                out = W.record_abort(
                    cur,
                    i,
                    txid=txid,
                    votes=votes,
                    actor=self.instance,
                    decision_reason=decision_reason,
                    unready=unready or (),
                )
            return R.replace(out, holder=self.instance)

        entry, wrote = await self.rollouts.mutate(namespace, change)
        if not wrote or entry.value is None:
            return
        if outcome == "commit":
            self.metrics.waves.labels("committed").inc()
        elif entry.value.waves[i].state == "pending":
            self.metrics.waves.labels("retrying").inc()
        else:
            self.metrics.waves.labels("aborted").inc()
        if entry.value.state in TERMINAL_STATES and rec.state not in TERMINAL_STATES:
            self.metrics.rollouts.labels(entry.value.state).inc()
        # A bake of 0 s: the verdict's write follows at once and drops these events from the
        # outbox (``record.writes_next``); else a write of their own. The nodes' targets are
        # raised meanwhile (the txn.committed handler raises them too: nothing waits on this
        # one but the next step).
        moves_on = R.writes_next(entry.value, datetime.now(UTC))
        flushed = self.rollouts.flush(namespace, entry, clear=not moves_on)
        if outcome == "commit":
            nodes = [v.node for v in votes] or entry.value.waves[i].switch_nodes
            await gather(self.targets.raise_to(namespace, nodes, rec.version, txid), flushed)
        else:
            await flushed
        await failpoint("distributor.after_wave_recorded")

    async def recover(self, namespace: str, rec: RolloutInfo, i: int) -> None:
        """A wave left ``switching``: find what became of its attempt before doing anything."""
        w = rec.waves[i]
        since = w.switch_started_at or rec.started_at or datetime.now(UTC)
        decision = await find_decision(
            self.bus, namespace, rec.version, w.switch_nodes, since, exclude=w.txids
        )
        if decision is None:
            head = await read_head(self.bus, namespace)
            if (
                head is not None
                and head.txid is not None
                and head.txid not in w.txids
                and head.version == rec.version
                and set(head.participants) == set(w.switch_nodes)
            ):
                if head.state == "preparing":
                    reply = await self.store.resolve(namespace, head.txid)
                    if reply.state == "pending" or reply.decision is None:
                        log.info("waiting for the wave's transaction", extra={"txid": head.txid})
                        await self.rollouts.wait(namespace, 0.25)
                        return
                    decision = reply.decision
                else:
                    # Decided on the head; its record may be a moment behind.
                    await self.rollouts.wait(namespace, 0.1)
                    return
        if decision is not None:
            log.info(
                "recovered the outcome of a wave",
                extra={"namespace": namespace, "wave": i, "txid": decision.txid},
            )
            votes: list[VoteRecord] = []
            if decision.outcome == "abort":
                ev = await abort_votes(self.bus, namespace, decision.txid, since)
                votes = ev.votes if ev is not None else []
                if not votes:
                    votes = [
                        VoteRecord(node=n, vote="missing", reason="unknown (recovered)")
                        for n in w.switch_nodes
                    ]
            # Who was not ready during the attempt, as far as this process heard.
            age = (datetime.now(UTC) - since).total_seconds()
            unready = self.membership.not_ready_since(w.switch_nodes, time.monotonic() - age)
            await self.record(
                namespace,
                rec,
                i,
                decision.txid,
                decision.outcome,
                votes,
                None,
                decision_reason=decision.reason,
                unready=unready,
            )
            return
        timeout = rec.vote_timeout_s or 5.0
        in_flight_until = since + timedelta(seconds=switch_deadline_s(timeout) + IN_FLIGHT_GRACE_S)
        left = (in_flight_until - datetime.now(UTC)).total_seconds()
        if left > 0:
            await self.rollouts.wait(namespace, min(left, 0.5))
            return
        # Never reached the coordinator (and can no longer): run the attempt again.
        log.info("re-running a wave whose switch never ran", extra={"wave": i})

        def undo(c: RolloutInfo) -> RolloutInfo:
            wave = R.replace(c.waves[i], state="pending", attempts=max(0, c.waves[i].attempts - 1))
            return R.set_wave(c, i, wave)

        await self.rollouts.transition(namespace, rec, undo, states=ACTIVE_STATES)
