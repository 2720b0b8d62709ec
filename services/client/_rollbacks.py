"""Rollbacks (``cfg.api.rollback.start``), followed on the audit log to their end."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import msgspec

from confbus.client._errors import WaitTimedOut, seconds
from confbus.client._events import Events
from confbus.client._names import check_namespace
from confbus.schemas import subjects
from confbus.schemas.api import rollback as rollback_api
from confbus.schemas.events import AnyEvent, RollbackCompleted, RollbackStarted, RollbackStuck
from confbus.schemas.streams import CFG_EVENTS


class Rollbacks(Events):
    """The client's side of the rollbacker."""

    async def rollback(
        self,
        namespace: str,
        *,
        to: int | None = None,
        reason: str = "",
        strategy: str | None = None,
        actor: str = "",
        wait: bool = False,
        timeout: float = 300.0,
        progress: Callable[[AnyEvent], object] | None = None,
        force: bool = False,
    ) -> rollback_api.RollbackReply:
        """Roll ``namespace`` back to version ``to`` (None: its last known good), as a new
        version, batch by batch (``strategy``: ``all-at-once`` or ``batches:N``; None: the
        policy's).

        Returns the rollbacker's answer (``state`` ``started`` or ``refused`` with the
        reason; a target the namespace's current policy would refuse is refused unless
        ``force``, which is then recorded in the rollback's events). With ``wait``: once it
        ended — ``completed`` (``new_version`` runs everywhere) or ``stuck`` (the reason;
        nothing further is switched) — and ``WaitTimedOut`` if it did not end within
        ``timeout`` (it goes on). ``progress`` is called, while waiting, with each event of
        the namespace from the moment the rollback was asked for (its steps, the switches
        and the health verdicts on its batches).
        """
        req = rollback_api.RollbackRequest(
            namespace=check_namespace(namespace),
            to=to,
            reason=reason,
            strategy=strategy,
            actor=actor,
            force=force,
        )
        if not wait:
            return await self.call(rollback_api.START, req)
        # Read the rollback's events from where the stream is now: none can slip past.
        last = (await self.bus.js.stream_info(CFG_EVENTS.name)).state.last_seq
        reply = await self.call(rollback_api.START, req)
        if reply.state != "started":
            return reply
        rid = reply.rollback_id
        with anyio.move_on_after(timeout):
            flt = subjects.event(namespace, "rollback.>")
            if progress is not None:
                flt = subjects.events_of(namespace)
            async for item in self.events(flt, from_seq=last + 1, follow=True):
                ev = item.event
                if progress is not None and ev is not None:
                    progress(ev)
                if isinstance(ev, RollbackStarted) and ev.rollback_id == rid:
                    reply = msgspec.structs.replace(reply, new_version=ev.new_version)
                elif isinstance(ev, RollbackCompleted) and ev.rollback_id == rid:
                    return msgspec.structs.replace(
                        reply, state="completed", new_version=ev.new_version
                    )
                elif isinstance(ev, RollbackStuck) and ev.rollback_id == rid:
                    return msgspec.structs.replace(reply, state="stuck", reason=ev.reason)
        raise WaitTimedOut(
            f"rollback {rid} of {namespace} did not end within {seconds(timeout)}; it goes on "
            f"(confbus replay '{namespace}.rollback.>' shows where it is)"
        )
