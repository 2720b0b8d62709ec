"""Rollouts end to end: real nats-server, version-store, coordinator, distributor and
8 agent processes writing real files. Waves, bakes, verdicts, and bad input."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from confbus.client import ChangeRejected
from confbus.runtime.api import Endpoint, serve_api, stop_api
from confbus.schemas.api import health as health_api
from confbus.schemas.events import (
    NodeApplied,
    RolloutBaked,
    RolloutCompleted,
    RolloutFailed,
    RolloutStarted,
    RolloutWave,
    TxnCommitted,
    VersionPromoted,
)
from confbus.schemas.health import Alert, decode_alert
from confbus.schemas.streams import CFG_ALERTS
from tests.distributor.e2e import (
    NS,
    all_applied,
    content,
    decisions,
    events,
    of,
    read_all,
    set_policy,
    stack_of,
    wait_event,
)
from tests.e2e.stack import Stack
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

NODES = tuple(f"n{i}" for i in range(1, 9))
BAKE_S = 0.6


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield from stack_of(tmp_path, NODES)


async def test_linear_25_percent_is_four_atomic_waves_with_bakes(stack: Stack) -> None:
    async with stack.client() as client:
        await set_policy(client, bake_s=BAKE_S)
        await stack.live(len(NODES))
        v1 = await client.publish(NS, content("v1"), strategy="linear:25%")
        info = await client.wait_rollout(NS, v1.version, timeout=60)
        assert info.state == "completed", info.reason
        await stack.files_hold(NODES, content("v1"))

        await wait_event(client.bus, RolloutCompleted, version=v1.version)
        evs = await events(client.bus)
        started = of(evs, RolloutStarted)[0]
        assert started.strategy == "linear:25%" and [len(w) for w in started.waves] == [2] * 4
        waves = [w for w in of(evs, RolloutWave) if w.rollout_id == info.rollout_id]
        assert [w.outcome for w in waves] == ["committed"] * 4
        # Each wave is one atomic switch of exactly its two nodes.
        committed = {e.txid: e for e in of(evs, TxnCommitted)}
        assert len(committed) == 4
        for w, nodes in zip(waves, started.waves, strict=True):
            assert sorted(committed[w.txid].participants) == sorted(nodes)
        by_txid = {d.txid: d for d in await decisions(client.bus)}
        assert all(by_txid[w.txid].outcome == "commit" for w in waves)
        # Bake time respected: each next wave commits at least bake_s after the previous one.
        for prev, nxt in itertools.pairwise(waves):
            assert (nxt.at - prev.at).total_seconds() >= BAKE_S
        baked = [b for b in of(evs, RolloutBaked) if b.rollout_id == info.rollout_id]
        assert [b.wave for b in baked] == [0, 1, 2, 3]
        assert all(b.verdict == "no_data" for b in baked)  # no health-watcher: pass by policy
        for wave, bake in zip(waves, baked, strict=True):
            assert (bake.at - wave.at).total_seconds() >= BAKE_S
        # Each node applied v1 exactly once, in its wave's transaction.
        applied = await all_applied(client.bus, v1.version, NODES)
        assert sorted(e.node for e in applied) == sorted(NODES)
        assert {e.txid for e in applied} == set(committed)
        # Promoted; not the last known good (no verdict had data).
        done = of(evs, RolloutCompleted)[0]
        assert done.last_good is False and len(done.report) == len(NODES)
        assert all(o.outcome == "applied" for o in done.report)
        assert of(evs, VersionPromoted)[-1].version == v1.version
        status = await client.fleet_status(NS)
        assert status.production_version == v1.version
        assert all(n.target_version == v1.version for n in status.nodes)


async def test_failing_verdict_after_wave_2_stops_the_rollout(stack: Stack) -> None:
    async def verdict(req: health_api.VerdictRequest) -> health_api.VerdictReply:
        if req.version == 2 and len(req.nodes) >= 4:  # v2's nodes switched so far: wave 2
            return health_api.VerdictReply(
                verdict="fail",
                samples=12,
                unhealthy_nodes=req.nodes[2:4],
                reason="error_rate 0.31 > 0.05 over 30s",
            )
        return health_api.VerdictReply(verdict="pass", samples=6, healthy_nodes=req.nodes)

    async with stack.client() as client:
        svc = await serve_api(
            client.bus,
            [Endpoint(health_api.VERDICT, verdict)],
        )
        try:
            await set_policy(client, bake_s=0.2)
            await stack.live(len(NODES))
            v1 = await client.publish(NS, content("v1"), strategy="all-at-once")
            assert (await client.wait_rollout(NS, v1.version, timeout=60)).state == "completed"
            await stack.files_hold(NODES, content("v1"))

            v2 = await client.publish(NS, content("v2"), strategy="linear:25%")
            info = await client.wait_rollout(NS, v2.version, timeout=60)
        finally:
            await stop_api(svc)
        assert info.state == "failed"
        assert "wave 1" in info.reason and "error_rate 0.31" in info.reason
        switched = info.waves[0].nodes + info.waves[1].nodes
        untouched = info.waves[2].nodes + info.waves[3].nodes
        assert [w.state for w in info.waves] == ["done", "failed", "skipped", "skipped"]
        await stack.files_hold(switched, content("v2"))
        for n in untouched:
            assert stack.agents[n].read(NS) == content("v1"), n

        failed = await wait_event(client.bus, RolloutFailed, version=v2.version)
        evs = await events(client.bus)
        assert failed.wave == 1 and "error_rate 0.31" in failed.reason
        assert failed.handed_to_rollbacker
        assert {o.node for o in failed.report if o.outcome == "skipped"} == set(untouched)
        assert not [
            e for e in of(evs, NodeApplied) if e.version == v2.version and e.node in untouched
        ]

        # Handed to the rollbacker: an alert on cfg.alert.web, from the distributor (published
        # from the record's outbox right after rollout.failed: it may be stored a moment later).
        async def stored_alerts() -> list[Alert]:
            stored = await read_all(client.bus, CFG_ALERTS.name, "cfg.alert.web")
            return [decode_alert(d) for _, d in stored]

        alerts = await eventually(stored_alerts, what="the distributor's alert")
        assert len(alerts) == 1 and alerts[0].source == "distributor"
        assert alerts[0].version == v2.version and info.rollout_id in alerts[0].alert_id
        # v1 stays production; v2 was never promoted nor marked good.
        assert (await client.fleet_status(NS)).production_version == v1.version


async def test_bad_input_is_refused_and_nothing_is_switched(stack: Stack) -> None:
    """An unknown strategy is refused by the version-store at publish (a selector that is not
    labels cannot even be decoded there); the distributor refuses both too, for events a laxer
    store could write (tests/distributor/test_engine.py). An empty target set is refused by
    the distributor: rollout.failed with the reason, and nothing switched."""
    async with stack.client() as client:
        await stack.live(len(NODES))
        with pytest.raises(ChangeRejected, match="strategy"):
            await client.publish(NS, content("x"), strategy="blue-green")
        v = await client.publish(NS, content("z"), selector={"dc": "mars"})
        info = await client.wait_rollout(NS, v.version, timeout=30)
        assert info.state == "failed" and info.failed_wave == -1 and not info.waves
        assert "no live agent" in info.reason and "dc=mars" in info.reason
        failed = await wait_event(client.bus, RolloutFailed, version=v.version)
        assert failed.wave == -1 and "dc=mars" in failed.reason
        evs = await events(client.bus)
        assert (
            not of(evs, TxnCommitted) and not of(evs, NodeApplied) and not of(evs, RolloutStarted)
        )
        assert not await decisions(client.bus)
        for n in NODES:
            assert stack.agents[n].read(NS) is None
        assert (await client.fleet_status(NS)).production_version is None
