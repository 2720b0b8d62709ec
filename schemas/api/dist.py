"""``cfg.api.dist.*``: the distributor's request/reply API (status, rollouts and their
controls)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from schemas.events import NodeOutcome
from schemas.names import Namespace, NodeId

SERVICE = "dist"

Liveness = Literal["live", "suspect", "gone"]
RolloutState = Literal["running", "paused", "completed", "failed", "superseded", "rolled_back"]


class StatusRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace


class NodeStatus(msgspec.Struct, frozen=True, kw_only=True):
    node: NodeId
    liveness: Liveness
    applied_version: int | None
    sha256: str | None
    target_version: int | None
    last_heartbeat: datetime | None
    labels: dict[str, str] = {}
    status: str = "ok"  # ok | no-config | in-doubt | drift | catching-up | failing: <reason>
    attempts: int = 0


class StatusReply(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    production_version: int | None
    production_sha256: str | None
    nodes: list[NodeStatus]


class RolloutRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace


class WaveInfo(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    nodes: list[NodeId]
    state: Literal["pending", "switching", "baking", "done", "failed", "skipped"]
    txid: str | None = None


class RolloutInfo(msgspec.Struct, frozen=True, kw_only=True):
    rollout_id: str
    namespace: Namespace
    version: int
    strategy: str
    state: RolloutState
    waves: list[WaveInfo] = []
    current_wave: int = 0
    report: list[NodeOutcome] = []
    reason: str = ""
    started_at: datetime | None = None
    updated_at: datetime | None = None


class RolloutReply(msgspec.Struct, frozen=True, kw_only=True):
    rollout: RolloutInfo | None


class ControlRequest(msgspec.Struct, frozen=True, kw_only=True):
    """pause / resume / abort the namespace's running rollout."""

    namespace: Namespace
    actor: str = ""
    reason: str = ""
