"""Notifications of rollout outcomes: the rollbacker follows the distributor's
``rollout.completed`` / ``failed`` / ``rolled_back`` / ``superseded`` events (a durable consumer
on ``CFG_EVENTS`` that starts at the events stored after it was created — history is not
news) and sends each to the namespace's webhooks and mail, as it does for its own rollback
steps (``announce``). The event's message id is the notification's ``event_id``: a redelivered
event is not sent twice by a replica, and a receiver can drop what it has seen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg

from confbus.rollbacker.notify import Notifier
from confbus.rollbacker.peers import Peers
from confbus.runtime.events import event_type
from confbus.schemas.events import (
    AnyEvent,
    NodeOutcome,
    RolloutCompleted,
    RolloutFailed,
    RolloutRolledBack,
    RolloutSuperseded,
)

log = logging.getLogger("confbus.rollbacker")

FILTER = "cfg.event.*.rollout.>"
Outcome = RolloutCompleted | RolloutFailed | RolloutRolledBack | RolloutSuperseded


def _nodes(report: list[NodeOutcome], outcome: str = "applied") -> list[str]:
    return sorted(n.node for n in report if n.outcome == outcome)


def describe(ev: Outcome) -> tuple[str, dict[str, Any]]:
    """The Slack-compatible text of an outcome and its facts for generic receivers."""
    ns, v = ev.namespace, ev.version
    applied = _nodes(ev.report)
    facts: dict[str, Any] = {"version": v, "rollout_id": ev.rollout_id, "nodes": applied}
    on = f"{len(applied)} node(s)" + (f" ({', '.join(applied[:20])})" if applied else "")
    why = f" Why: {ev.reason}" if ev.reason else ""
    if isinstance(ev, RolloutCompleted):
        good = "; last known good" if ev.last_good else ""
        text = f"confbus: rollout of {ns} v{v} completed on {on} in {ev.seconds:.1f}s{good}."
        facts["last_good"] = ev.last_good
    elif isinstance(ev, RolloutFailed):
        refused = sorted(n.node for n in ev.report if n.outcome not in ("applied", "pending"))
        facts["failed_nodes"] = refused
        where = f"at wave {ev.wave + 1}" if ev.wave >= 0 else "before any wave"
        then = " The rollbacker takes over." if ev.handed_to_rollbacker else ""
        text = f"confbus: rollout of {ns} v{v} FAILED {where}; on {on}.{why}{then}"
    elif isinstance(ev, RolloutRolledBack):
        text = f"confbus: rollout of {ns} v{v} was rolled back; it had reached {on}.{why}"
    else:
        facts["by_version"] = ev.by_version
        text = f"confbus: rollout of {ns} v{v} superseded by v{ev.by_version}; on {on}."
    return text, facts


@dataclass
class OutcomeNotifier:
    peers: Peers
    notifier: Notifier

    async def on_event(self, ev: AnyEvent, msg: Msg) -> None:
        if not isinstance(ev, Outcome):
            return  # started, wave, baked, paused...: steps, not outcomes
        policy = await self.peers.policy(ev.namespace)  # Unavailable: nak, retried later
        if not policy.webhooks and policy.mail is None:
            return
        headers = msg.headers or {}
        event_id = headers.get("Nats-Msg-Id") or f"{ev.namespace}:{msg.metadata.sequence.stream}"
        text, facts = describe(ev)
        payload = {
            "text": text,
            "event_id": event_id,
            "event": event_type(ev),
            "namespace": ev.namespace,
            "actor": ev.actor,
            "reason": ev.reason,
            "at": ev.at.isoformat(),
            **facts,
        }
        subject = f"confbus {event_type(ev)}: {ev.namespace} v{ev.version}"
        self.notifier.send(policy.webhooks, payload, mail=policy.mail, subject=subject)
