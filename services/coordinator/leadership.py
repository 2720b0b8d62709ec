"""Which coordinator replica leads which namespace: the one holding ``lease.coordinator.<ns>``.

Switch requests reach any replica (the API's queue group). The one that gets a request:

1. holds the namespace's lease → runs the switch, inside ``leases.guard``: if the lease is
   lost meanwhile, the switch is cancelled at once and the caller told to retry (503);
2. sees another live holder → forwards the request to that replica's own endpoint
   (``cfg.api.txn.switch_<instance>``) and relays its answer; if nobody answers there and the
   holder's presence finds no responders twice (its process is gone), takes the lease over
   in a new epoch and runs the switch itself (docs/design.md §4.6);
3. sees the lease free → the namespace's rendezvous owner among the live replicas takes it
   (forwarded to it; we take it ourselves if it does not answer).

A forwarded request is never forwarded again: a replica that cannot lead answers
"not leader, retry" (503), and the caller (the distributor) retries. The lease only says who
should act; the epoch on the head still decides — ``Coordinator.lead`` bumps it when a replica
starts a term, which fences whatever an earlier leader might still try to write.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime

import anyio
import nats.errors

from confbus.coordinator.liveness import Peers
from confbus.coordinator.metrics import CoordinatorMetrics
from confbus.coordinator.twophase import Coordinator
from confbus.runtime.api import ReplicaGone, call
from confbus.runtime.bus import Bus
from confbus.runtime.errors import ConfbusError, Unavailable
from confbus.runtime.leases import Leases, NotHeld
from confbus.schemas.api import txn as api
from confbus.schemas.state import LeaseRecord
from confbus.schemas.subjects import instance_token as token

log = logging.getLogger("confbus.coordinator")

ROLE = "coordinator"
# Forwards of one switch request to a holder that does not answer: between them it waits for
# the lease to be free or the holder to beat again (restarted), so a holder that beats before
# it serves again costs a second wait, not a failed request.
FORWARD_ATTEMPTS = 3


class Leadership:
    def __init__(
        self,
        bus: Bus,
        coord: Coordinator,
        leases: Leases,
        peers: Peers,
        metrics: CoordinatorMetrics,
    ) -> None:
        self.bus = bus
        self.coord = coord
        self.leases = leases
        self.peers = peers
        self.metrics = metrics
        self.instance = coord.instance

    def on_lease_change(self, namespace: str, held: bool) -> None:
        if not held:
            # A lost lease ends the term: leading again starts a new epoch on the head.
            self.coord.forget(namespace)
        self.metrics.leases_held.set(len(self.leases.held_names()))

    async def claim(self, namespace: str) -> bool:
        """Hold the namespace's lease: already ours, or free and now taken (the sweep uses this
        to settle what a leader that went away left undecided)."""
        if self.leases.held(namespace):
            return True
        return await self.leases.acquire(namespace) is not None

    # -- switch requests -------------------------------------------------------------------

    async def switch(self, req: api.SwitchRequest) -> api.SwitchReply:
        """A request from the shared queue group: lead, or forward to who should."""
        ns = req.namespace
        for attempt in range(FORWARD_ATTEMPTS):
            if self.leases.held(ns):
                return await self._run(req)
            record = await self.leases.live_record(ns)
            if record is None or record.holder == self.instance:
                # Free, or named after an earlier life of ours: its rendezvous owner takes it.
                owner = self.peers.owner(ns)
                if record is None and owner != self.instance:
                    try:
                        return await self._forward(owner, req)
                    except Unavailable as exc:
                        if not _unreachable(exc):
                            raise
                        self.peers.forget(owner)  # gone: we take it instead
                if await self.leases.acquire(ns) is not None:
                    return await self._run(req)
                continue  # another replica took it first: forward there
            try:
                return await self._forward(record.holder, req)
            except Unavailable as exc:
                if attempt == FORWARD_ATTEMPTS - 1 or not _unreachable(exc):
                    raise
                # Its holder does not answer: if its process is gone (no responders to its
                # presence, twice), we take the lease over now, at a higher epoch; otherwise
                # (cut off, restarting) the request waits for the lease to run out or the
                # holder to be back, instead of failing at once.
                if await self.leases.acquire(ns) is not None:
                    return await self._run(req)
                await self._until_free(ns, record)
        raise NotHeld(f"{ROLE}.{ns}")

    async def _until_free(self, ns: str, record: LeaseRecord) -> None:
        """Wait until the lease of the holder that did not answer is released, taken by
        another or run out — or until that holder beats again: restarted under its own name,
        it takes its lease back at once (``Leases.acquire``: already ours) and answers."""
        self.peers.forget(record.holder)
        left = (record.expires_at - datetime.now(UTC)).total_seconds() + self.leases.skew_s
        with anyio.move_on_after(min(max(left, 0.0), self.leases.ttl_s + self.leases.skew_s)):
            while True:
                current = await self.leases.live_record(ns)
                if current is None or current.holder != record.holder:
                    return
                if record.holder in self.peers.alive():
                    return
                await anyio.sleep(0.1)  # poll the record: a release frees it early

    async def switch_direct(self, req: api.SwitchRequest) -> api.SwitchReply:
        """A request forwarded to us: lead (taking a free lease), or answer 503."""
        if self.leases.held(req.namespace) or await self.leases.acquire(req.namespace):
            return await self._run(req)
        holder = await self.leases.current_holder(req.namespace)
        raise Unavailable(f"not leader of {req.namespace} (held by {holder or 'nobody'}), retry")

    async def _run(self, req: api.SwitchRequest) -> api.SwitchReply:
        started: list[str] = []
        try:
            with self.leases.guard(req.namespace) as scope:
                reply = await self.coord.switch(
                    req.namespace,
                    req.version,
                    req.nodes,
                    req.timeout_s,
                    actor=req.actor,
                    reason=req.reason,
                    txids=started,
                    sha256=req.sha256,
                    request_id=req.request_id,
                )
        except NotHeld:
            raise Unavailable(f"not leader of {req.namespace}, retry") from None
        if scope.cancelled_caught:
            # We stopped the moment the lease went: the next leader aborts what we left. If
            # someone decided our transaction already, that is a definite answer to give.
            self.metrics.lost_leases.inc()
            decided = None
            if started:  # this request started a transaction: was it decided?
                with anyio.move_on_after(2), contextlib.suppress(ConfbusError, nats.errors.Error):
                    decided = await self.coord.outcome_of(req.namespace, started[-1])
            if decided is None:
                raise Unavailable(f"lost the lease of {req.namespace} during the switch, retry")
            return api.SwitchReply(txid=decided.txid, outcome=decided.outcome)
        return reply

    async def _forward(self, holder: str, req: api.SwitchRequest) -> api.SwitchReply:
        """To the operation only ``holder`` answers (``switch_<holder>``)."""
        log.debug("forwarding a switch", extra={"namespace": req.namespace, "to": holder})
        self.metrics.forwarded.inc()
        # One try: a holder that does not answer is waited out by ``switch`` (its lease), not
        # asked again.
        return await call(self.bus, api.SWITCH_AT.at(token(holder)), req, retry_for=0)


def _unreachable(exc: Unavailable) -> bool:
    """The replica did not answer at all (gone, or cut off), rather than answering 503."""
    return isinstance(
        exc.__cause__, nats.errors.NoRespondersError | nats.errors.TimeoutError | ReplicaGone
    )
