"""``Client.status_at``, ``why`` and ``diff_fleet``: the fleet at a past moment (docs/design.md
§8.10), reconstructed by ``_reconstruct`` and answered with the Structs of ``_fleet``.

Both are imported on the first question, not with the client: every ``Client`` has these
methods, and most commands (``confbus publish``) never ask.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

from confbus.client._connection import Connection
from confbus.client._names import check_namespace, check_node
from confbus.client._variants import Variants
from confbus.runtime.errors import InvalidInput

if TYPE_CHECKING:
    from confbus.client._fleet import FleetAt, FleetDiff, Why
    from confbus.runtime.since import Moment


# How long ``status_at`` waits for the store to tell which variant a node's bytes are.


class Timeline(Variants):
    """The client's reading of the past (docs/design.md §8.10)."""

    async def status_at(self, namespace: str, at: Moment) -> FleetAt:
        """The fleet as it was at ``at`` (a stream sequence, a time, or a duration ago): per
        node its applied version and sha256, target, liveness and wave; the namespace's
        production, last known good and rollout. ``NotFound`` when the stream no longer holds
        that moment."""
        from confbus.client import _reconstruct as past
        from confbus.client._fleet import fleet_at

        ns = check_namespace(namespace)
        edges = await past.bounds(self)
        seq = await past.moment_seq(self, at, edges)
        rec = await past.reconstruct(self, ns, seq, edges)
        fleet = fleet_at(
            rec.state,
            at=await _shown_time(self, at, seq),
            checkpoint_seq=rec.checkpoint_seq,
            events_read=rec.events_read,
        )
        # Which variant each node ran then (docs/design.md §2.6), told by the sha256 it
        # announced. ``fleet_at`` named those whose bytes are their version's own; the others
        # are looked up in the store, briefly — the past itself comes from the audit log
        # alone, so a store down leaves them unknown.
        ask = {
            n.node: (n.version, n.sha256)
            for n in fleet.nodes
            if n.applied == "known" and n.variant is None
        }
        if not ask:
            return fleet
        named = await self.node_variants(ns, ask, best_effort=True)
        nodes = [
            msgspec.structs.replace(n, variant=named[n.node]) if named.get(n.node) else n
            for n in fleet.nodes
        ]
        return msgspec.structs.replace(fleet, nodes=nodes)

    async def why(self, namespace: str, node: str, at: Moment | None = None) -> Why:
        """The chain of events that put ``node`` on its version (now, or at ``at``), newest
        first, each step with its event's stream sequence. ``NotFound`` for a node no event
        of the namespace names up to then."""
        from confbus.client import _reconstruct as past
        from confbus.client._fleet import why

        ns = check_namespace(namespace)
        check_node(node)
        edges = await past.bounds(self)
        seq = await past.moment_seq(self, edges.last_seq if at is None else at, edges)
        rec = await past.reconstruct(self, ns, seq, edges)
        answer = why(rec.state, node, at=await _shown_time(self, at, seq))
        applied = rec.state.nodes[node].applied if node in rec.state.nodes else None
        if answer.variant is not None or applied is None:
            return answer
        # A variant's bytes: told by the store, as for ``status_at`` (best effort).
        ask = {node: (applied.version, applied.sha256)}
        named = await self.node_variants(ns, ask, best_effort=True)
        return msgspec.structs.replace(answer, variant=named.get(node))

    async def diff_fleet(self, namespace: str, before: Moment, after: Moment) -> FleetDiff:
        """The nodes whose applied version changed between two moments, and what changed it."""
        from confbus.client import _reconstruct as past
        from confbus.client._fleet import diff

        ns = check_namespace(namespace)
        edges = await past.bounds(self)
        lo = await past.moment_seq(self, before, edges)
        hi = await past.moment_seq(self, after, edges)
        if hi < lo:
            raise InvalidInput(f"--to (seq {hi}) is before --from (seq {lo})", where="to")
        a = (await past.reconstruct(self, ns, lo, edges)).state
        b = (await past.reconstruct(self, ns, hi, edges)).state
        return msgspec.structs.replace(
            diff(a, b),
            from_at=await _shown_time(self, before, lo),
            to_at=await _shown_time(self, after, hi),
        )


async def _shown_time(client: Connection, at: Moment | None, seq: int) -> datetime | None:
    """The moment as asked (a time), else the stored time of its sequence."""
    from confbus.client._reconstruct import stored_time

    if isinstance(at, datetime):
        return at if at.tzinfo is not None else at.astimezone()
    if isinstance(at, timedelta):
        return datetime.now(UTC) - at
    return await stored_time(client, seq)
