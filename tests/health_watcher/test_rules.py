"""Table tests of the pure judging code: rules over windows, verdicts, hysteresis, the bounded
sample store."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from confbus.health_watcher.alerts import alert_id, slug
from confbus.health_watcher.rules import (
    FAILED_SCRAPE_STATUS,
    Hysteresis,
    Point,
    RuleOutcome,
    evaluate,
    increase,
    judge,
)
from confbus.health_watcher.windows import SampleStore
from confbus.schemas.health import HealthSample
from confbus.schemas.policy import HealthRule
from tests.health_watcher.support import rule

NOW = 1_000.0


def counters(req: Sequence[float], err: Sequence[float], t0: float = NOW - 9) -> list[Point]:
    return [
        Point(t0 + i, {"requests_total": r, "errors_total": e}, 200)
        for i, (r, e) in enumerate(zip(req, err, strict=True))
    ]


def gauges(
    values: Sequence[float], name: str = "latency_p99_ms", t0: float = NOW - 9
) -> list[Point]:
    return [Point(t0 + i, {name: v}, 200) for i, v in enumerate(values)]


def statuses(codes: Sequence[int | None], t0: float = NOW - 9) -> list[Point]:
    return [Point(t0 + i, {}, c) for i, c in enumerate(codes)]


ERR = rule("err", "error_rate", ">", 0.05, window_s=30, min_samples=3)
P99 = rule("p99", "latency_p99_ms", ">", 1000, window_s=30, min_samples=3)
STATUS = rule("up", "health_status", "!=", 200, window_s=30, min_samples=3)


@pytest.mark.parametrize(
    ("name", "series", "value", "ok", "bad_nodes"),
    [
        ("no errors", {"a": counters([0, 100, 200], [0, 0, 0])}, 0.0, True, ()),
        ("a fifth fail", {"a": counters([0, 100, 200], [0, 20, 40])}, 0.2, False, ("a",)),
        (
            "pooled over nodes",
            {"a": counters([0, 100, 200], [0, 0, 0]), "b": counters([0, 100, 200], [0, 30, 60])},
            60 / 400,
            False,
            ("b",),
        ),
        (
            # The app restarted between the 2nd and 3rd scrape: both counters dropped. The
            # new readings are all increase: requests 100+50+100, errors 0+1+1.
            "counter reset",
            {"a": counters([100, 200, 50, 150], [5, 5, 1, 2])},
            2 / 250,
            True,
            (),
        ),
        (
            "a reset is not a burst of errors",
            {"a": counters([0, 1000, 10], [0, 0, 10])},
            10 / 1010,
            True,
            (),
        ),
        ("too few samples", {"a": counters([0, 100], [0, 50])}, None, None, ()),
        ("no traffic", {"a": counters([5, 5, 5], [1, 1, 1])}, None, None, ()),
        ("one sample per node", {n: counters([10], [10]) for n in "abc"}, None, None, ()),
        ("no samples", {}, None, None, ()),
    ],
)
def test_error_rate(
    name: str,
    series: dict[str, list[Point]],
    value: float | None,
    ok: bool | None,
    bad_nodes: tuple[str, ...],
) -> None:
    out = evaluate(ERR, series, now=NOW)
    assert out.ok is ok, (name, out)
    if value is None:
        assert out.value is None and out.reason
    else:
        assert out.value == pytest.approx(value)
    assert out.bad_nodes == bad_nodes


def test_increase_handles_resets() -> None:
    assert increase([]) == 0
    assert increase([3]) == 0
    assert increase([1, 4, 9]) == 8
    assert increase([10, 2, 5]) == 2 + 3
    assert increase([10, 0, 0, 7]) == 7


def test_error_rate_with_named_counters() -> None:
    r = HealthRule(
        name="5xx",
        metric="error_rate",
        threshold=0.1,
        errors='http_requests_total{code="500"}',
        requests="http_requests_total",
        min_samples=2,
    )
    pts = [
        Point(NOW - 2, {"http_requests_total": 0, 'http_requests_total{code="500"}': 0}, 200),
        Point(NOW - 1, {"http_requests_total": 10, 'http_requests_total{code="500"}': 5}, 200),
    ]
    out = evaluate(r, {"a": pts}, now=NOW)
    assert out.value == 0.5 and out.ok is False


@pytest.mark.parametrize(
    ("name", "r", "values", "value", "ok"),
    [
        ("all fast", P99, [100, 120, 90], 100, True),
        ("one slow sample is outvoted", P99, [100, 9000, 120, 90, 110], 110, True),
        ("half is not a majority", P99, [100, 9000, 9500, 90], 100, True),
        ("mostly slow", P99, [100, 2000, 3000, 9000, 90], 3000, False),
        ("equal to the threshold is fine for >", P99, [1000, 1000, 1000], 1000, True),
        ("too few", P99, [5000, 5000], None, None),
        (
            "a lower bound",
            rule("rps", "rps", "<", 10, min_samples=3),
            [1, 2, 50],
            1,
            False,
        ),
    ],
)
def test_gauges_by_majority(
    name: str, r: HealthRule, values: list[float], value: float | None, ok: bool | None
) -> None:
    out = evaluate(r, {"a": gauges(values, r.metric)}, now=NOW)
    assert (out.value, out.ok) == (value, ok), name


@pytest.mark.parametrize(
    ("codes", "value", "ok"),
    [
        ([200, 200, 200], 200, True),
        ([200, 503, 200], 200, True),  # one failed probe is not an outage
        ([503, 503, 200], 503, False),
        ([FAILED_SCRAPE_STATUS, FAILED_SCRAPE_STATUS, 200, None], 599, False),
        ([200, None, None, None], None, None),  # samples without a status do not count
    ],
)
def test_health_status(codes: list[int | None], value: float | None, ok: bool | None) -> None:
    out = evaluate(STATUS, {"a": statuses(codes)}, now=NOW)
    assert (out.value, out.ok) == (value, ok)


def test_failed_scrape_is_status_599() -> None:
    s = HealthSample(namespace="web", node="a", version=1, error="connection refused")
    assert Point.of(s, NOW).status == FAILED_SCRAPE_STATUS
    ok = HealthSample(namespace="web", node="a", version=1, status_code=204)
    assert Point.of(ok, NOW).status == 204


def test_window_and_since_bound_the_samples() -> None:
    old_bad = gauges([9000] * 5, t0=NOW - 100)
    fresh_good = gauges([100] * 3, t0=NOW - 3)
    out = evaluate(P99, {"a": old_bad + fresh_good}, now=NOW)
    assert out.ok is True and out.samples == 3 and out.window_start == NOW - 30
    assert evaluate(P99, {"a": old_bad + fresh_good}, now=NOW, window_s=200).ok is False
    since = evaluate(P99, {"a": fresh_good}, now=NOW, since=NOW - 1.5)
    assert since.samples == 1 and since.ok is None and since.window_start == NOW - 1.5


def test_per_node_judgements() -> None:
    series = {
        "fast": gauges([100, 100, 100]),
        "slow": gauges([5000, 5000, 100]),
        "quiet": [],
    }
    out = evaluate(P99, series, now=NOW)
    assert out.bad_nodes == ("slow",) and out.good_nodes == ("fast",)


def test_judge_pass_fail_no_data() -> None:
    healthy = {"a": counters([0, 100, 200], [0, 0, 0]), "b": gauges([100, 100, 100])}
    j = judge([ERR, P99], healthy, ["a", "b"], now=NOW)
    assert j.verdict == "pass" and j.samples == 6
    # b has no counters and a no latency: each judged on what it reports.
    assert j.healthy == ["a", "b"] and j.unknown == []

    sick = {"a": counters([0, 100, 200], [0, 50, 100]), "b": gauges([100, 100, 100])}
    j = judge([ERR, P99], sick, ["a", "b", "c"], now=NOW)
    assert j.verdict == "fail" and j.unhealthy == ["a"] and j.unknown == ["c"]
    assert "err" in j.reason and "on a" in j.reason

    j = judge([ERR, P99], {"a": counters([0, 100, 200], [0, 0, 0])}, ["a"], now=NOW)
    assert j.verdict == "no_data"  # p99 has no samples: one silent rule is not a pass
    assert j.healthy == ["a"]

    assert judge([ERR], {}, ["a"], now=NOW).verdict == "no_data"


def test_judge_without_rules_uses_the_health_endpoint() -> None:
    assert judge([], {"a": statuses([200])}, ["a"], now=NOW).verdict == "pass"
    assert judge([], {"a": statuses([500, 500])}, ["a"], now=NOW).verdict == "fail"
    assert judge([], {}, ["a"], now=NOW).verdict == "no_data"


def outcome(ok: bool | None, newest: float, start: float = 0.0) -> RuleOutcome:
    value = None if ok is None else 1.0
    return RuleOutcome(P99, value, ok, 3, start, 30.0, newest)


@pytest.mark.parametrize(
    ("name", "consecutive", "steps", "transitions"),
    [
        ("one bad evaluation", 2, [False, True, True], [None, None, None]),
        ("two bad in a row fire", 2, [False, False, False], [None, "fire", None]),
        ("broken streak", 3, [False, False, True, False, False], [None] * 5),
        ("resolve after as many good", 2, [False, False, True, False, True, True],
         [None, "fire", None, None, None, "resolve"]),
        ("no value neither counts nor resets", 2, [False, None, False], [None, None, "fire"]),
        ("consecutive 1", 1, [False, True], ["fire", "resolve"]),
    ],
)  # fmt: skip
def test_hysteresis(
    name: str, consecutive: int, steps: list[bool | None], transitions: list[str | None]
) -> None:
    h = Hysteresis(consecutive)
    got = [h.observe(outcome(ok, newest=float(i + 1))) for i, ok in enumerate(steps)]
    assert got == transitions, name


def test_hysteresis_counts_only_fresh_evaluations() -> None:
    h = Hysteresis(2)
    assert h.observe(outcome(False, newest=5.0, start=1.0)) is None
    # The same newest sample read again (no new data): not a second bad evaluation.
    assert h.observe(outcome(False, newest=5.0, start=2.0)) is None
    assert h.observe(outcome(False, newest=4.0, start=2.0)) is None
    assert h.bad == 1 and h.bad_since == 1.0
    assert h.observe(outcome(False, newest=6.0, start=3.0)) == "fire"
    assert h.bad_since == 1.0  # the first bad window's start: the alert's id


def test_alert_ids_are_deterministic() -> None:
    assert alert_id("web", 7, "p99 latency", 1234.9) == "web:7:p99_latency:1234"
    assert slug("") == "rule" and slug("a:b/c") == "a_b_c"


def test_sample_store_is_bounded() -> None:
    s = SampleStore(horizon_s=60, max_points=3, max_versions=2)
    for i in range(5):
        s.add("web", 1, "a", Point(NOW + i, {}, 200))
    assert [p.t for p in s.series("web", 1)["a"]] == [NOW + 2, NOW + 3, NOW + 4]
    s.add("web", 1, "a", Point(NOW + 2.5, {}, 200))  # out of order: kept in order
    assert [p.t for p in s.series("web", 1)["a"]] == [NOW + 2.5, NOW + 3, NOW + 4]
    s.add("web", 2, "a", Point(NOW + 10, {}, 200))
    s.add("web", 3, "a", Point(NOW + 11, {}, 200))
    assert s.versions("web") == [2, 3]  # the least recently heard version went first
    s.add("web", None, "b", Point(NOW + 12, {}, None))
    assert s.versions("web") == [3]  # None counts as a version for the bound, never listed
    s.prune(NOW + 71.5)
    assert s.namespaces() == {"web"} and s.series("web", None) == {"b": [Point(NOW + 12, {}, None)]}
    s.prune(NOW + 100)
    assert s.namespaces() == set()
    assert s.series("web", 3, ["a", "zz"]) == {}
