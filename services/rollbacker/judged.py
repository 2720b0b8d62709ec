"""Every alert the rollbacker receives leaves an event on ``cfg.event.<ns>.alert.*``: it started
a rollback (``alert.acted``), started nothing and why (``alert.ignored``: ignored, refused,
busy, held, cooldown, cap), or had been judged already (``alert.duplicate``: Alertmanager
re-sends a firing group every ``repeat_interval``).

A judgement's message id is derived from the alert id, so an alert redelivered after a crash
(judged, recorded in the ledger, not yet acked) announces the judgement it got the first time
again — a no-op in the stream — instead of calling itself a duplicate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import nats.errors

from confbus.runtime.bus import Bus
from confbus.runtime.errors import ConfbusError
from confbus.runtime.events import emit
from confbus.schemas.events import AlertActed, AlertDuplicate, AlertIgnored, AlertJudgement
from confbus.schemas.health import Alert
from confbus.schemas.state import SeenAlert

log = logging.getLogger("confbus.rollbacker")

DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Judged:
    outcome: str  # started | ignored | refused | busy | held | cooldown | cap | duplicate
    detail: str
    version: int | None = None
    rollback_id: str | None = None
    earlier: SeenAlert | None = None  # a duplicate: the judgement the alert got first

    @classmethod
    def again(cls, earlier: SeenAlert, version: int | None) -> Judged:
        detail = f"alert already judged: {earlier.outcome}" + (
            f" ({earlier.detail})" if earlier.detail else ""
        )
        return cls(DUPLICATE, detail, version, earlier.rollback_id, earlier)


def judgement_event(alert: Alert, judged: Judged, actor: str) -> AlertJudgement:
    kind: type[AlertJudgement]
    if judged.outcome == "started":
        kind = AlertActed
    elif judged.outcome == DUPLICATE:
        kind = AlertDuplicate
    else:
        kind = AlertIgnored
    return kind(
        namespace=alert.namespace,
        actor=actor,
        reason=judged.detail[:1000],
        alert_id=alert.alert_id,
        source=alert.source,
        rule=alert.rule,
        version=judged.version,
        outcome=judged.outcome,
        rollback_id=judged.rollback_id,
    )


async def announce_judgement(
    bus: Bus, alert: Alert, judged: Judged, *, actor: str, redelivered: bool = False
) -> None:
    """Emit the judgement's event. A failure is logged, not raised: the decision is in the
    ledger already, and a nak would only make the alert a duplicate of itself."""
    first = f"alert:{alert.namespace}:{alert.alert_id}:{alert.state}"
    if judged.earlier is not None and redelivered:
        again = Judged(
            judged.earlier.outcome,
            judged.earlier.detail,
            judged.version,
            judged.earlier.rollback_id,
        )
        event, msg_id = judgement_event(alert, again, actor), first
    elif judged.outcome == DUPLICATE:
        event, msg_id = judgement_event(alert, judged, actor), None  # each re-send is one more
    else:
        event, msg_id = judgement_event(alert, judged, actor), first
    try:
        await emit(bus, event, msg_id=msg_id)
    except (ConfbusError, nats.errors.Error) as exc:
        log.warning(
            "alert judgement not emitted",
            extra={"alert_id": alert.alert_id, "outcome": judged.outcome, "error": str(exc)},
        )
