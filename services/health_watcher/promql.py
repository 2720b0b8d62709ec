"""PromQL health rules: a rule with a ``query`` is judged on what the namespace's Prometheus
(``Policy.prometheus``) says, through its HTTP API (``/api/v1/query``), for verdicts.

The query is templated with the verdict's scope — ``{{namespace}}``, ``{{version}}``,
``{{nodes}}`` (the judged node ids as a regex alternation, for ``confbus_node=~"{{nodes}}"``)
and ``{{window}}`` (the rule's window, cut to the time since the wave's switch, as ``30s``).
Its result must be one number: a scalar, or an instant vector of one series (aggregate with
``sum``/``max``). Empty, NaN or infinite is *no value* — an idle canary (0 / 0) is not proof of
health — and so is a query that failed or did not answer within the source's ``timeout_s``
(at most ``MAX_TIMEOUT_S``, under the callers' verdict deadline): the verdict is then
``no_data`` with the reason, and the caller's ``on_missing_data`` decides.

**Canary against baseline** (``compare``): the same query runs on the judged nodes and on the
*baseline* — the nodes still on another version, over the same window; or, when every node
has moved, the judged nodes themselves over the window that ended 5 s before the switch — and ``op
threshold`` judges ``canary / baseline`` (``ratio``) or ``canary - baseline``
(``difference``). A canary at or under ``floor`` is never bad (0.1 % against 0.05 % is twice
as bad and still fine). ``samples_query`` (when set) gives each side's sample count; a side
under ``min_samples`` makes no value, and the reason says which side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import httpx
import msgspec

from confbus.health_watcher.rules import RuleOutcome, violates
from confbus.runtime.concurrency import gather
from confbus.schemas.policy import HealthRule, PrometheusSource

MAX_TIMEOUT_S = 8.0  # callers wait 10 s for a verdict (distributor, rollbacker)
MIN_WINDOW_S = 1.0
BEFORE_SWITCH_MARGIN_S = 5.0


class QueryFailed(Exception):
    """The query gave no number; the message says why, in words for the verdict."""


@dataclass(frozen=True)
class Scope:
    """What one verdict judges."""

    namespace: str
    version: int
    nodes: Sequence[str]
    now: float
    since: float | None = None
    window_s: float | None = None  # the verdict's override of the rules' windows
    baseline: Sequence[str] = ()  # nodes on another version
    baseline_version: int | None = None


def render(
    query: str, *, namespace: str, version: int | None, nodes: Sequence[str], window: str
) -> str:
    values = {
        "namespace": namespace,
        "version": "" if version is None else str(version),
        # Node ids are [a-z0-9][a-z0-9_-]*: nothing in them is special to a regex.
        "nodes": "|".join(sorted(nodes)),
        "window": window,
    }
    for name, value in values.items():
        query = query.replace("{{" + name + "}}", value)
    return query


def window_of(rule: HealthRule, scope: Scope) -> float:
    span = scope.window_s if scope.window_s is not None and scope.window_s > 0 else rule.window_s
    if scope.since is not None:
        span = min(span, scope.now - scope.since)
    return max(MIN_WINDOW_S, span)


def duration(seconds: float) -> str:
    return f"{math.ceil(seconds)}s"


class _Sample(msgspec.Struct):
    metric: dict[str, str] = {}
    value: tuple[float, str] | None = None


class _Data(msgspec.Struct):
    result_type: str = msgspec.field(name="resultType")
    result: msgspec.Raw = msgspec.Raw(b"null")


class _Answer(msgspec.Struct):
    status: str
    data: _Data | None = None
    error: str = ""


_decode_answer = msgspec.json.Decoder(_Answer).decode
_decode_vector = msgspec.json.Decoder(list[_Sample]).decode
_decode_scalar = msgspec.json.Decoder(tuple[float, str]).decode


def number_of(body: bytes) -> float:
    """The one number of a query's answer; ``QueryFailed`` says what else it was."""
    try:
        answer = _decode_answer(body)
        data = answer.data
        if answer.status != "success" or data is None:
            raise QueryFailed(f"Prometheus refused the query: {answer.error or answer.status}")
        if data.result_type == "scalar":
            raw = _decode_scalar(data.result)[1]
        elif data.result_type == "vector":
            series = _decode_vector(data.result)
            if not series:
                raise QueryFailed("empty result (no series matched)")
            if len(series) > 1:
                raise QueryFailed(
                    f"{len(series)} series in the result; aggregate them to one (sum, max)"
                )
            if series[0].value is None:
                raise QueryFailed("a series without a value")
            raw = series[0].value[1]
        else:
            raise QueryFailed(f"a {data.result_type} result; a rule needs a scalar or one series")
        value = float(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise QueryFailed(f"not a Prometheus answer: {exc}") from None
    if not math.isfinite(value):
        raise QueryFailed(f"{raw} (no traffic in the window?)")
    return value


@dataclass
class Prometheus:
    """Queries through Prometheus's HTTP API, each bounded by the source's timeout."""

    http: httpx.AsyncClient

    async def query(self, source: PrometheusSource, promql: str, at: float) -> float:
        timeout = min(max(source.timeout_s, 0.1), MAX_TIMEOUT_S)
        url = source.url.rstrip("/") + "/api/v1/query"
        try:
            with anyio.fail_after(timeout):
                resp = await self.http.post(
                    url, data={"query": promql, "time": f"{at:.3f}"}, timeout=timeout
                )
        except (TimeoutError, httpx.TimeoutException):
            raise QueryFailed(f"{source.url} did not answer within {timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise QueryFailed(f"{source.url} cannot be reached: {exc!r}") from None
        if resp.status_code >= 500 or resp.status_code in (404, 405):
            raise QueryFailed(f"{source.url} answered HTTP {resp.status_code}")
        return number_of(resp.content)  # 400/422 carry Prometheus's own error


@dataclass(frozen=True)
class Side:
    """One run of a rule: its value and sample count, or why it has none."""

    query: str
    value: float | None = None
    samples: int = 0
    why: str = ""


async def run_side(
    prom: Prometheus,
    source: PrometheusSource,
    rule: HealthRule,
    scope: Scope,
    *,
    nodes: Sequence[str],
    version: int | None,
    window: float,
    at: float,
) -> Side:
    q = render(
        rule.query, namespace=scope.namespace, version=version, nodes=nodes, window=duration(window)
    )
    if not nodes:
        return Side(q, why="no node to judge")
    try:
        if rule.samples_query:
            sq = render(
                rule.samples_query,
                namespace=scope.namespace,
                version=version,
                nodes=nodes,
                window=duration(window),
            )
            value, count = await gather(prom.query(source, q, at), prom.query(source, sq, at))
            samples = int(count)
            if samples < rule.min_samples:
                return Side(
                    q, samples=samples, why=f"{samples} samples < min_samples={rule.min_samples}"
                )
        else:
            value, samples = await prom.query(source, q, at), 1
    except QueryFailed as exc:
        return Side(q, why=str(exc))
    return Side(q, value, samples)


async def evaluate(
    prom: Prometheus, source: PrometheusSource | None, rule: HealthRule, scope: Scope
) -> RuleOutcome:
    """Judge one PromQL rule (``rule.query`` set) over the scope."""
    span = window_of(rule, scope)
    nodes = tuple(sorted(scope.nodes))

    def outcome(
        value: float | None,
        ok: bool | None,
        side: Side,
        reason: str = "",
        canary: float | None = None,
        baseline: float | None = None,
    ) -> RuleOutcome:
        return RuleOutcome(
            rule,
            value,
            ok,
            side.samples,
            scope.now - span,
            span,
            scope.now,
            bad_nodes=nodes if ok is False else (),
            good_nodes=nodes if ok else (),
            reason=reason,
            query=side.query,
            compare=rule.compare,
            canary=canary,
            baseline=baseline,
        )

    if source is None:
        why = "the policy names no prometheus to query"
        return outcome(None, None, Side(rule.query), why)
    canary_run = run_side(
        prom, source, rule, scope, nodes=nodes, version=scope.version, window=span, at=scope.now
    )
    if not rule.compare:
        canary = await canary_run
        if canary.value is None:
            return outcome(None, None, canary, f"query: {canary.why}")
        return outcome(canary.value, not violates(rule.op, canary.value, rule.threshold), canary)
    if scope.baseline:
        where, base_nodes, base_version = "baseline", tuple(scope.baseline), scope.baseline_version
        at = scope.now
    elif scope.since is not None:
        # Every node moved: the judged nodes themselves, over the window before the switch —
        # ending a little before ``since``: nodes apply a commit before its caller records it.
        where, base_nodes, base_version = "before the switch", nodes, None
        at = scope.since - BEFORE_SWITCH_MARGIN_S
    else:
        canary = await canary_run
        why = "no node runs another version to compare with"
        return outcome(None, None, canary, why, canary.value)
    base_run = run_side(
        prom, source, rule, scope, nodes=base_nodes, version=base_version, window=span, at=at
    )
    canary, base = await gather(canary_run, base_run)  # at once: one timeout for both
    if canary.value is None or base.value is None:
        sides = []
        if canary.value is None:
            sides.append(f"canary side: {canary.why}")
        if base.value is None:
            sides.append(f"{where} side ({', '.join(base_nodes) or 'no nodes'}): {base.why}")
        why = "too little data on the " + "; ".join(sides)
        return outcome(None, None, canary, why, canary.value, base.value)
    value = compared(rule.compare, canary.value, base.value)
    below_floor = canary.value <= rule.floor
    ok = below_floor or not violates(rule.op, value, rule.threshold)
    note = f"canary {canary.value:.4g} vs {where} {base.value:.4g}"
    if below_floor:
        note += f" (the canary is at or under the floor {rule.floor:g})"
    return outcome(value, ok, canary, note, canary.value, base.value)


def compared(how: str, canary: float, baseline: float) -> float:
    if how == "difference":
        return canary - baseline
    if baseline > 0:
        return canary / baseline
    return math.inf if canary > 0 else 1.0  # errors where the baseline has none: worse


async def judge_queries(
    prom: Prometheus, source: PrometheusSource | None, rules: Sequence[HealthRule], scope: Scope
) -> list[RuleOutcome]:
    """Every PromQL rule at once (each query bounded by the source's timeout, so the whole
    verdict waits at most about one timeout for Prometheus)."""
    outcomes: list[RuleOutcome | None] = [None] * len(rules)

    async def one(i: int, rule: HealthRule) -> None:
        outcomes[i] = await evaluate(prom, source, rule, scope)

    async with anyio.create_task_group() as tg:
        for i, rule in enumerate(rules):
            tg.start_soon(one, i, rule)
    return [o for o in outcomes if o is not None]
