"""The agent's bus side: one node's participation in the two-phase commit (docs/design.md §4, §5).

``NodeAgent`` serves one node id over one NATS connection; a process usually runs one, and a
benchmark may run hundreds on a few connections. Per namespace it:

- reads ``CFG_TXN`` in order from the sequence it persisted, through its host's one reading
  of the stream (``confbus.agent.txnfeed``: a thousand agents must not mean a thousand
  server-side consumers), back within a second of a reconnect or a broker restart;
- on a prepare that names it: stages, validates, fsyncs (``confbus.agent.disk``), and only
  then votes ``yes`` on ``cfg.txn.<ns>.<txid>.vote.<node>``; otherwise ``no`` with the reason;
- on a decision: commit renames the staged file over the live one, abort drops it;
- when in doubt (voted yes, no decision heard within the prepare's timeout, measured on this
  node's monotonic clock) reads the decision record, then asks ``cfg.api.txn.resolve``;
- heartbeats its state on ``cfg.node.<node>.heartbeat`` — with whether it is ready to vote
  (reading ``CFG_TXN`` live), at once when that changes — and announces each apply on
  ``cfg.event.<ns>.node.applied``.

The bus may be down at any time: the live file stays as it is, and the agent says so.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import anyio
import msgspec
import nats.errors
import nats.js.errors
from anyio.abc import TaskGroup
from nats.aio.msg import Msg

from confbus.agent import offload
from confbus.agent.disk import NamespaceDisk, prepare_txn
from confbus.agent.heartbeat import BeatTimer, heartbeat_delay
from confbus.agent.hooks import run_on_change
from confbus.agent.instance import NodeIdGuard
from confbus.agent.lastgood import keep_last_good
from confbus.agent.state import CommitOutcome, LocalState, Refused, VersionNotOnDisk
from confbus.agent.state_io import sha256_bytes
from confbus.agent.trust import Trust
from confbus.agent.txnfeed import Tap, TxnReader
from confbus.agent.variants import own_variant
from confbus.runtime.api import call
from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.runtime.errors import ConfbusError
from confbus.runtime.events import emit
from confbus.runtime.failpoints import failpoint
from confbus.runtime.txnlog import first_txn_record
from confbus.schemas import subjects
from confbus.schemas.api import store as store_api
from confbus.schemas.api import txn as txn_api
from confbus.schemas.api.dist import ResyncReply, ResyncRequest
from confbus.schemas.base import DECODE_ERRORS, utcnow
from confbus.schemas.events import NodeApplied
from confbus.schemas.node import Heartbeat
from confbus.schemas.txn import Decision, Prepare, Vote, decode_txn_for_agent, decode_vote_ack

log = logging.getLogger("confbus.agent")

VOTE_TIMEOUT_S = 2.0
# The resume point is saved after every message that changed something here; others are
# replayed harmlessly after a restart, so saving them is batched.
SEQ_SAVE_EVERY = 200
_decode_resync = msgspec.json.Decoder(ResyncRequest).decode


@dataclass
class Binding:
    namespace: str
    path: str


@dataclass
class _Namespace:
    disk: NamespaceDisk
    state: LocalState
    prepared_at: float | None = None  # monotonic time we voted yes (None: not in doubt)
    unsaved: int = 0
    last_seq: int = 0
    txn: Tap | None = None  # reading CFG_TXN (None: not started yet)
    # The stream reader and the in-doubt resolver may both hold a decision for the same
    # transaction: one at a time per namespace.
    lock: anyio.Lock = field(default_factory=anyio.Lock)


@dataclass
class NodeAgent:
    node: str
    bindings: Sequence[Binding]
    state_dir: str
    labels: dict[str, str] = field(default_factory=dict)
    validate_cmd: str | None = None
    validate_timeout_s: float = 30.0
    on_change_cmd: str | None = None
    heartbeat_interval_s: float = 2.0
    keep: int = 10
    health_url: str | None = None  # forward the app's health (confbus.agent.health)
    health_interval_s: float = 5.0
    # Trust roots and key-encryption keys, from files given at start (confbus.agent.trust).
    trust: Trust = field(default_factory=Trust)
    started_at: datetime = field(default_factory=utcnow)
    instance: str = field(default_factory=lambda: secrets.token_hex(8))  # see agent.instance
    namespaces: dict[str, _Namespace] = field(default_factory=dict, init=False)
    bus_connected: bool | None = field(default=None, init=False)  # None: not connected yet
    # The wait for the next heartbeat; ``now()`` sends one at once (readiness to vote changed).
    _beat: BeatTimer = field(default_factory=BeatTimer, init=False)
    # The last heartbeat built and what it was built from (``heartbeat``).
    _built: tuple[tuple[object, ...], Heartbeat] | None = field(default=None, init=False)
    # Set by an agent host (confbus.agent.host), which reads CFG_TXN for its agents and runs
    # resolve_doubts and keep_last_good; None: this agent is a host of one.
    host_txn: TxnReader | None = field(default=None, init=False)
    _guard: NodeIdGuard | None = field(default=None, init=False)  # one agent per node id

    # -- start-up: serve what is on disk before anything else --------------------------------

    async def load(self) -> None:
        from pathlib import Path

        for b in self.bindings:
            disk = NamespaceDisk(b.namespace, Path(b.path), Path(self.state_dir), keep=self.keep)
            state = await offload.run(disk.load)
            ns = _Namespace(disk, state, last_seq=state.stream_seq)
            if state.in_doubt:
                ns.prepared_at = 0.0  # unknown age after a restart: ask at once
            self.namespaces[b.namespace] = ns
            log.info(
                "loaded",
                extra={
                    "namespace": b.namespace,
                    "node": self.node,
                    "status": state.status,
                    "applied": state.applied_version,
                },
            )

    def status(self) -> dict[str, object]:
        return {
            "node": self.node,
            "bus": {True: "connected", False: "down", None: "connecting"}[self.bus_connected],
            "ready_to_vote": self.ready,
            "namespaces": {
                name: {
                    "status": ns.state.status if ns.state.has_config else "no config yet",
                    "applied_version": ns.state.applied_version,
                    "sha256": ns.state.applied_sha256,
                    "last_good": ns.state.last_good,
                    "in_doubt": ns.state.prepared.txid if ns.state.prepared else None,
                }
                for name, ns in self.namespaces.items()
            },
        }

    # -- running on a bus ----------------------------------------------------------------

    async def run(
        self, bus: Bus, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        if not self.namespaces:
            await self.load()
        resync = None
        try:
            async with anyio.create_task_group() as tg:
                await self._start(bus, tg)
                on_resync = functools.partial(self._on_resync, bus)  # drift repair: no task
                resync = await bus.nc.subscribe(subjects.node_resync(self.node), cb=on_resync)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                if self._guard is not None:
                    await self._guard.close()
                if resync is not None:
                    await resync.unsubscribe()

    async def _start(self, bus: Bus, tg: TaskGroup) -> None:
        # Joining (confbus.agent.instance): no history replayed; one agent per node id.
        reader = self.host_txn or TxnReader(bus, tg)
        end = await reader.stream_end()
        for ns in self.namespaces.values():
            ns.last_seq = ns.last_seq or end
        self._guard = NodeIdGuard(self.heartbeat, self._beat.now)
        await self._guard.join(bus)
        for name in self.namespaces:
            await tg.start(self._follow, bus, reader, name)
        tg.start_soon(self._announce_unannounced, bus)
        tg.start_soon(self._heartbeats, bus)
        if self.host_txn is None:
            tg.start_soon(resolve_doubts, bus, [self])
            tg.start_soon(keep_last_good, bus, [self])  # services.agent.lastgood
        if self.health_url:
            # Only an agent that forwards an app's health holds the scraper in memory.
            from confbus.agent.health import HealthForwarder

            forwarder = HealthForwarder(
                self.node,
                self.health_url,
                lambda: {n: ns.state.applied_version for n, ns in self.namespaces.items()},
                self.health_interval_s,
            )
            tg.start_soon(forwarder.run, bus)

    async def _follow(
        self,
        bus: Bus,
        reader: TxnReader,
        name: str,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Read the namespace's transactions in stream order, from where we left off."""
        ns = self.namespaces[name]
        async with reader.tap(name, ns.last_seq + 1, self._on_live) as ns.txn:
            task_status.started()
            while True:
                # No local keeps the last message while the next is awaited (~8 KB each).
                await self._handle(bus, ns, await ns.txn.next())

    @property
    def ready(self) -> bool:
        """Ready to vote: every namespace's reading of ``CFG_TXN`` has its consumer in place,
        so a prepare published now reaches this agent."""
        taps = [ns.txn for ns in self.namespaces.values()]
        return bool(taps) and all(t is not None and t.live for t in taps)

    def _on_live(self, _live: bool) -> None:
        self._beat.now()  # tell the distributor now, not at the next heartbeat

    async def _handle(self, bus: Bus, ns: _Namespace, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        try:
            record = decode_txn_for_agent(msg.data)
        except DECODE_ERRORS as exc:
            # Only confbus services may write CFG_TXN; a record we cannot read is from a
            # newer confbus or a bug elsewhere — skip it, loudly, and keep going.
            log.warning(
                "skipping unreadable txn record", extra={"subject": msg.subject, "error": str(exc)}
            )
            record = None
        # Any state write while handling this message records its sequence with it.
        ns.disk.note_stream_seq(seq)
        changed = False
        try:
            async with ns.lock:
                if isinstance(record, Prepare):
                    changed = await self._on_prepare(bus, ns, record)
                elif isinstance(record, Decision):
                    changed = await self._on_decision(bus, ns, record)
        except ConfbusError as exc:
            log.error("txn record failed", extra={"subject": msg.subject, "error": str(exc)})
        except Exception:  # a bug or a surprise must not take the node's agent down
            log.exception("txn record handling failed", extra={"subject": msg.subject})
        ns.last_seq = seq
        ns.unsaved = 0 if changed else ns.unsaved + 1
        if ns.unsaved >= SEQ_SAVE_EVERY:
            await offload.run(ns.disk.save_stream_seq, seq)
            ns.unsaved = 0

    async def _on_prepare(self, bus: Bus, ns: _Namespace, p: Prepare) -> bool:
        if self.node not in p.participants:
            return False
        try:
            # Signatures and sealing first: nothing untrusted is staged, even briefly.
            p = self.trust.admit(p)
            if self.validate_cmd:
                await prepare_txn(
                    ns.disk,
                    p,
                    validate_cmd=self.validate_cmd,
                    validate_timeout=self.validate_timeout_s,
                    node=self.node,
                )
                await self._refresh(ns)
            else:  # the common case: the whole prepare in one thread hop
                ns.state = await offload.run(ns.disk.prepare_sealed, p, self.node)
        except Refused as no:
            await self._refresh(ns)
            await self._vote(bus, p, "no", no.reason)
            return True
        ns.prepared_at = time.monotonic()
        await failpoint("agent.before_vote")
        await self._vote(bus, p, "yes", "")
        await failpoint("agent.after_vote")
        return True

    async def _vote(self, bus: Bus, p: Prepare, vote: str, reason: str) -> None:
        v = Vote(
            txid=p.txid,
            namespace=p.namespace,
            node=self.node,
            epoch=p.epoch,
            vote=vote,  # type: ignore[arg-type]
            reason=reason,
        )
        try:
            reply = await bus.nc.request(
                subjects.txn_vote(p.namespace, p.txid, self.node), encode(v), timeout=VOTE_TIMEOUT_S
            )
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            # The coordinator is gone or decided already: the decision will tell us.
            return
        try:
            ack = decode_vote_ack(reply.data)
        except DECODE_ERRORS:
            return
        if not ack.accepted:
            log.info("vote not accepted", extra={"txid": p.txid, "reason": ack.reason})

    async def _on_decision(self, bus: Bus, ns: _Namespace, d: Decision) -> bool:
        if self.node not in d.participants:
            # Not ours, but its epoch is the namespace's: it fences older prepares.
            await offload.run(ns.disk.observe_epoch, d.epoch)
            return False
        await failpoint("agent.before_apply")
        before = ns.state.applied_version
        # Epoch, decision and the new state in one thread hop.
        result, ns.state = await offload.run(
            ns.disk.decide, d.txid, d.outcome, d.version, d.sha256, d.epoch
        )
        if d.outcome == "abort":
            ns.prepared_at = None if not ns.state.in_doubt else ns.prepared_at
            return bool(result)
        outcome = result
        if outcome is CommitOutcome.MISSING:
            # We never staged it (away during the prepare, or refused it as busy): the
            # prepare in the stream still has the bytes, checked against the version's hash.
            own = await self._prepared_content(bus, d)
            if own is not None and await offload.run(ns.disk.apply, d.version, own[1], own[0]):
                outcome = CommitOutcome.APPLIED
            await self._refresh(ns)
        if not ns.state.in_doubt:
            ns.prepared_at = None
        if outcome is CommitOutcome.APPLIED:
            await failpoint("agent.after_apply")
            await self._applied(bus, ns, d, before)
        return True

    async def _prepared_content(self, bus: Bus, d: Decision) -> tuple[bytes, str] | None:
        """This node's bytes of a decided prepare, and their sha256 (the version's, or this
        node's variant's), from the prepare record in the stream."""
        subject = subjects.txn_prepare(d.namespace, d.txid)
        record = await first_txn_record(bus, subject, Prepare, d.namespace, d.txid)
        if record is None or record.sha256 != d.sha256:
            return None
        try:
            own = self.trust.admit(record).bytes_for(self.node)
        except Refused as no:
            log.warning("decided prepare refused", extra={"txid": d.txid, "reason": no.reason})
            return None
        if own is None or sha256_bytes(own[0]) != own[1]:
            return None  # never apply bytes that are not the decided version's
        return own

    async def _applied(self, bus: Bus, ns: _Namespace, d: Decision, before: int | None) -> None:
        log.info(
            "applied",
            extra={
                "namespace": d.namespace,
                "node": self.node,
                "version": d.version,
                "txid": d.txid,
            },
        )
        # This node's own bytes' sha256: the version's, or its variant's.
        sha256 = ns.state.applied_sha256 or d.sha256
        await self._announce(bus, ns, d.version, sha256, d.txid, before)
        # Now the bookkeeping the commit deferred to get here sooner (disk.commit, flush).
        ns.state = await offload.run(ns.disk.flush)
        await self._publish_heartbeat(bus, refresh=False)  # the state is fresh already
        if self.on_change_cmd:
            await run_on_change(self.on_change_cmd, ns.disk.live_path, d.namespace, d.version)

    async def _announce(
        self,
        bus: Bus,
        ns: _Namespace,
        version: int,
        sha256: str,
        txid: str | None,
        before: int | None,
    ) -> None:
        namespace = ns.disk.namespace
        try:
            await emit(
                bus,
                NodeApplied(
                    namespace=namespace,
                    actor=self.node,
                    node=self.node,
                    version=version,
                    sha256=sha256,
                    txid=txid,
                    previous=before,
                ),
                # The same id for a repeat after a restart: within the window, a no-op. The
                # bytes are in it: a move to another variant of the version is another apply.
                msg_id=f"applied:{namespace}:{self.node}:{version}:{sha256[:16]}",
            )
        except ConfbusError as exc:
            log.warning("could not announce apply", extra={"error": str(exc)})
            return
        ns.disk.note_announced(version)

    async def _announce_unannounced(self, bus: Bus) -> None:
        """After a restart: an install whose node.applied may never have gone out (the agent
        died between the rename and the publish) is announced now, and its on-change hook run."""
        for ns in self.namespaces.values():
            st = ns.state
            if not st.unannounced or st.applied_version is None or st.applied_sha256 is None:
                continue
            log.info(
                "announcing an apply from before the restart",
                extra={"namespace": st.namespace, "version": st.applied_version},
            )
            await self._announce(
                bus, ns, st.applied_version, st.applied_sha256, st.applied_txid, None
            )
            if self.on_change_cmd:
                await run_on_change(
                    self.on_change_cmd, ns.disk.live_path, st.namespace, st.applied_version
                )

    async def _refresh(self, ns: _Namespace) -> None:
        ns.state = await offload.run(ns.disk.snapshot)

    # -- in doubt ------------------------------------------------------------------------

    async def _resolve(self, bus: Bus, ns: _Namespace, txid: str) -> None:
        """Nobody guesses: read the decision record, else ask the coordinator, which
        writes ABORT through the head's compare-and-set once the deadline has passed."""
        name = ns.disk.namespace
        decision = await first_txn_record(
            bus, subjects.txn_decision(name, txid), Decision, name, txid
        )
        if decision is None:
            reply = await call(
                bus,
                txn_api.RESOLVE,
                txn_api.ResolveRequest(namespace=name, txid=txid, node=self.node),
            )
            if reply.state == "pending":
                return
            decision = reply.decision
            if decision is None:  # presumed abort: the txn never reached a decision
                await offload.run(ns.disk.abort, txid)
                await self._refresh(ns)
                ns.prepared_at = None
                return
        await self._on_decision(bus, ns, decision)

    # -- drift repair: re-install the applied version when the distributor asks ---------

    async def _on_resync(self, bus: Bus, msg: Msg) -> None:
        try:
            req = _decode_resync(msg.data)
        except DECODE_ERRORS as exc:
            reply = ResyncReply(ok=False, reason=f"malformed re-sync request: {exc}")
        else:
            reply = await self.resync(bus, req)
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(encode(reply))

    async def resync(self, bus: Bus, req: ResyncRequest) -> ResyncReply:
        """Re-install the applied version's bytes over a live file that drifted: from the
        local history, else from the store. Only ever the applied version (a newer one comes
        through a transaction); the bytes are checked against the version's sha256."""
        ns = self.namespaces.get(req.namespace)
        if ns is None:
            return ResyncReply(ok=False, reason=f"{self.node} does not follow {req.namespace}")
        async with ns.lock:
            st = ns.state
            if st.applied_version != req.version or st.applied_sha256 != req.sha256:
                return ResyncReply(
                    ok=False,
                    reason=f"applied version is {st.applied_version}, not {req.version}: a "
                    "re-sync only re-installs the applied version",
                )
            source: Literal["history", "store"] = "history"
            content: bytes | None
            try:
                content = await offload.run(ns.disk.version_bytes, req.version)
            except VersionNotOnDisk:
                content = None
            if content is None or sha256_bytes(content) != req.sha256:
                source = "store"
                try:
                    got = await call(
                        bus,
                        store_api.GET,
                        store_api.GetRequest(
                            namespace=req.namespace, ref=str(req.version), content=True
                        ),
                    )
                except ConfbusError as exc:
                    return ResyncReply(ok=False, reason=f"no local copy, and the store: {exc}")
                try:
                    content = self.trust.admit_bytes(
                        req.namespace,
                        req.version,
                        got.info.sha256,
                        got.info.format,
                        got.signatures,
                        got.content or b"",
                    )
                    content = own_variant(content, got.info, self.labels)
                except Refused as no:
                    return ResyncReply(ok=False, reason=no.reason)
            try:
                written = await offload.run(ns.disk.apply, req.version, req.sha256, content)
            except (ConfbusError, OSError) as exc:
                return ResyncReply(ok=False, reason=f"re-install failed: {exc}")
            await self._refresh(ns)
        log.warning(
            "re-synced a drifted live file",
            extra={"namespace": req.namespace, "node": self.node, "version": req.version},
        )
        await self._publish_heartbeat(bus)
        if written and self.on_change_cmd:
            await run_on_change(self.on_change_cmd, ns.disk.live_path, req.namespace, req.version)
        return ResyncReply(ok=True, reinstalled=written, source=source if written else "")

    # -- heartbeats ----------------------------------------------------------------------

    async def _heartbeats(self, bus: Bus) -> None:
        subject = subjects.heartbeat(self.node)
        while True:
            self._beat.begin()
            if self._guard is not None:  # another live agent keeps this node id: stop here
                self._guard.check()  # (after ``begin``: a refusal from now on wakes the wait)
            await self._publish_heartbeat(bus, subject=subject)
            await self._beat.wait(heartbeat_delay(self.heartbeat_interval_s))

    def heartbeat(self) -> Heartbeat:
        """This agent's heartbeat, as of now. Built again only when what it says changed — a
        namespace's state (each 2PC step and each drift check that found a change replace it)
        or readiness to vote; else the last one with the time of now. The rest (node, labels,
        interval, start, instance, health source) is the agent's for its life."""
        ready = self.ready
        basis = (ready, *(ns.state for ns in self.namespaces.values()))
        built = self._built
        if (
            built is not None
            and len(built[0]) == len(basis)
            and all(a is b for a, b in zip(built[0], basis, strict=True))
        ):
            return msgspec.structs.replace(built[1], at=utcnow())
        hb = Heartbeat(
            node=self.node,
            labels=self.labels,
            namespaces=[ns.state.to_namespace_state() for ns in self.namespaces.values()],
            interval_s=self.heartbeat_interval_s,
            started_at=self.started_at,
            ready=ready,
            instance=self.instance,
            health_source=bool(self.health_url),
        )
        self._built = (basis, hb)
        return hb

    async def _publish_heartbeat(
        self, bus: Bus, refresh: bool = True, *, subject: str | None = None
    ) -> None:
        if refresh:
            for ns in self.namespaces.values():
                # Drift shows in the heartbeat: a live file whose stat moved since it was last
                # hashed is hashed again (the full snapshot, in a worker thread); one that did
                # not costs a stat here (``RecordedDisk.live_unchanged``).
                if not ns.disk.live_unchanged(ns.state.live_sha256):
                    await self._refresh(ns)
        try:
            subject = subject or subjects.heartbeat(self.node)
            await bus.nc.publish(subject, encode(self.heartbeat()))
            self.bus_connected = bus.nc.is_connected
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.OutboundBufferLimitError,
        ):
            self.bus_connected = False


