"""Judging samples against a namespace's health rules — pure functions, no I/O.

A rule (``confbus.schemas.policy.HealthRule``) names a metric, and ``op``/``threshold`` describe the
*bad* condition: ``error_rate > 0.05`` means a window whose error rate exceeds 5 % is bad.
It is judged over the samples of one version on a set of nodes, taken in
``[now - window_s, now]`` (and after ``since``, when a verdict asks so):

- ``error_rate``: per node, the increases of the ``errors`` and ``requests`` counters
  (``errors_total`` / ``requests_total`` by default) between consecutive samples in the window —
  a decrease is a counter reset and counts the new value, as Prometheus' ``increase()`` does —
  summed over the nodes: Σ errors increase / Σ requests increase. No request in the window →
  no value (an idle version is not proof of health).
- ``health_status``: the sample's HTTP status; a failed scrape counts as ``599``.
- anything else (``latency_p99_ms``, any forwarded gauge or counter): the value as forwarded.

For the last two, every sample is judged on its own and the window is bad only when **more than
half** of its samples are bad — one outlier cannot make a window bad. The value reported is the
median of the bad samples (bad window) or of all of them (good window).

A rule needs ``min_samples`` samples in its window (pooled over the nodes) to have a value; with
fewer it says nothing (``ok=None``): silence is never health. Each node is also judged on its own
samples (one is enough; two for a rate) for the healthy/unhealthy node lists.

Hysteresis (``Hysteresis``): an alert fires after ``consecutive`` bad evaluations in a row and
resolves after as many good ones; an evaluation counts only if it saw a sample newer than the
last counted one, so re-reading the same window does not add up.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from confbus.schemas.api.health import RuleResult, Verdict
from confbus.schemas.health import HealthSample
from confbus.schemas.policy import HealthRule

FAILED_SCRAPE_STATUS = 599

# Judged when a namespace has no rules, for verdicts only (never for alerts): the health
# endpoint answered, and not with a server error, on most samples.
IMPLICIT_RULE = HealthRule(
    name="health-endpoint",
    metric="health_status",
    op=">=",
    threshold=500,
    window_s=60.0,
    min_samples=1,
    consecutive=2,
)


@dataclass(frozen=True, slots=True)
class Point:
    """One sample, as the rules see it. ``t``: the stream's timestamp (unix seconds)."""

    t: float
    metrics: Mapping[str, float]
    status: int | None  # HTTP status, FAILED_SCRAPE_STATUS for a failed scrape, None: unknown

    @classmethod
    def of(cls, sample: HealthSample, t: float) -> Point:
        status = FAILED_SCRAPE_STATUS if sample.error else sample.status_code
        return cls(t, sample.metrics, status)


Series = Mapping[str, Sequence[Point]]  # node -> its points, oldest first


def violates(op: str, value: float, threshold: float) -> bool:
    match op:
        case ">":
            return value > threshold
        case ">=":
            return value >= threshold
        case "<":
            return value < threshold
        case "<=":
            return value <= threshold
        case "==":
            return value == threshold
        case "!=":
            return value != threshold
    raise ValueError(f"unknown operator {op!r}")


@dataclass(frozen=True)
class RuleOutcome:
    rule: HealthRule
    value: float | None
    ok: bool | None  # None: not enough samples to say
    samples: int
    window_start: float
    window_s: float
    newest: float | None  # the newest sample used (hysteresis counts only fresh evaluations)
    bad_nodes: tuple[str, ...] = ()
    good_nodes: tuple[str, ...] = ()
    reason: str = ""
    # A PromQL rule (promql.py): the query as run, and for a comparing rule both sides.
    query: str = ""
    compare: str = ""
    canary: float | None = None
    baseline: float | None = None

    def describe(self) -> str:
        r = self.rule
        if self.value is None:
            return f"{r.name}: {self.reason or 'no value'}"
        cond = (
            f"{r.op} {fmt(r.threshold)}" if self.ok is False else f"not {r.op} {fmt(r.threshold)}"
        )
        what = f"{r.metric} {self.compare}" if self.compare else r.metric
        why = f"; {self.reason}" if self.reason else ""
        return (
            f"{r.name}: {what} {fmt(self.value)} {cond} "
            f"over {fmt(self.window_s)}s ({self.samples} samples){why}"
        )

    def result(self) -> RuleResult:
        finite = self.value is not None and math.isfinite(self.value)
        return RuleResult(
            rule=self.rule.name,
            value=self.value if finite else None,
            threshold=self.rule.threshold,
            ok=self.ok,
            samples=self.samples,
            metric=self.rule.metric,
            op=self.rule.op,
            window_s=self.window_s,
            bad_nodes=list(self.bad_nodes),
            reason=self.reason,
            query=self.query,
            compare=self.compare,
            canary=self.canary,
            baseline=self.baseline,
        )


