"""PromQL health rules against a real Prometheus 2.42 scraping a real app whose error rate the
installed config decides: a canary judged against its baseline (the nodes still on the previous
version) fails at 5× the baseline's error ratio and is rolled back, passes at 1.1×, and with no
traffic follows ``on_missing_data``; a Prometheus that is down or stopped never holds a rollout
up past the source's ``timeout_s``, and the verdict says why.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from confbus.schemas.events import HealthVerdictEvent
from confbus.schemas.policy import HealthRule, Policy, PrometheusSource, RollbackPolicy
from tests.e2e.promstack import PromStack, promstack_fixture
from tests.e2e.traffic_app import config
from tests.e2e.trafficstack import ERROR_RATIO, World, error_ratio_rule, traffic_world
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

NODES = ("n1", "n2", "n3")
BASE = config(rps=100, error_ratio=0.02)
SLIGHTLY = config(rps=100, error_ratio=0.022)  # 1.1× BASE
FIVE_TIMES = config(rps=100, error_ratio=0.11)  # 5× SLIGHTLY
IDLE = config(rps=0, error_ratio=0.0)


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromStack]:
    yield from promstack_fixture(tmp_path_factory.mktemp("promstack"), {"groups": []})


def canary_policy(ns: str, prom: PromStack, on_missing_data: str = "pass") -> Policy:
    return Policy(
        namespace=ns,
        strategy="canary:1",
        bake_s=5.0,
        vote_timeout_s=3.0,
        on_missing_data=on_missing_data,  # type: ignore[arg-type]
        prometheus=PrometheusSource(url=prom.prom_url, timeout_s=3.0),
        health_rules=[
            error_ratio_rule(
                "5xx-vs-baseline",
                threshold=2.0,  # the canary's error ratio over twice the baseline's is bad
                window_s=5.0,
                compare="ratio",
                op=">",
                floor=0.001,
            )
        ],
        rollback=RollbackPolicy(cooldown_s=0.0),
    )


async def verdicts(w: World, version: int) -> list[HealthVerdictEvent]:
    return [
        e
        for e in await w.events("health.verdict")
        if isinstance(e, HealthVerdictEvent) and e.version == version
    ]


async def test_a_canary_is_judged_against_its_baseline(prom: PromStack, tmp_path: Path) -> None:
    ns = "canary"
    async with traffic_world(tmp_path, prom, ns, NODES) as w:
        await w.client.set_policy(canary_policy(ns, prom), actor="test")
        # The first version's canary has nothing to compare with (no traffic before it): no
        # data, which this policy lets pass.
        v1 = (await w.client.publish(ns, BASE, change_id="base")).version
        first = await w.client.wait_rollout(ns, v1, timeout=120)
        assert first.state == "completed", first
        said = await verdicts(w, v1)
        assert said[0].verdict == "no_data", said
        await w.client.mark_good(ns, v1, actor="operator", reason="known good")

        # 1.1× the baseline: passes every bake, becomes the last known good.
        v2 = (await w.client.publish(ns, SLIGHTLY, change_id="slightly")).version
        second = await w.client.wait_rollout(ns, v2, timeout=120)
        assert second.state == "completed" and second.last_good, second
        wave0 = (await verdicts(w, v2))[0]
        rule = wave0.rules[0]
        assert wave0.verdict == "pass" and rule.compare == "ratio", wave0
        assert rule.canary is not None and rule.baseline is not None and rule.value is not None
        assert rule.value == pytest.approx(1.1, rel=0.05), rule
        assert "confbus_node=~" in rule.query and "{{" not in rule.query, rule.query
        assert w.files_hold(SLIGHTLY)

        # 5× the baseline: the canary's bake fails and the rollbacker restores v2's bytes.
        v3 = (await w.client.publish(ns, FIVE_TIMES, change_id="five")).version
        third = await w.client.wait_rollout(ns, v3, timeout=120)
        assert third.state in ("failed", "rolled_back"), third
        failed = [v for v in await verdicts(w, v3) if v.verdict == "fail"]
        assert failed and failed[0].rules[0].value == pytest.approx(5.0, rel=0.05), failed

        async def back() -> bool:
            return w.files_hold(SLIGHTLY)

        await eventually(back, timeout=60, what="the canary rolled back to v2's bytes")

        # No traffic on the canary: too little data, on the canary side; this policy says
        # missing data fails a bake, so it is rolled back too.
        await w.client.set_policy(canary_policy(ns, prom, on_missing_data="fail"), actor="test")
        await w.wait_event("rollback.completed")
        v_idle = (await w.client.publish(ns, IDLE, change_id="idle")).version
        idle = await w.client.wait_rollout(ns, v_idle, timeout=120)
        assert idle.state in ("failed", "rolled_back"), idle
        silent = (await verdicts(w, v_idle))[0]
        assert silent.verdict == "no_data", silent
        assert "too little data on the canary side" in silent.rules[0].reason, silent.rules[0]
        await eventually(back, timeout=60, what="the idle canary rolled back to v2's bytes")


async def test_a_prometheus_down_or_stopped_never_holds_a_rollout_up(
    prom: PromStack, tmp_path: Path
) -> None:
    ns = "blind"
    rule = HealthRule(
        name="5xx",
        metric="error_ratio",
        query=ERROR_RATIO,
        threshold=0.05,
        window_s=2.0,
    )

    def policy(url: str) -> Policy:
        source = PrometheusSource(url=url, timeout_s=1.5)
        return Policy(
            namespace=ns, bake_s=1.0, vote_timeout_s=3.0, prometheus=source, health_rules=[rule]
        )

    async with traffic_world(tmp_path, prom, ns, NODES) as w:
        # Down: nothing listens where the policy says.
        await w.client.set_policy(policy("http://127.0.0.1:9"), actor="test")
        v1 = (await w.client.publish(ns, BASE, change_id="down")).version
        down = await w.client.wait_rollout(ns, v1, timeout=60)
        assert down.state == "completed" and not down.last_good, down
        said = (await verdicts(w, v1))[0]
        assert said.verdict == "no_data" and "cannot be reached" in said.rules[0].reason, said

        # Stopped (SIGSTOP): it accepts connections and never answers. The bake's verdict
        # comes after the 1.5 s timeout, well inside the callers' 10 s verdict deadline.
        await w.client.set_policy(policy(prom.prom_url), actor="test")
        prom.prometheus.pause()
        try:
            started = time.monotonic()
            v2 = (await w.client.publish(ns, SLIGHTLY, change_id="slow")).version
            slow = await w.client.wait_rollout(ns, v2, timeout=60)
            took = time.monotonic() - started
        finally:
            prom.prometheus.resume()
        assert slow.state == "completed" and not slow.last_good, slow
        said = (await verdicts(w, v2))[0]
        assert said.verdict == "no_data", said
        assert "did not answer within 1.5s" in said.rules[0].reason, said.rules[0]
        assert took < 10.0, took  # the distributor's verdict deadline was never reached
