"""Catch-up and drift repair: single nodes brought to their target version, outside rollouts.

From every heartbeat (on the replica holding the namespace's lease):

- **behind** (applied < target, or no config at all), not in a transaction, not in a wave
  being switched → a **one-node atomic switch** to its target (``node.catchup``, kind
  ``switch``) — at once for a node that was away, but only if it is still behind one and a
  half heartbeat intervals later when a committed transaction included it (it applies that
  one by itself from ``CFG_TXN``; we give it the time);
- **drifted** (applied == target, but the live file's sha256 is not the version's), for two
  heartbeats in a row → ``node.drift``, then a **re-sync**: a core request
  ``cfg.node.<node>.resync`` that the agent answers by re-installing its applied version from
  its own history (else from the store) — a prepare could not do it, the agent refuses a
  version that is not newer than its applied one (``node.catchup``, kind ``resync``);
- **moved** (applied == target, a version with overlays, and the node's labels now select
  another variant of it than the one it applied) → after the grace, a **one-node atomic
  switch** to the same version (``node.catchup``, kind ``switch``): the coordinator renders the
  node's new variant from its node record, and the agent takes the applied version again only
  as a move to other bytes (docs/design.md §2.6).

A failed attempt is retried with exponential backoff and full jitter, capped (``cap_s``). A
node that failed ``FAILING_AFTER`` times in a row is reported (``node.status`` ``failing``,
the ``confbus_distributor_failing_nodes`` gauge, and ``confbus status``) and keeps being
retried at the capped rate; it never holds up anything else — every node is its own task.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field

import msgspec
import nats.errors
from anyio.abc import TaskGroup

from confbus.distributor.membership import Member, NodeStatus, announce_status
from confbus.distributor.metrics import DistributorMetrics
from confbus.distributor.store import Store
from confbus.distributor.targets import Targets
from confbus.distributor.variants import NodeVariants
from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.runtime.errors import ConfbusError
from confbus.runtime.events import emit
from confbus.runtime.leases import Leases
from confbus.schemas import subjects
from confbus.schemas.api.dist import ResyncReply, ResyncRequest
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.events import NodeCatchUp, NodeDrift
from confbus.schemas.node import NamespaceState

log = logging.getLogger("confbus.distributor")

FAILING_AFTER = 3
RESYNC_TIMEOUT_S = 10.0
LEARN_EVERY_S = 5.0
_decode_resync = msgspec.json.Decoder(ResyncReply).decode


@dataclass
class Repair:
    attempts: int = 0
    not_before: float = 0.0
    behind_since: float | None = None
    awaiting: int | None = None  # the committed transaction's version it applies by itself
    drift_since: float | None = None
    drift_sha: str | None = None
    drift_reported: str | None = None
    failing: bool = False
    last_error: str = ""
    next_retry_s: float | None = None
    kind: str = ""
    in_flight: bool = False


@dataclass
class Repairs:
    bus: Bus
    store: Store
    targets: Targets
    leases: Leases
    metrics: DistributorMetrics
    instance: str
    busy: dict[str, set[str]]  # the rollout driver's nodes in a wave switch, per namespace
    base_s: float = 0.5
    cap_s: float = 60.0
    state: dict[tuple[str, str], Repair] = field(default_factory=dict)
    _learning: dict[str, float] = field(default_factory=dict)
    # Versions whose sha256 is being fetched: every node's heartbeat asks for it the moment a
    # commit raises the targets, and one fetch answers them all.
    _learning_sha: set[tuple[str, int]] = field(default_factory=set)
    # Each node's own bytes of a version with overlays, for the labels it has now.
    variants: NodeVariants = field(init=False)

    def __post_init__(self) -> None:
        self.variants = NodeVariants(self.store)

    def in_flight(self, namespace: str) -> set[str]:
        return {n for (ns, n), r in self.state.items() if ns == namespace and r.in_flight}

    def describe(self, namespace: str, node: str) -> Repair | None:
        return self.state.get((namespace, node))

    @staticmethod
    def status_text(r: Repair | None) -> str | None:
        if r is None:
            return None
        if r.failing:
            return f"failing: {r.last_error}"
        if r.drift_sha is not None or r.kind == "resync":
            return "drift"
        if r.behind_since is not None or r.in_flight:
            return "catching-up"
        return None

    # -- from heartbeats -----------------------------------------------------------------------

    def on_heartbeat(self, member: Member, tg: TaskGroup) -> None:
        for ns, st in member.states.items():
            if self.leases.held(ns):
                self._consider(ns, member, st, tg)

    def _consider(self, ns: str, member: Member, st: NamespaceState, tg: TaskGroup) -> None:
        node = member.node
        key = (ns, node)
        r = self.state.get(key)
        if r is not None and r.in_flight:
            return
        target = self.targets.effective(ns, node, member.labels)
        if target is None:
            self._learn(ns, tg)
            return
        if node in self.busy.get(ns, ()) or st.prepared_txid is not None:
            if r is not None:
                r.behind_since = r.drift_since = None
            return  # a transaction is under way there
        now = time.monotonic()
        grace = max(0.3, 1.5 * member.interval_s)
        applied = st.applied_version
        if applied is None or applied < target:
            # A participant of a committed transaction applies it from CFG_TXN by itself:
            # give it that time. A node that was away from the rollout has nothing coming.
            own = self.targets.txn_target(ns, node)
            expecting = own is not None and own > (applied or 0)
            if expecting:
                r = self.state.setdefault(key, Repair())
                if r.awaiting != own:
                    # A newer transaction includes it: the grace is for that one. (With changes
                    # back to back, a heartbeat taken before each apply is behind every time.)
                    r.awaiting, r.behind_since = own, None
            self._switch(ns, node, target, applied, grace if expecting else 0.0, tg)
            return
        if applied > target:
            self._clear(ns, node, r)
            return
        expected = self.targets.known_sha256(ns, target)
        if expected is None:
            if (ns, target) not in self._learning_sha:
                self._learning_sha.add((ns, target))
                tg.start_soon(self._learn_sha, ns, target)
            return
        if st.applied_sha256 is not None and st.applied_sha256 != expected:
            # A version with overlays: the node applied its own variant (the version's sha256
            # is the envelope's). Its own bytes are those of its labels *now*.
            if not self.variants.known(ns, target):
                tg.start_soon(self.variants.learn, ns, target)
                return
            own_sha256 = self.variants.sha256_for(ns, target, member.labels)
            if own_sha256 is not None and own_sha256 != st.applied_sha256:
                # Its labels changed since: its variant of the target is other bytes, a switch
                # to make. After the grace, so that its node record (which the coordinator
                # renders from) has the labels its heartbeat just gave.
                self._switch(ns, node, target, applied, grace, tg)
                return
            expected = st.applied_sha256
        if st.sha256 == expected:
            self._clear(ns, node, r)
            return
        r = self.state.setdefault(key, Repair())
        r.behind_since = None
        if r.drift_since is None or r.drift_sha != st.sha256:
            r.drift_since, r.drift_sha = now, st.sha256
            return
        if now - r.drift_since < grace:
            return
        if r.drift_reported != st.sha256:
            r.drift_reported = st.sha256
            tg.start_soon(self._report_drift, ns, node, target, expected, st.sha256)
        if now < r.not_before:
            return
        r.in_flight, r.kind = True, "resync"
        tg.start_soon(self._resync, ns, node, target, expected)

    def _switch(
        self, ns: str, node: str, target: int, applied: int | None, wait_s: float, tg: TaskGroup
    ) -> None:
        """A one-node switch to ``target`` once the node has needed it for ``wait_s`` (and its
        backoff allows)."""
        r = self.state.setdefault((ns, node), Repair())
        r.drift_since = r.drift_sha = None
        now = time.monotonic()
        if r.behind_since is None:
            r.behind_since = now
        if now - r.behind_since < wait_s or now < r.not_before:
            return
        r.in_flight, r.kind = True, "switch"
        tg.start_soon(self._catch_up, ns, node, target, applied)

    def _clear(self, ns: str, node: str, r: Repair | None) -> None:
        if r is None:
            return
        self.state.pop((ns, node), None)
        if r.failing:
            self.metrics.failing_nodes.dec()

    def _learn(self, ns: str, tg: TaskGroup) -> None:
        now = time.monotonic()
        if now - self._learning.get(ns, -LEARN_EVERY_S) < LEARN_EVERY_S:
            return
        self._learning[ns] = now

        async def learn() -> None:
            try:
                await self.targets.production_of(ns, refresh=True)
            except ConfbusError as exc:
                log.info("cannot read production", extra={"namespace": ns, "error": str(exc)})

        tg.start_soon(learn)

    async def _learn_sha(self, ns: str, version: int) -> None:
        try:
            await self.targets.sha256_of(ns, version)
        except ConfbusError as exc:
            log.info("cannot read a version", extra={"namespace": ns, "error": str(exc)})
        finally:
            self._learning_sha.discard((ns, version))

    # -- catch-up --------------------------------------------------------------------------------

    async def _catch_up(self, ns: str, node: str, target: int, applied: int | None) -> None:
        r = self.state.setdefault((ns, node), Repair())
        r.attempts += 1
        txid: str | None = None
        try:
            policy = await self.store.policy(ns)
            timeout = policy.vote_timeout_s
            reply = await self.store.switch(
                ns,
                target,
                [node],
                timeout,
                self.instance,
                sha256=self.targets.known_sha256(ns, target),
            )
            txid = reply.txid
            ok = reply.outcome == "commit"
            why = "; ".join(
                f"{v.vote}: {v.reason}" if v.reason else v.vote
                for v in reply.votes
                if v.vote != "yes"
            )
            if ok:
                await self.targets.raise_to(ns, [node], target, reply.txid)
        except ConfbusError as exc:
            ok, why = False, exc.message
        except Exception as exc:  # never let one node's trouble reach the others
            log.exception("catch-up crashed", extra={"namespace": ns, "node": node})
            ok, why = False, repr(exc)
        finally:
            r.in_flight = False
        await self._settle(ns, node, r, "switch", ok, why or "aborted", target, applied, txid)

    # -- drift -----------------------------------------------------------------------------------

    async def _report_drift(
        self, ns: str, node: str, version: int, expected: str, found: str | None
    ) -> None:
        self.metrics.drift.inc()
        log.warning(
            "drift", extra={"namespace": ns, "node": node, "version": version, "found": found}
        )
        try:
            await emit(
                self.bus,
                NodeDrift(
                    namespace=ns,
                    actor=self.instance,
                    reason="the live file is not the bytes of its applied version",
                    node=node,
                    expected_version=version,
                    expected_sha256=expected,
                    found_sha256=found or "",
                ),
                msg_id=f"drift:{ns}:{node}:{version}:{(found or 'none')[:16]}:{int(time.time())}",
            )
        except ConfbusError as exc:
            log.warning("could not announce drift", extra={"error": str(exc)})

    async def _resync(self, ns: str, node: str, version: int, sha256: str) -> None:
        r = self.state.setdefault((ns, node), Repair())
        r.attempts += 1
        source = ""
        try:
            msg = await self.bus.nc.request(
                subjects.node_resync(node),
                encode(ResyncRequest(namespace=ns, version=version, sha256=sha256)),
                timeout=RESYNC_TIMEOUT_S,
            )
            reply = _decode_resync(msg.data)
            ok, why, source = reply.ok, reply.reason, reply.source
        except nats.errors.NoRespondersError:
            ok, why = False, "the agent does not answer re-sync requests"
        except nats.errors.TimeoutError:
            ok, why = False, f"the agent did not answer the re-sync within {RESYNC_TIMEOUT_S}s"
        except DECODE_ERRORS as exc:
            ok, why = False, f"malformed re-sync reply: {exc}"
        except Exception as exc:
            ok, why = False, repr(exc)
        finally:
            r.in_flight = False
        if ok:
            why = f"re-installed v{version} from its {source or 'history'}"
        await self._settle(ns, node, r, "resync", ok, why, version, version, None)

    # -- outcome -----------------------------------------------------------------------------------

    async def _settle(
        self,
        ns: str,
        node: str,
        r: Repair,
        kind: str,
        ok: bool,
        why: str,
        version: int,
        from_version: int | None,
        txid: str | None,
    ) -> None:
        self.metrics.catchups.labels(kind, "applied" if ok else "failed").inc()
        attempts = max(1, r.attempts)
        delay: float | None = None
        if ok:
            log.info(
                "node repaired", extra={"namespace": ns, "node": node, "kind": kind, "v": version}
            )
            was_failing = r.failing
            r.attempts, r.failing, r.last_error, r.next_retry_s = 0, False, "", None
            r.behind_since = r.drift_since = r.drift_sha = None
            r.drift_reported = None
            if was_failing:
                self.metrics.failing_nodes.dec()
                await self._status(ns, node, "live", f"{kind} succeeded: {why}")
        else:
            ceiling = min(self.cap_s, self.base_s * 2 ** max(0, r.attempts - 1))
            delay = random.uniform(ceiling / 2, ceiling)
            r.not_before = time.monotonic() + delay
            r.last_error, r.next_retry_s = why, delay
            log.warning(
                "node repair failed",
                extra={
                    "namespace": ns,
                    "node": node,
                    "kind": kind,
                    "attempts": r.attempts,
                    "reason": why,
                    "retry_in_s": round(delay, 2),
                },
            )
        try:
            await emit(
                self.bus,
                NodeCatchUp(
                    namespace=ns,
                    actor=self.instance,
                    reason=why,
                    node=node,
                    version=version,
                    from_version=from_version,
                    kind="resync" if kind == "resync" else "switch",
                    outcome="applied" if ok else "failed",
                    attempts=attempts,
                    txid=txid,
                    next_retry_s=delay,
                ),
            )
        except ConfbusError as exc:
            log.warning("could not announce catch-up", extra={"error": str(exc)})
        if not ok and r.attempts >= FAILING_AFTER and not r.failing:
            r.failing = True
            self.metrics.failing_nodes.inc()
            await self._status(ns, node, "failing", f"{r.attempts} {kind} attempts failed: {why}")

    async def _status(self, ns: str, node: str, status: NodeStatus, why: str) -> None:
        await announce_status(self.bus, ns, node, status, actor=self.instance, reason=why)