def fmt(x: float) -> str:
    return f"{x:.4g}"


def in_window(points: Sequence[Point], start: float, end: float) -> Sequence[Point]:
    lo = bisect.bisect_left(points, start, key=lambda p: p.t)
    hi = bisect.bisect_right(points, end, key=lambda p: p.t)
    return points[lo:hi]


def evaluate(
    rule: HealthRule,
    series: Series,
    *,
    now: float,
    since: float | None = None,
    window_s: float | None = None,
) -> RuleOutcome:
    """Judge ``rule`` over the points of ``series`` in its window ending at ``now``."""
    span = window_s if window_s is not None and window_s > 0 else rule.window_s
    start = now - span
    if since is not None:
        start = max(start, since)
    windows = {node: in_window(pts, start, now) for node, pts in series.items()}
    windows = {node: pts for node, pts in windows.items() if pts}
    if rule.metric == "error_rate":
        return _error_rate(rule, windows, start, span)
    return _per_sample(rule, windows, start, span)


def increase(values: Sequence[float]) -> float:
    """The increase of a counter over consecutive readings; a drop is a reset (the counter
    started again from zero, so the new reading is all increase)."""
    total = 0.0
    for prev, cur in itertools.pairwise(values):
        total += cur - prev if cur >= prev else cur
    return total


def _error_rate(
    rule: HealthRule, windows: Mapping[str, Sequence[Point]], start: float, span: float
) -> RuleOutcome:
    errors_total = requests_total = 0.0
    samples = 0
    newest: float | None = None
    bad: list[str] = []
    good: list[str] = []
    for node, pts in sorted(windows.items()):
        usable = [p for p in pts if rule.errors in p.metrics and rule.requests in p.metrics]
        samples += len(usable)
        if usable:
            newest = usable[-1].t if newest is None else max(newest, usable[-1].t)
        if len(usable) < 2:
            continue
        d_err = increase([p.metrics[rule.errors] for p in usable])
        d_req = increase([p.metrics[rule.requests] for p in usable])
        errors_total += d_err
        requests_total += d_req
        if d_req > 0:
            (bad if violates(rule.op, d_err / d_req, rule.threshold) else good).append(node)
    if samples < max(1, rule.min_samples):
        why = _too_few(samples, rule, "with both counters")
        return RuleOutcome(rule, None, None, samples, start, span, newest, reason=why)
    if requests_total <= 0:
        why = f"no {rule.requests} increase in the window"
        return RuleOutcome(rule, None, None, samples, start, span, newest, reason=why)
    value = errors_total / requests_total
    ok = not violates(rule.op, value, rule.threshold)
    return RuleOutcome(rule, value, ok, samples, start, span, newest, tuple(bad), tuple(good))


def _value(rule: HealthRule, p: Point) -> float | None:
    if rule.metric == "health_status":
        return None if p.status is None else float(p.status)
    return p.metrics.get(rule.metric)


def _majority_bad(rule: HealthRule, values: Sequence[float]) -> tuple[bool, float]:
    bad = [v for v in values if violates(rule.op, v, rule.threshold)]
    if 2 * len(bad) > len(values):
        return True, statistics.median_low(bad)
    return False, statistics.median_low(values)


