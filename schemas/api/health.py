"""``cfg.api.health.*``: verdicts from the health-watcher (used between waves and batches).

``verdict``: ``pass`` when every rule of the namespace has a value (at least its
``min_samples``) on the given nodes and version since ``since``, and none is broken; ``fail``
when a rule is broken (``rules[].bad_nodes``, ``reason``); ``no_data`` otherwise — never ``pass``
on silence. ``nodes=[]``: every node heard from on that version. ``no_source`` names the judged
nodes no sample can come from (no ``--health-url``, not a scrape target, no PromQL rule): when it
is all of them, waiting for data is pointless. Each answer is recorded as a ``health.verdict``
event unless ``record`` is false (a caller polling until data comes records only the verdict it
acts on). Semantics in ``services/health_watcher/README.md``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from confbus.schemas.api.operation import Operation, seconds
from confbus.schemas.names import Namespace, NodeId, VersionNumber

SERVICE = "health"

Verdict = Literal["pass", "fail", "no_data"]


class VerdictRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    version: VersionNumber
    nodes: list[NodeId]
    since: datetime | None = None  # only samples taken after this (e.g. the wave's commit)
    window_s: float | None = None  # None: the rules' own windows
    record: bool = True  # emit the health.verdict event (false: a poll, not the verdict acted on)


class RuleResult(msgspec.Struct, frozen=True, kw_only=True):
    rule: str
    value: float | None
    threshold: float
    ok: bool | None  # None: not enough samples
    samples: int = 0
    metric: str = ""
    op: str = ""  # with threshold, the *bad* condition: ``value op threshold`` is unhealthy
    window_s: float | None = None  # the window the rule was judged over
    bad_nodes: list[NodeId] = []  # nodes whose own samples break the rule
    reason: str = ""  # why there was no value (no samples, no requests in the window, ...)
    query: str = ""  # a PromQL rule: the query as run (templated) on the judged nodes
    compare: str = ""  # ratio | difference: value is canary against baseline
    canary: float | None = None  # a comparing rule: the judged nodes' own value
    baseline: float | None = None  # a comparing rule: the baseline's value


class VerdictReply(msgspec.Struct, frozen=True, kw_only=True):
    verdict: Verdict
    samples: int = 0
    healthy_nodes: list[NodeId] = []
    unhealthy_nodes: list[NodeId] = []
    rules: list[RuleResult] = []
    reason: str = ""
    # Asked-for nodes that could not be judged on their own (no usable samples): neither
    # healthy nor unhealthy. healthy + unhealthy + unknown = the nodes of the request.
    unknown_nodes: list[NodeId] = []
    evaluated_by: str = ""  # the health-watcher replica that answered
    # Judged nodes from which no sample can come: their agents do not forward health
    # (``--health-url``) and no scrape target or PromQL rule covers them.
    no_source: list[NodeId] = []


VERDICT = Operation(
    SERVICE,
    "verdict",
    VerdictRequest,
    VerdictReply,
    seconds(10.0),
    "Judge the nodes running a version by the namespace's health rules: pass, fail or no_data.",
)

OPERATIONS: tuple[Operation[Any, Any], ...] = (VERDICT,)
