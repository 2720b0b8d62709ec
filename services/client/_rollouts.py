"""Rollouts and the fleet (the distributor, ``cfg.api.dist.*``): status, the rollout record,
pause / resume / abort, waiting for a rollout's end, and forgetting a node gone for good."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import anyio
import msgspec
import nats.errors
import nats.js.errors

from confbus.client._errors import RolloutWaitTimeout
from confbus.client._events import Events
from confbus.client._names import check_namespace, check_node
from confbus.runtime.errors import InvalidInput, Unavailable
from confbus.runtime.failpoints import failpoint
from confbus.runtime.retry import BACKOFF
from confbus.schemas.api import dist as dist_api
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.events import AnyEvent
from confbus.schemas.state import rollout_key

log = logging.getLogger("confbus.client")

# The events that end a rollout, and the state each ends it in.
_ROLLOUT_ENDS: dict[str, dist_api.RolloutState] = {
    "rollout.completed": "completed",
    "rollout.failed": "failed",
    "rollout.superseded": "superseded",
    "rollout.rolled_back": "rolled_back",
}


class Rollouts(Events):
    """The client's side of the distributor."""

    async def fleet_status(self, namespace: str) -> dist_api.StatusReply:
        """Production version and, per node: liveness, applied version, sha256, target."""
        request = dist_api.StatusRequest(namespace=check_namespace(namespace))
        return await self.call(dist_api.STATUS, request)

    async def rollout_info(self, namespace: str) -> dist_api.RolloutInfo | None:
        """The namespace's current or last rollout (from the distributor; straight from
        ``CFG_STATE`` when no distributor answers)."""
        check_namespace(namespace)
        try:
            # One try: with no distributor answering, the record says the same.
            request = dist_api.RolloutRequest(namespace=namespace)
            reply = await self.call(dist_api.ROLLOUT, request, retry_for=0)
            return reply.rollout
        except Unavailable:
            return await self._rollout_record(namespace)

    async def rollout_control(
        self, op: str, namespace: str, *, reason: str = "", actor: str = ""
    ) -> dist_api.RolloutInfo:
        """``pause``, ``resume`` or ``abort`` the namespace's rollout (``Conflict`` if there is
        none in a state that allows it)."""
        control = dist_api.CONTROLS.get(op)
        if control is None:
            raise InvalidInput(f"unknown rollout control {op!r}", where="op")
        request = dist_api.ControlRequest(
            namespace=check_namespace(namespace), actor=actor, reason=reason
        )
        reply = await self.call(control, request)
        assert reply.rollout is not None
        return reply.rollout

    async def forget_node(
        self, node: str, *, actor: str = "", reason: str = ""
    ) -> dist_api.ForgetReply:
        """Forget a node gone for good (its records and targets; ``node.forgotten`` in each
        namespace it followed). ``Conflict`` while it is live, ``NotFound`` if unknown."""
        request = dist_api.ForgetRequest(node=check_node(node), actor=actor, reason=reason)
        return await self.call(dist_api.FORGET, request)

    async def wait_rollout(
        self,
        namespace: str,
        version: int,
        timeout: float = 600.0,
        progress: Callable[[AnyEvent], object] | None = None,
        *,
        since: datetime | timedelta | None = None,
    ) -> dist_api.RolloutInfo:
        """Wait until the rollout of ``version`` ends, and return it.

        It ends ``completed``, ``failed``, ``superseded`` (a newer version took over, also
        before it started) or ``rolled_back``. ``progress`` is called with each
        ``cfg.event.<ns>.rollout.*`` event of this version as it comes (started, each wave,
        each bake, paused, resumed, the end). Rollout events since ``since`` (default: the
        last 10 minutes) are replayed first, so a rollout that ran before the call is seen
        too; the ``rollout.<ns>`` record in ``CFG_STATE`` is checked as well. Raises
        ``RolloutWaitTimeout`` (an ``Unavailable``) after ``timeout`` seconds.
        """
        check_namespace(namespace)
        found: list[dist_api.RolloutInfo] = []  # the record, once it shows the end
        ended: list[tuple[Any, dist_api.RolloutState]] = []  # the event of the end

        async def from_events(scope: anyio.CancelScope) -> None:
            # The bus coming back (an election longer than a replay tolerates) ends a reading
            # of the events: a new one picks up after the last event seen, until ``timeout``.
            after: int | None = None
            tries = 0
            while True:
                try:
                    async for item in self.events(
                        f"cfg.event.{namespace}.rollout.>",
                        since=since if since is not None else timedelta(minutes=10),
                        from_seq=None if after is None else after + 1,
                        follow=True,
                    ):
                        tries = 0
                        after = item.seq
                        if on_event(item.event):
                            scope.cancel()
                            return
                except Unavailable as exc:
                    tries += 1
                    log.info("following rollout events again", extra={"error": str(exc)})
                    await anyio.sleep(BACKOFF.delay(tries))

        def on_event(ev: AnyEvent | None) -> bool:
            """Hand one event on; True once the rollout ended (``found`` says how)."""
            if ev is None or getattr(ev, "version", None) != version:
                return False
            if progress is not None:
                progress(ev)
            tag = ev.__struct_config__.tag
            if tag not in _ROLLOUT_ENDS:
                return False
            ended.append((ev, _ROLLOUT_ENDS[tag]))
            return True

        async def from_record(scope: anyio.CancelScope) -> None:
            while True:
                await failpoint("client.wait_rollout.poll")
                try:
                    rec = await self._rollout_record(namespace)
                except Unavailable:
                    rec = None  # the bus is coming back (a restart): ask again in a second
                if rec is not None and rec.version == version and not rec.active:
                    await anyio.sleep(1.0)  # let the event (and progress) come first
                    found.append(rec)
                    scope.cancel()
                    return
                await anyio.sleep(1.0)

        try:
            with anyio.fail_after(timeout):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(from_events, tg.cancel_scope)
                    tg.start_soon(from_record, tg.cancel_scope)
                if found:
                    return found[0]
                ev, state = ended[0]
                try:
                    record = await self._rollout_record(namespace)
                except Unavailable:
                    record = None  # the bus is coming back: the event says enough
        except TimeoutError:
            raise RolloutWaitTimeout(namespace, version, timeout) from None
        if record is not None and record.rollout_id == getattr(ev, "rollout_id", ""):
            return record
        return _rollout_from_event(ev, state)

    async def _rollout_record(self, namespace: str) -> dist_api.RolloutInfo | None:
        try:
            kv = await self.bus.kv("CFG_STATE")
            entry = await kv.get(rollout_key(namespace))
        except (nats.js.errors.NotFoundError, nats.js.errors.BucketNotFoundError):
            return None
        except nats.errors.Error as exc:  # a timeout, no responders, a 503, a reconnect
            raise Unavailable(f"CFG_STATE at {self.nats_url} is not answering: {exc!r}") from exc
        if not entry.value:
            return None
        try:
            rec = dist_api.decode_rollout_info(entry.value)
        except DECODE_ERRORS:
            return None
        return msgspec.structs.replace(rec, outbox=[], revision=entry.revision or 0)


def _rollout_from_event(ev: Any, state: dist_api.RolloutState) -> dist_api.RolloutInfo:
    """The end of a rollout whose record has moved on (a newer rollout of the namespace, or
    a record not readable while the bus comes back): its nodes are the event's report."""
    report = list(getattr(ev, "report", []))
    return dist_api.RolloutInfo(
        rollout_id=ev.rollout_id,
        namespace=ev.namespace,
        version=ev.version,
        strategy="",
        state=state,
        report=report,
        targets=[n.node for n in report if n.outcome != "away"],
        away=[n.node for n in report if n.outcome == "away"],
        reason=ev.reason,
        superseded_by=getattr(ev, "by_version", None),
        finished_at=ev.at,
        updated_at=ev.at,
    )
