"""``cfg.api.rollback.*``: manual rollbacks (``confbus rollback``). Automatic ones start from
alerts on ``cfg.alert.<ns>`` — the distributor hands over a failed bake the same way, as an
alert with ``source="distributor"``."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from confbus.schemas.api.operation import Operation, seconds
from confbus.schemas.names import Namespace, VersionNumber

SERVICE = "rollback"


class RollbackRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    to: VersionNumber | None = None  # None: the last known good
    reason: str = ""
    strategy: str | None = None  # None: the policy's rollback strategy
    actor: str = ""
    # Roll back even to a version the namespace's current policy refuses (its JSON Schema, its
    # format): the force and what it overrode are recorded in the rollback's events.
    force: bool = False


class RollbackReply(msgspec.Struct, frozen=True, kw_only=True):
    rollback_id: str
    namespace: Namespace
    from_version: int | None
    to_version: int
    new_version: int | None
    state: Literal["started", "completed", "stuck", "refused"] = "started"
    reason: str = ""


START = Operation(
    SERVICE,
    "start",
    RollbackRequest,
    RollbackReply,
    seconds(15.0),
    "Start a progressive rollback of a namespace (to its last known good, or to a version).",
    acts=True,
)

OPERATIONS: tuple[Operation[Any, Any], ...] = (START,)
