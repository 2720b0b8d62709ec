"""``cfg.api.health.*``: verdicts from the health-watcher (used between waves and batches)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from schemas.names import Namespace, NodeId

SERVICE = "health"

Verdict = Literal["pass", "fail", "no_data"]


class VerdictRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    version: int
    nodes: list[NodeId]
    since: datetime | None = None  # only samples taken after this (e.g. the wave's commit)
    window_s: float | None = None  # None: the rules' own windows


class RuleResult(msgspec.Struct, frozen=True, kw_only=True):
    rule: str
    value: float | None
    threshold: float
    ok: bool | None  # None: not enough samples
    samples: int = 0


class VerdictReply(msgspec.Struct, frozen=True, kw_only=True):
    verdict: Verdict
    samples: int = 0
    healthy_nodes: list[NodeId] = []
    unhealthy_nodes: list[NodeId] = []
    rules: list[RuleResult] = []
    reason: str = ""
