"""The rollbacker's view of the other services, through their ``cfg.api.*`` contracts only.

version-store: versions, pointers (``production``, ``last-good``), policy, promote, mark good;
distributor: live nodes and the running rollout; coordinator: one atomic switch; health-watcher:
verdicts. No service is imported: only ``schemas`` and the bus.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from confbus.runtime.api import call
from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.runtime.errors import Conflict, NotFound
from confbus.runtime.propose import publish_change
from confbus.schemas import subjects
from confbus.schemas.api import dist as dist_api
from confbus.schemas.api import health as health_api
from confbus.schemas.api import store as store_api
from confbus.schemas.api import txn as txn_api
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.changes import ChangeProposed, msg_id
from confbus.schemas.events import VersionPromoted, decode_event
from confbus.schemas.health import Alert
from confbus.schemas.policy import Policy
from confbus.schemas.streams import CFG_EVENTS

log = logging.getLogger("confbus.rollbacker")


@dataclass
class Peers:
    bus: Bus
    actor: str

    # -- version-store ---------------------------------------------------------------------

    async def policy(self, namespace: str) -> Policy:
        return await call(
            self.bus, store_api.POLICY_GET, store_api.PolicyGetRequest(namespace=namespace)
        )

    async def version(
        self, namespace: str, ref: str | int, *, content: bool = False
    ) -> store_api.VersionReply | None:
        """The version a ref names, or None if it names nothing (no last good yet, ...)."""
        request = store_api.GetRequest(namespace=namespace, ref=str(ref), content=content)
        try:
            return await call(self.bus, store_api.GET, request)
        except NotFound:
            return None

    async def propose(self, change: ChangeProposed) -> None:
        """Publish the rollback's change; the msg id makes a repeat a no-op for the stream."""
        await publish_change(
            self.bus,
            change.namespace,
            encode(change),
            msg_id=msg_id(change.namespace, change.change_id),
        )

    async def check(self, change: ChangeProposed) -> store_api.DryRunReply:
        """Would the namespace's current policy accept ``change``? (Nothing is stored.)"""
        return await call(self.bus, store_api.DRY_RUN, store_api.DryRunRequest(change=change))

    async def change_status(self, namespace: str, change_id: str) -> store_api.ChangeStatusReply:
        request = store_api.ChangeStatusRequest(namespace=namespace, change_id=change_id)
        return await call(self.bus, store_api.CHANGE_STATUS, request)

    async def promote(self, namespace: str, version: int, reason: str) -> None:
        request = store_api.PromoteRequest(
            namespace=namespace, version=version, actor=self.actor, reason=reason
        )
        await call(self.bus, store_api.PROMOTE, request)

    async def mark_good(self, namespace: str, version: int, reason: str) -> None:
        request = store_api.MarkGoodRequest(
            namespace=namespace, version=version, actor=self.actor, reason=reason
        )
        await call(self.bus, store_api.MARK_GOOD, request)

    async def went_out_at(self, namespace: str, version: int) -> datetime | None:
        """When ``version`` became production: the time of the namespace's last
        ``version.promoted`` event if that event is for this version (None otherwise)."""
        msg = await self.bus.last_msg(
            CFG_EVENTS.name, subjects.event(namespace, "version.promoted")
        )
        if msg is None:
            return None
        try:
            ev = decode_event(msg.data or b"")
        except DECODE_ERRORS:
            return None
        if isinstance(ev, VersionPromoted) and ev.version == version:
            return ev.at
        return None

    # -- distributor -----------------------------------------------------------------------

    async def status(self, namespace: str) -> dist_api.StatusReply:
        return await call(self.bus, dist_api.STATUS, dist_api.StatusRequest(namespace=namespace))

    async def end_rollout(self, namespace: str, reason: str) -> bool:
        """Ask the distributor to stop the namespace's rollout (running, paused, or failed by
        its bake) and end it as ``rolled_back``: ``cfg.api.dist.abort`` with
        ``rolled_back=True``. Whatever version it rolls out: the rollback version is higher
        than all of them. False if there was no such rollout (e.g. it had completed)."""
        request = dist_api.ControlRequest(
            namespace=namespace, actor=self.actor, reason=reason, rolled_back=True
        )
        try:
            await call(self.bus, dist_api.ABORT, request)
        except (NotFound, Conflict):
            return False
        return True

    # -- coordinator -------------------------------------------------------------------------

    async def switch(
        self, namespace: str, version: int, nodes: list[str], vote_timeout_s: float, reason: str
    ) -> txn_api.SwitchReply:
        request = txn_api.SwitchRequest(
            namespace=namespace,
            version=version,
            nodes=nodes,
            timeout_s=vote_timeout_s,
            actor=self.actor,
            reason=reason,
        )
        return await call(self.bus, txn_api.SWITCH, request)

    # -- health-watcher ----------------------------------------------------------------------

    async def verdict(
        self, namespace: str, version: int, nodes: list[str], since: datetime, *, record: bool
    ) -> health_api.VerdictReply:
        request = health_api.VerdictRequest(
            namespace=namespace, version=version, nodes=nodes, since=since, record=record
        )
        return await call(self.bus, health_api.VERDICT, request)

    # -- alerts ------------------------------------------------------------------------------

    async def raise_alert(self, alert: Alert) -> None:
        await self.bus.publish(subjects.alert(alert.namespace), alert, msg_id=alert.alert_id)