async def resolve_doubts(bus: Bus, agents: Sequence[NodeAgent]) -> None:
    """Each namespace of ``agents`` in doubt past its prepare's timeout asks how its transaction
    ended (``NodeAgent._resolve``), looked at every half second; one loop for all the agents of a
    host, each namespace resolved in a task of its own, one at a time per namespace."""
    busy: set[int] = set()  # id() of the namespaces being resolved now

    async def resolve(agent: NodeAgent, ns: _Namespace, txid: str) -> None:
        try:
            async with ns.lock:
                if ns.state.prepared is not None:
                    await agent._resolve(bus, ns, ns.state.prepared.txid)
        except ConfbusError as exc:
            log.info("still in doubt", extra={"txid": txid, "error": str(exc)})
        except Exception:  # keep resolving; a surprise here must not stop the agent
            log.exception("resolving failed", extra={"txid": txid})
        finally:
            busy.discard(id(ns))

    async with anyio.create_task_group() as tg:
        while True:
            await anyio.sleep(0.5)
            for agent in agents:
                for ns in agent.namespaces.values():
                    prepared = ns.state.prepared
                    if prepared is None or ns.prepared_at is None or id(ns) in busy:
                        continue
                    if time.monotonic() - ns.prepared_at < prepared.timeout_s:
                        continue  # the coordinator is still counting votes
                    busy.add(id(ns))
                    tg.start_soon(resolve, agent, ns, prepared.txid)