def _per_sample(
    rule: HealthRule, windows: Mapping[str, Sequence[Point]], start: float, span: float
) -> RuleOutcome:
    pooled: list[float] = []
    newest: float | None = None
    bad: list[str] = []
    good: list[str] = []
    for node, pts in sorted(windows.items()):
        values: list[float] = []
        for p in pts:
            v = _value(rule, p)
            if v is not None:
                values.append(v)
                newest = p.t if newest is None else max(newest, p.t)
        if not values:
            continue
        pooled.extend(values)
        (bad if _majority_bad(rule, values)[0] else good).append(node)
    n = len(pooled)
    if n < max(1, rule.min_samples):
        why = _too_few(n, rule, f"with {rule.metric}")
        return RuleOutcome(rule, None, None, n, start, span, newest, reason=why)
    is_bad, value = _majority_bad(rule, pooled)
    return RuleOutcome(rule, value, not is_bad, n, start, span, newest, tuple(bad), tuple(good))


def _too_few(n: int, rule: HealthRule, what: str) -> str:
    return f"{n} samples {what} in the window, fewer than min_samples={rule.min_samples}"


# -- verdicts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    outcomes: list[RuleOutcome]
    samples: int
    healthy: list[str]
    unhealthy: list[str]
    unknown: list[str]
    reason: str


def judge(
    rules: Sequence[HealthRule],
    series: Series,
    nodes: Sequence[str],
    *,
    now: float,
    since: float | None = None,
    window_s: float | None = None,
    judged: Sequence[RuleOutcome] = (),
) -> Judgement:
    """``pass`` only when every rule has a value within its threshold; ``fail`` when any rule
    is broken; otherwise ``no_data``. Silence never passes. ``judged``: outcomes of rules
    judged elsewhere (PromQL), counted with these; with neither, the implicit rule."""
    rules = list(rules) or ([] if judged else [IMPLICIT_RULE])
    mine = {n: series.get(n, ()) for n in nodes}
    outcomes = [evaluate(r, mine, now=now, since=since, window_s=window_s) for r in rules]
    outcomes += judged
    widest = min((o.window_start for o in outcomes), default=now)
    samples = sum(len(in_window(pts, widest, now)) for pts in mine.values())
    samples += sum(o.samples for o in judged)
    unhealthy = sorted({n for o in outcomes for n in o.bad_nodes})
    healthy = sorted({n for o in outcomes for n in o.good_nodes} - set(unhealthy))
    unknown = sorted(set(nodes) - set(unhealthy) - set(healthy))
    broken = [o for o in outcomes if o.ok is False]
    silent = [o for o in outcomes if o.ok is None]
    if broken:
        verdict: Verdict = "fail"
        reason = "; ".join(
            o.describe() + (f" on {', '.join(o.bad_nodes)}" if o.bad_nodes else "") for o in broken
        )
    elif silent:
        verdict = "no_data"
        reason = "; ".join(o.describe() for o in silent)
    else:
        verdict = "pass"
        reason = "; ".join(o.describe() for o in outcomes)
    return Judgement(verdict, outcomes, samples, healthy, unhealthy, unknown, reason)


# -- hysteresis -----------------------------------------------------------------------------

Transition = Literal["fire", "resolve"]


@dataclass
class Hysteresis:
    """One rule on one version: ``consecutive`` fresh bad evaluations fire, as many fresh
    good ones resolve. Evaluations with no value, or no sample newer than the last counted
    one, change nothing."""

    consecutive: int
    firing: bool = False
    bad: int = 0
    good: int = 0
    bad_since: float | None = None  # window start of the first bad evaluation of the streak
    seen: float | None = field(default=None)

    def observe(self, outcome: RuleOutcome) -> Transition | None:
        if outcome.ok is None or outcome.newest is None:
            return None
        if self.seen is not None and outcome.newest <= self.seen:
            return None
        self.seen = outcome.newest
        need = max(1, self.consecutive)
        if outcome.ok is False:
            if self.bad == 0 and not self.firing:
                self.bad_since = outcome.window_start
            self.bad += 1
            self.good = 0
            if not self.firing and self.bad >= need:
                self.firing = True
                return "fire"
            return None
        self.good += 1
        self.bad = 0
        if not self.firing:
            self.bad_since = None
            return None
        if self.good >= need:
            self.firing = False
            self.bad_since = None
            return "resolve"
        return None
