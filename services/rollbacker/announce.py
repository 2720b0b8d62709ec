"""Telling the world: audit events on ``cfg.event.<ns>.rollback.*``, notifications (webhooks
and mail, ``notify``), and — when a rollback cannot go on — an alert of its own
(``source="rollbacker"``).

Every event has a message id derived from the rollback id, so a step repeated after a crash
or a takeover is a no-op in ``CFG_EVENTS``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, TypeVar

from confbus.rollbacker.notify import Notifier
from confbus.rollbacker.peers import Peers
from confbus.runtime.errors import ConfbusError
from confbus.runtime.events import emit, event_type
from confbus.schemas.events import RollbackBatch, RollbackCompleted, RollbackStarted, RollbackStuck
from confbus.schemas.health import Alert
from confbus.schemas.policy import Policy
from confbus.schemas.state import BatchResult, Rollback

log = logging.getLogger("confbus.rollbacker")

E = TypeVar("E", bound=RollbackStarted | RollbackBatch | RollbackCompleted | RollbackStuck)


def _pct(share: float | None) -> str:
    return "no health data" if share is None else f"{share:.0%} healthy"


def _what(rb: Rollback) -> str:
    frm = f"v{rb.from_version}" if rb.from_version is not None else "its current version"
    new = f" as v{rb.new_version}" if rb.new_version is not None else ""
    return f"{rb.namespace}: {frm} → v{rb.to_version}'s config{new}"


@dataclass
class Announcer:
    peers: Peers
    notifier: Notifier
    actor: str

    async def started(self, rb: Rollback, policy: Policy) -> None:
        msg_id, ev = await self._emit(
            rb,
            "started",
            RollbackStarted,
            actor=rb.actor or self.actor,
            reason=rb.reason,
            from_version=rb.from_version or 0,
            to_version=rb.to_version,
            new_version=rb.new_version,
            alert_id=rb.alert_id,
            batches=rb.batches,
        )
        nodes = sum(len(b) for b in rb.batches)
        self._notify(
            policy,
            msg_id,
            ev,
            f"confbus: rolling back {_what(rb)} on {nodes} node(s) in {len(rb.batches)} "
            f"batch(es) ({rb.strategy}). Why: {rb.reason or 'not given'}",
            rb,
            nodes=sorted(n for b in rb.batches for n in b),
        )

    async def batch(self, rb: Rollback, result: BatchResult, policy: Policy) -> None:
        msg_id, ev = await self._emit(
            rb,
            f"batch:{result.index}",
            RollbackBatch,
            reason=f"verdict {result.verdict or 'none'}",
            batch=result.index,
            nodes=result.nodes,
            healthy_share=result.healthy_share,
            txids=result.txids,
        )
        self._notify(
            policy,
            msg_id,
            ev,
            f"confbus: rollback of {rb.namespace} batch {result.index + 1}/{len(rb.batches)}: "
            f"{len(result.switched)}/{len(result.nodes)} node(s) restored, "
            f"{_pct(result.healthy_share)}",
            rb,
            batch=result.index,
            healthy_share=result.healthy_share,
            nodes=result.switched,
        )

    async def completed(self, rb: Rollback, seconds: float, policy: Policy) -> None:
        assert rb.new_version is not None
        msg_id, ev = await self._emit(
            rb,
            "completed",
            RollbackCompleted,
            reason=rb.reason,
            new_version=rb.new_version,
            seconds=seconds,
        )
        restored = sorted(n for b in rb.done for n in b.switched)
        self._notify(
            policy,
            msg_id,
            ev,
            f"confbus: rolled back {_what(rb)}: {len(restored)} node(s) restored in "
            f"{seconds:.2f}s ({', '.join(restored[:20]) or 'none'}). "
            f"Why: {rb.reason or 'not given'}",
            rb,
            seconds=seconds,
            nodes=restored,
        )

    async def stuck(
        self,
        rb: Rollback,
        batch: int,
        share: float | None,
        detail: str,
        policy: Policy,
        threshold: float | None = None,
        unhealthy: list[str] | None = None,
    ) -> None:
        """Emit ``rollback.stuck`` and raise an alert; ``batch`` -1: before any batch."""
        msg_id, ev = await self._emit(
            rb, "stuck", RollbackStuck, reason=detail, batch=batch, healthy_share=share
        )
        where = f"at batch {batch + 1}/{len(rb.batches)}" if batch >= 0 else "before any batch"
        text = (
            f"confbus: rollback of {rb.namespace} is STUCK {where}: {detail}. "
            "Nothing further is switched; an operator must act (confbus rollback "
            f"{rb.namespace} --to VERSION)."
        )
        self._notify(
            policy,
            msg_id,
            ev,
            text,
            rb,
            batch=batch,
            healthy_share=share,
            nodes=sorted(unhealthy or []),
        )
        try:
            await self.peers.raise_alert(
                Alert(
                    alert_id=f"{rb.rollback_id}:stuck",
                    namespace=rb.namespace,
                    version=rb.new_version if rb.new_version is not None else rb.from_version,
                    rule="rollback_stuck",
                    value=share,
                    threshold=threshold,
                    nodes=unhealthy or [],
                    source="rollbacker",
                    summary=text,
                )
            )
        except ConfbusError as exc:
            log.warning("could not raise the stuck alert", extra={"error": str(exc)})

    async def _emit(
        self,
        rb: Rollback,
        step: str,
        event: type[E],
        *,
        reason: str,
        actor: str = "",
        **details: Any,
    ) -> tuple[str, E]:
        """Emit an event of ``rb`` (its namespace and id; said by this rollbacker unless
        ``actor`` is given). Its message id is the rollback's id and ``step``: the step repeated
        after a crash or a takeover is a no-op. Returns that id and the event."""
        ev = event(
            namespace=rb.namespace,
            actor=actor or self.actor,
            reason=reason,
            rollback_id=rb.rollback_id,
            **details,
        )
        msg_id = f"rollback:{rb.rollback_id}:{step}"
        await emit(self.peers.bus, ev, msg_id=msg_id)
        return msg_id, ev

    def _notify(
        self, policy: Policy, event_id: str, ev: Any, text: str, rb: Rollback, **extra: Any
    ) -> None:
        log.info(text, extra={"namespace": rb.namespace, "rollback_id": rb.rollback_id})
        payload: dict[str, Any] = {
            "text": text,
            "event_id": event_id,
            "event": event_type(ev),
            "namespace": rb.namespace,
            "rollback_id": rb.rollback_id,
            "from_version": rb.from_version,
            "to_version": rb.to_version,
            "new_version": rb.new_version,
            "batches": len(rb.batches),
            "trigger": rb.trigger,
            "alert_id": rb.alert_id,
            "actor": rb.actor or self.actor,
            "reason": rb.reason,
            "at": ev.at.isoformat(),
            **extra,
        }
        subject = f"confbus {event_type(ev)}: {_what(rb)}"
        self.notifier.send(policy.webhooks, payload, mail=policy.mail, subject=subject)
