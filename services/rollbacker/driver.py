"""Driving one rollback, step by step, from its ledger record (docs/design.md §6.5).

```
            ┌──────── create ────────┐        ┌──────── batches ─────────┐
 claimed ──▶│ propose the change     │──────▶ │ for each batch:          │──▶ promote ──▶ completed
 (running)  │ (rollback_of=target),  │        │  one atomic switch,      │     (production,
            │ wait for the version,  │        │  bake, health verdict,   │      last good if
            │ stop the bad rollout,  │        │  healthy share ≥ thresh. │      every batch
            │ plan the batches       │        └─────────┬────────────────┘      passed with data)
            └──────────┬─────────────┘                  │ share < threshold, or
                       │ rejected / not stored          │ nobody could be switched
                       ▼                                ▼
                     stuck ◀────────────────────────── stuck   (rollback.stuck + an alert;
                                                               nothing further is switched)
```

A rollback is driven by the replica holding ``lease.rollbacker.<ns>``, inside the lease's
guard: the moment the lease is lost the drive stops. Every step is recorded in the ledger
(compare-and-set, fenced by the lease's epoch) before the next one starts, and every step is
safe to repeat: the change id maps to the same version, nodes already on the new version are
not switched again, events carry message ids. So a crash, a restart or a takeover by another
replica resumes where the record says, never doubling anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import ParamSpec, TypeVar

import anyio
import msgspec
from nats.aio.msg import Msg

from confbus.rollbacker import plan
from confbus.rollbacker.announce import Announcer
from confbus.rollbacker.ledger import Ledgers
from confbus.rollbacker.metrics import RollbackerMetrics
from confbus.rollbacker.peers import Peers
from confbus.rollbacker.suspect import revoke_reason
from confbus.runtime.errors import ConfbusError, Fenced, Unavailable
from confbus.runtime.failpoints import failpoint
from confbus.runtime.leases import Leases, NotHeld
from confbus.runtime.retry import Backoff, retry_unavailable
from confbus.runtime.signing import SigningKey
from confbus.schemas import subjects
from confbus.schemas.api import store as store_api
from confbus.schemas.api.health import VerdictReply
from confbus.schemas.base import DECODE_ERRORS, utcnow
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.events import VersionCreated, VersionRejected, decode_event
from confbus.schemas.policy import Policy
from confbus.schemas.sealing import content_sha256
from confbus.schemas.signing import Statement
from confbus.schemas.state import BatchResult, Rollback

log = logging.getLogger("confbus.rollbacker")

P = ParamSpec("P")
APPLIED_POLL_S = 0.05
R = TypeVar("R")


@dataclass(frozen=True)
class DriverConfig:
    verify_timeout_s: float = 30.0  # after the bake, how long to wait for health data
    verify_interval_s: float = 0.5
    create_timeout_s: float = 120.0  # for the version-store to store the rollback version
    switch_attempts: int = 3
    retry_cap_s: float = 5.0
    # Signs rollback versions of signed namespaces (agents trust it as a rollbacker key).
    signing_key: SigningKey | None = None


class _Stuck(Exception):
    def __init__(
        self,
        batch: int,
        detail: str,
        share: float | None = None,
        unhealthy: list[str] | None = None,
    ) -> None:
        self.batch = batch
        self.detail = detail
        self.share = share
        self.unhealthy = unhealthy or []
        super().__init__(detail)


@dataclass(eq=False)
class Driver:
    peers: Peers
    ledgers: Ledgers
    leases: Leases
    announce: Announcer
    metrics: RollbackerMetrics
    instance: str
    config: DriverConfig

    # -- the whole run ---------------------------------------------------------------------

    async def drive(self, namespace: str, rollback_id: str) -> None:
        """Take the namespace's lease and drive the rollback until it is completed or stuck,
        or the lease is lost; if another replica holds the lease, it drives it. Transient
        failures (a peer down) are retried with backoff, without end: a rollback is the one
        thing that must get done. The lease is released at the end, for the next rollback."""
        if not self.leases.held(namespace) and await self.leases.acquire(namespace) is None:
            return  # driven where the lease is held (or the bus is down: the sweep tries again)
        self.metrics.active.inc()
        try:
            with self.leases.guard(namespace) as scope:
                await self._run(namespace, rollback_id)
            if scope.cancelled_caught:
                log.warning("lost the rollback's lease", extra={"rollback_id": rollback_id})
        except (Fenced, NotHeld) as exc:
            log.warning("lost the rollback to another replica", extra={"error": str(exc)})
        finally:
            self.metrics.active.dec()
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self.leases.release(namespace)

    async def _save(
        self, namespace: str, rollback_id: str, fn: Callable[[Rollback], Rollback]
    ) -> Rollback:
        """Change the rollback, fenced by the epoch of the lease we hold now."""
        epoch = self.leases.require(namespace).epoch
        return await self.ledgers.update_rollback(namespace, rollback_id, self.instance, epoch, fn)

    async def _run(self, namespace: str, rollback_id: str) -> None:
        epoch = self.leases.require(namespace).epoch
        taken, resumed = await self._retrying(
            self.ledgers.take, namespace, rollback_id, self.instance, epoch
        )
        if taken is None:
            return  # finished meanwhile
        rb = taken
        if resumed:
            self.metrics.rollbacks.labels("resumed").inc()
            log.info(
                "taking over rollback",
                extra={"namespace": namespace, "rollback_id": rb.rollback_id},
            )
        policy = await self._retrying(self.peers.policy, namespace)
        try:
            if rb.step == "create":
                rb = await self._create(rb, policy)
            if rb.step == "batches":
                rb = await self._batches(rb, policy)
            if rb.step == "promote":
                await self._promote(rb, policy)
        except _Stuck as stuck:
            await self._stuck(rb.namespace, rb.rollback_id, stuck, policy)

    async def _retrying(
        self, fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """``fn`` until a peer answers, for as long as it takes (the rollback is the way out of
        an outage: it does not give up on one). Each step is safe to repeat, a switch too:
        nodes switched to the rollback version by a first request stay there."""
        return await retry_unavailable(
            lambda: fn(*args, **kwargs),
            what=f"rollbacker: {getattr(fn, '__name__', 'a peer')}",
            backoff=Backoff(base_s=0.2, cap_s=self.config.retry_cap_s),
        )

    # -- create the rollback version --------------------------------------------------------

    async def _create(self, rb: Rollback, policy: Policy) -> Rollback:
        ns = rb.namespace
        if rb.revokes_last_good is not None:
            # The suspect version loses its mark first: the pointer goes back to the target,
            # with the reason in the audit log (a repeat is a no-op in the store).
            why = revoke_reason(rb.revokes_last_good, f"{rb.rollback_id}: {rb.reason}")
            try:
                await self._retrying(self.peers.mark_good, ns, rb.to_version, why)
            except ConfbusError as exc:  # the rollback matters more than the mark
                log.warning("could not move the last good back", extra={"error": str(exc)})
        target = await self._retrying(self.peers.version, ns, rb.to_version, content=True)
        if target is None or target.content is None:
            raise _Stuck(-1, f"version {rb.to_version} of {ns} is not in the version-store")
        if content_sha256(target.content) != target.info.sha256:
            raise _Stuck(-1, f"the stored bytes of v{rb.to_version} do not match their sha256")
        change = ChangeProposed(
            namespace=ns,
            change_id=rb.change_id,
            content=target.content,
            format=target.info.format,
            author=self.peers.actor,  # the replica: who asked is the rollback's actor
            message=f"rollback to v{rb.to_version} ({rb.rollback_id}): {rb.reason}"[:1000],
            rollback_of=rb.to_version,
        )
        if policy.signing is not None and policy.signing.threshold > 0:
            change = await self._signed(change, target)
        new_version = await self._store_version(change)
        info = await self._retrying(self.peers.version, ns, new_version)
        if info is None:
            raise _Stuck(-1, f"the version-store reported v{new_version} but cannot find it")
        if info.info.status in ("draft", "rejected"):
            raise _Stuck(
                -1,
                f"the version-store stored the rollback version v{new_version} as "
                f"{info.info.status}; a rollback version must be approved to be switched",
            )
        # Stop the rollout of the bad version before anything is switched, and have it end
        # as rolled_back (so a restarted distributor never resumes it).
        try:
            await self.peers.end_rollout(
                ns,
                f"rolled back by {rb.rollback_id}: content of v{rb.to_version} as v{new_version}",
            )
        except ConfbusError as exc:
            log.warning("could not end the rollout", extra={"namespace": ns, "error": str(exc)})
        status = await self._retrying(self.peers.status, ns)
        nodes = plan.targets(status.nodes, rb.from_version, new_version)
        batches = plan.split(nodes, plan.batch_count(rb.strategy))
        rb = await self._save(
            ns,
            rb.rollback_id,
            lambda r: msgspec.structs.replace(
                r, new_version=new_version, batches=batches, step="batches"
            ),
        )
        await self.announce.started(rb, policy)
        self.metrics.rollbacks.labels("started").inc()
        return rb

    async def _signed(
        self, change: ChangeProposed, target: store_api.VersionReply
    ) -> ChangeProposed:
        """The rollback change of a signed namespace: it carries the restored version's own
        signatures, and ours for the new number (docs/design.md §7.6)."""
        key = self.config.signing_key
        if key is None:
            raise _Stuck(
                -1,
                f"{change.namespace} requires signed versions and this rollbacker has no "
                "signing key (--signing-key): agents would refuse the rollback",
            )
        latest = await self._retrying(self.peers.version, change.namespace, "latest")
        base = 0 if latest is None else latest.info.version
        own = key.sign(
            Statement(
                change.namespace,
                base + 1,
                target.info.sha256,
                target.info.format,
                change.change_id,
                rollback_of=target.info.version,
            )
        )
        return msgspec.structs.replace(change, base=base, signatures=[*target.signatures, own])

    async def _store_version(self, change: ChangeProposed) -> int:
        """Propose the change and wait until the version-store has stored it (the version
        number) or rejected it (``_Stuck``). The change id makes this safe to repeat."""
        ns, change_id = change.namespace, change.change_id
        outcome: list[VersionCreated | VersionRejected] = []
        wake = anyio.Event()

        async def on_event(msg: Msg) -> None:
            nonlocal wake
            try:
                ev = decode_event(msg.data)
            except DECODE_ERRORS:
                return
            if isinstance(ev, VersionCreated | VersionRejected) and ev.change_id == change_id:
                outcome.append(ev)
                wake.set()

        sub = await self.peers.bus.nc.subscribe(subjects.event(ns, "version.*"), cb=on_event)
        try:
            await self._retrying(self.peers.propose, change)
            with anyio.move_on_after(self.config.create_timeout_s):
                while True:
                    for ev in outcome:
                        if isinstance(ev, VersionCreated):
                            return ev.version
                        raise _Stuck(-1, f"the version-store rejected the rollback: {ev.reason}")
                    try:
                        st = await self.peers.change_status(ns, change_id)
                    except Unavailable:
                        st = None
                    if st is not None and st.status == "stored" and st.version is not None:
                        return st.version
                    if st is not None and st.status == "rejected":
                        raise _Stuck(-1, f"the version-store rejected the rollback: {st.reason}")
                    with anyio.move_on_after(1.0):
                        await wake.wait()
                    wake = anyio.Event()
        finally:
            await sub.unsubscribe()
        raise _Stuck(
            -1,
            f"the version-store did not store the rollback version within "
            f"{self.config.create_timeout_s:g}s",
        )

    # -- batches ------------------------------------------------------------------------------

    async def _batches(self, rb: Rollback, policy: Policy) -> Rollback:
        threshold = policy.rollback.healthy_threshold
        for index in range(len(rb.done), len(rb.batches)):
            started = time.monotonic()
            result = await self._switch_batch(rb, index, policy)
            await failpoint("rollbacker.after_batch_switch")
            if not result.switched:
                rb = await self._record_batch(rb, result)
                raise _Stuck(
                    index,
                    f"no node of batch {index + 1} could be switched ({result.verdict})",
                    0.0,
                    result.nodes,
                )
            result = await self._verify(rb, result, policy)
            rb = await self._record_batch(rb, result)
            self.metrics.batch_seconds.observe(time.monotonic() - started)
            await self.announce.batch(rb, result, policy)
            await failpoint("rollbacker.after_batch")
            share = result.healthy_share
            if share is not None and share < threshold:
                unswitched = [n for n in result.nodes if n not in result.switched]
                unhealthy = sorted({*unswitched, *result.unhealthy})
                raise _Stuck(
                    index,
                    f"batch {index + 1} is {share:.0%} healthy after the rollback "
                    f"(threshold {threshold:.0%}, verdict {result.verdict})",
                    share,
                    unhealthy,
                )
        return await self._save(
            rb.namespace, rb.rollback_id, lambda r: msgspec.structs.replace(r, step="promote")
        )

    async def _record_batch(self, rb: Rollback, result: BatchResult) -> Rollback:
        def add(r: Rollback) -> Rollback:
            done = [d for d in r.done if d.index != result.index]
            return msgspec.structs.replace(r, done=[*done, result])

        return await self._save(rb.namespace, rb.rollback_id, add)

    async def _switch_batch(self, rb: Rollback, index: int, policy: Policy) -> BatchResult:
        """One atomic switch of the batch's nodes to the new version. Nodes already on it
        count as switched; nodes that miss the vote deadline are left out of a retry (they
        catch up once the version is production); a few attempts, then what we have."""
        assert rb.new_version is not None
        ns, new = rb.namespace, rb.new_version
        planned = rb.batches[index]
        switched: list[str] = []
        txids: list[str] = []
        why = ""
        remaining = list(planned)
        ahead = await self._ahead(ns, new)
        switched += [n for n in remaining if n in ahead]
        remaining = [n for n in remaining if n not in ahead]
        for _ in range(self.config.switch_attempts):
            if not remaining:
                break
            reply = await self._retrying(
                self.peers.switch,
                ns,
                new,
                remaining,
                policy.vote_timeout_s,
                f"rollback {rb.rollback_id} batch {index + 1}/{len(rb.batches)}",
            )
            txids.append(reply.txid)
            if reply.outcome == "commit":
                switched += remaining
                remaining = []
                break
            missing = {v.node for v in reply.votes if v.vote == "missing"}
            why = "; ".join(
                f"{v.node}: {v.vote}{' (' + v.reason + ')' if v.reason else ''}"
                for v in reply.votes
                if v.vote != "yes"
            )
            ahead = await self._ahead(ns, new)
            switched += [n for n in remaining if n in ahead]
            remaining = [n for n in remaining if n not in ahead and n not in missing]
        committed_at = utcnow()
        # Committed is not yet restored: wait until the nodes report the new version applied
        # (their heartbeat right after the rename), so "restored" means the files are there.
        applied = await self._await_applied(ns, new, switched, policy.vote_timeout_s + 5.0)
        late = [n for n in switched if n not in applied]
        if late:
            log.warning("nodes did not report the rollback applied", extra={"nodes": late})
        switched = [n for n in switched if n in applied]
        return BatchResult(
            index=index,
            nodes=planned,
            switched=switched,
            txids=txids,
            verdict="" if switched else f"switch aborted: {why or 'no participant'}",
            committed_at=committed_at,
        )

    async def _await_applied(
        self, namespace: str, version: int, nodes: list[str], timeout: float
    ) -> set[str]:
        want = set(nodes)
        ahead: set[str] = set()
        with anyio.move_on_after(timeout):
            while True:
                ahead = await self._ahead(namespace, version)
                if want <= ahead:
                    break
                await anyio.sleep(APPLIED_POLL_S)
        return want & ahead

    async def _ahead(self, namespace: str, version: int) -> set[str]:
        status = await self._retrying(self.peers.status, namespace)
        return {
            n.node
            for n in status.nodes
            if n.applied_version is not None and n.applied_version >= version
        }

    async def _verify(self, rb: Rollback, result: BatchResult, policy: Policy) -> BatchResult:
        """Bake the batch, then judge it by the health-watcher's verdict on the new version
        since the batch's commit. Without health rules there is nothing to judge: only the
        bake. Missing data is judged by the policy's ``on_missing_data``; it is waited for (up
        to ``verify_timeout_s``) only from nodes that have a health source at all. The polls
        are not recorded; the verdict acted on is, once (one ``health.verdict`` per batch)."""
        assert rb.new_version is not None and result.committed_at is not None
        bake = max(0.0, policy.rollback.batch_delay_s)
        if not policy.health_rules:
            await anyio.sleep(bake)
            return msgspec.structs.replace(result, verdict="no_rules", healthy_share=None)
        started = time.monotonic()
        deadline = started + bake + self.config.verify_timeout_s
        polled: VerdictReply | None = None
        while True:
            v = await self._verdict(rb, result, record=False)
            baked = time.monotonic() - started >= bake
            if v is not None and v.verdict != "no_data":
                polled = v
                share = healthy_share(result, v, policy.on_missing_data)
                if baked and share >= policy.rollback.healthy_threshold:
                    break
            elif v is not None and set(result.switched) <= set(v.no_source):
                # No node of the batch can send a sample: only the bake is left to wait.
                await anyio.sleep(max(0.0, bake - (time.monotonic() - started)))
                break
            now = time.monotonic()
            if now >= deadline:
                break
            await anyio.sleep(min(self.config.verify_interval_s, deadline - now))
        last = await self._verdict(rb, result, record=True) or polled
        if last is None or last.verdict == "no_data":
            share_if_none = None if policy.on_missing_data == "pass" else 0.0
            return msgspec.structs.replace(result, verdict="no_data", healthy_share=share_if_none)
        return msgspec.structs.replace(
            result,
            verdict=last.verdict,
            healthy_share=healthy_share(result, last, policy.on_missing_data),
            samples=last.samples,
            unhealthy=sorted(set(last.unhealthy_nodes) & set(result.nodes)),
        )

    async def _verdict(
        self, rb: Rollback, result: BatchResult, *, record: bool
    ) -> VerdictReply | None:
        assert rb.new_version is not None and result.committed_at is not None
        try:
            return await self.peers.verdict(
                rb.namespace, rb.new_version, result.switched, result.committed_at, record=record
            )
        except Unavailable as exc:
            log.info("no verdict", extra={"namespace": rb.namespace, "error": str(exc)})
            return None

    # -- the end -------------------------------------------------------------------------------

    async def _promote(self, rb: Rollback, policy: Policy) -> None:
        assert rb.new_version is not None
        ns, new = rb.namespace, rb.new_version
        prod = await self._retrying(self.peers.version, ns, "production")
        if prod is None or prod.info.version < new:
            await self._retrying(
                self.peers.promote, ns, new, f"rollback {rb.rollback_id} restored v{rb.to_version}"
            )
        # The rollback version is itself known good only if every batch passed *with data*.
        if rb.batches and all(b.verdict == "pass" and b.samples > 0 for b in rb.done):
            try:
                await self.peers.mark_good(
                    ns, new, f"rollback {rb.rollback_id}: every batch passed its health check"
                )
            except ConfbusError as exc:
                log.warning("could not mark the rollback good", extra={"error": str(exc)})
        finished = utcnow()
        rb = await self._save(
            ns,
            rb.rollback_id,
            lambda r: msgspec.structs.replace(
                r, state="completed", step="done", finished_at=finished
            ),
        )
        seconds = (finished - rb.started_at).total_seconds()
        self.metrics.rollback_seconds.observe(seconds)
        self.metrics.rollbacks.labels("completed").inc()
        await self.announce.completed(rb, seconds, policy)

    async def _stuck(self, namespace: str, rollback_id: str, stuck: _Stuck, policy: Policy) -> None:
        at: datetime = utcnow()
        rb = await self._save(
            namespace,
            rollback_id,
            lambda r: msgspec.structs.replace(
                r, state="stuck", finished_at=at, detail=stuck.detail
            ),
        )
        self.metrics.rollbacks.labels("stuck").inc()
        await self.announce.stuck(
            rb,
            stuck.batch,
            stuck.share,
            stuck.detail,
            policy,
            threshold=policy.rollback.healthy_threshold,
            unhealthy=stuck.unhealthy,
        )


def healthy_share(result: BatchResult, v: VerdictReply, on_missing: str) -> float:
    """The share of the batch's *planned* nodes that are healthy on the new version.

    Nodes that could not be switched count as unhealthy. With per-node lists, a switched node
    the verdict does not mention (no samples) counts per ``on_missing_data``; without them the
    batch is all healthy on ``pass`` and all unhealthy otherwise.
    """
    total = len(result.nodes)
    if total == 0:
        return 1.0
    switched = set(result.switched)
    if v.healthy_nodes or v.unhealthy_nodes:
        healthy = set(v.healthy_nodes) & switched
        unknown = switched - healthy - set(v.unhealthy_nodes)
        count = len(healthy) + (len(unknown) if on_missing == "pass" else 0)
    else:
        count = len(switched) if v.verdict == "pass" else 0
    return count / total
