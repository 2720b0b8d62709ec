"""Verdicts through the real API (``cfg.api.health.verdict``) of a real health-watcher process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from confbus.runtime.api import call
from confbus.runtime.bus import Bus
from confbus.runtime.errors import InvalidInput
from confbus.schemas import subjects
from confbus.schemas.api import health as api
from confbus.schemas.events import HealthVerdictEvent, decode_event
from confbus.schemas.policy import Policy
from tests.health_watcher.conftest import StartWatcher
from tests.health_watcher.support import StoreStub, metric, publish_sample, rule
from tests.helpers import eventually

NS = "web"


async def verdict(bus: Bus, version: int, nodes: list[str], **kw: object) -> api.VerdictReply:
    req = api.VerdictRequest(namespace=NS, version=version, nodes=nodes, **kw)  # type: ignore[arg-type]
    return await call(bus, api.VERDICT, req)


async def test_verdict_pass_fail_and_no_data(
    bus: Bus, store: StoreStub, start_watcher: StartWatcher
) -> None:
    store.policies[NS] = Policy(
        namespace=NS,
        health_rules=[
            rule("error-rate", "error_rate", ">", 0.05, window_s=60, min_samples=4),
            rule("p99", "latency_p99_ms", ">", 500, window_s=60, min_samples=4),
        ],
    )
    watcher = await start_watcher()
    port = watcher.ready["http_port"]  # type: ignore[index]
    events = await bus.nc.subscribe(subjects.event(NS, "health.verdict"))

    # v1: healthy on n1 and n2; v2: n2 fails half its requests; v3: one sample only.
    published = 0
    for i in range(4):
        for node in ("n1", "n2"):
            good = {"requests_total": 100.0 * i, "errors_total": 0.0, "latency_p99_ms": 40.0}
            await publish_sample(bus, NS, node, 1, good)
            errors = 50.0 * i if node == "n2" else 0.0
            sick = {"requests_total": 100.0 * i, "errors_total": errors, "latency_p99_ms": 40.0}
            await publish_sample(bus, NS, node, 2, sick)
            published += 2
    await publish_sample(bus, NS, "n1", 3, {"requests_total": 1.0, "errors_total": 0.0})
    published += 1

    async def consumed() -> bool:
        return await metric(port, "confbus_health_watcher_samples_total") >= published

    await eventually(consumed, what="the samples reach the watcher")

    ok = await verdict(bus, 1, ["n1", "n2"])
    assert ok.verdict == "pass", ok.reason
    assert ok.healthy_nodes == ["n1", "n2"] and ok.unhealthy_nodes == []
    assert ok.samples == 8
    assert {r.rule: r.ok for r in ok.rules} == {"error-rate": True, "p99": True}

    bad = await verdict(bus, 2, ["n1", "n2"])
    assert bad.verdict == "fail"
    failing = {r.rule: r for r in bad.rules if r.ok is False}
    assert set(failing) == {"error-rate"}
    assert failing["error-rate"].value == pytest.approx(150 / 600)
    assert failing["error-rate"].bad_nodes == ["n2"]
    assert bad.unhealthy_nodes == ["n2"] and bad.healthy_nodes == ["n1"]
    assert "error-rate" in bad.reason and "n2" in bad.reason

    # The same version judged on n1 alone passes: verdicts are per node set.
    assert (await verdict(bus, 2, ["n1"])).verdict == "pass"

    few = await verdict(bus, 3, ["n1"])
    assert few.verdict == "no_data"
    assert all(r.ok is None for r in few.rules)
    assert "min_samples" in few.reason

    silent = await verdict(bus, 1, ["n7"])
    assert silent.verdict == "no_data" and silent.unknown_nodes == ["n7"]

    # ``since`` after every sample: nothing to judge — never a pass on silence.
    later = await verdict(bus, 1, ["n1", "n2"], since=datetime.now(UTC) + timedelta(seconds=1))
    assert later.verdict == "no_data"

    # Each verdict given is an event, in order.
    seen = []
    for _ in range(6):
        ev = decode_event((await events.next_msg(timeout=5)).data)
        assert isinstance(ev, HealthVerdictEvent)
        seen.append((ev.version, ev.verdict))
    assert seen == [
        (1, "pass"),
        (2, "fail"),
        (2, "pass"),
        (3, "no_data"),
        (1, "no_data"),
        (1, "no_data"),
    ]
    assert await metric(port, "confbus_health_watcher_verdicts_total", result="no_data") == 3

    with pytest.raises(InvalidInput):
        await verdict(bus, 1, ["n1"], window_s=-1.0)


async def test_verdict_without_rules_judges_the_health_endpoint_from_the_warmed_up_past(
    bus: Bus, store: StoreStub, start_watcher: StartWatcher
) -> None:
    store.policies[NS] = Policy(namespace=NS)  # no rules: only the endpoint's status counts
    # Samples first, the watcher second: it reads the recent past back from CFG_HEALTH and
    # reports ready only once it has, so its first verdict already sees them.
    await publish_sample(bus, NS, "n1", 5, status_code=200)
    await publish_sample(bus, NS, "n2", 5, status_code=503)
    await publish_sample(bus, NS, "n2", 5, error="connection refused")
    await start_watcher()
    assert (await verdict(bus, 5, ["n1"])).verdict == "pass"
    reply = await verdict(bus, 5, ["n1", "n2"])
    assert reply.verdict == "fail" and reply.unhealthy_nodes == ["n2"]
    assert reply.rules[0].rule == "health-endpoint"
    # An empty node list means every node heard from on that version.
    assert (await verdict(bus, 5, [])).unhealthy_nodes == ["n2"]


async def test_a_verdict_judges_by_the_policy_as_it_is_now(
    bus: Bus, store: StoreStub, start_watcher: StartWatcher
) -> None:
    """A bake's verdict decides the last known good: a rule added a moment ago counts, even
    though the watcher cached the policy without it (its cache lives 5 s)."""
    store.policies[NS] = Policy(namespace=NS)
    watcher = await start_watcher()
    port = watcher.ready["http_port"]  # type: ignore[index]
    for i in range(4):
        sick = {"requests_total": 100.0 * i, "errors_total": 50.0 * i}
        await publish_sample(bus, NS, "n1", 1, sick)

    async def consumed() -> bool:
        return await metric(port, "confbus_health_watcher_samples_total") >= 4

    await eventually(consumed, what="the samples reach the watcher")
    assert (await verdict(bus, 1, ["n1"])).verdict != "fail"  # no rules: nothing to break
    store.policies[NS] = Policy(
        namespace=NS,
        health_rules=[rule("error-rate", "error_rate", ">", 0.05, window_s=60, min_samples=4)],
    )
    now = await verdict(bus, 1, ["n1"])
    assert now.verdict == "fail" and "error-rate" in now.reason, now
