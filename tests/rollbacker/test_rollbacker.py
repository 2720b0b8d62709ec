"""The rollbacker as a process against a real nats-server, the real coordinator and real
agents writing real files; the version-store, distributor and health-watcher are the small
real stand-ins of ``fakes.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus
from confbus.schemas.api.health import VerdictReply, VerdictRequest
from confbus.schemas.events import (
    RollbackBatch,
    RollbackCompleted,
    RollbackStarted,
    RollbackStuck,
    TxnCommitted,
    VersionCreated,
)
from tests.helpers import eventually
from tests.rollbacker.world import BAD, GOOD, NS, World, policy, world

pytestmark = pytest.mark.anyio


async def outcome_of(w: World, alert_id: str) -> str:
    """Wait until the rollbacker has judged ``alert_id``; its outcome from the ledger."""

    async def probe() -> str | None:
        seen = (await w.ledger()).seen(alert_id)
        return seen.outcome if seen is not None else None

    return await eventually(probe, what=f"alert {alert_id} judged")


async def redeploy_bad(w: World) -> int:
    """Someone publishes the bad config again and it goes out everywhere."""
    v = await w.store.add(NS, BAD, f"bad-again-{w.store.newest(NS) + 1}")
    await w.switch(v)
    await w.store.promote(NS, v)
    return v


async def test_an_alert_rolls_back_to_the_last_known_good_as_a_new_version(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    async with world(nats_server, bus, tmp_path) as w:
        v1, v2 = await w.seed()
        await w.alert("a-1", v2, rule="errors", value=0.4, threshold=0.05)
        completed = (await w.tap.wait_type("rollback.completed"))[0]
        assert isinstance(completed, RollbackCompleted)
        v3 = completed.new_version
        assert v3 == 3
        assert w.store.info(NS, v3).rollback_of == v1
        assert w.store.content(NS, v3) == GOOD
        assert w.store.production[NS] == v3
        # Every batch passed with data: the rollback version is the new last known good.
        assert w.store.last_good[NS] == v3
        assert all(w.read(n) == GOOD for n in w.nodes)
        started = w.tap.of("rollback.started")[0]
        assert isinstance(started, RollbackStarted)
        assert (started.from_version, started.to_version, started.new_version) == (v2, v1, v3)
        assert started.alert_id == "a-1" and started.batches == [w.nodes]
        assert [a.rolled_back for a in w.dist.aborts] == [True]
        created = [e for e in w.tap.of("version.created") if isinstance(e, VersionCreated)]
        assert created[-1].rollback_of == v1 and created[-1].change_id.startswith("rollback-")
        story = w.tap.types("rollback.")
        assert story == ["rollback.started", "rollback.batch", "rollback.completed"]


async def test_batches_are_switched_and_verified_one_after_the_other(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    async with world(nats_server, bus, tmp_path, pol=policy(strategy="batches:2")) as w:
        _, v2 = await w.seed()
        await w.alert("a-1", v2)
        await w.tap.wait_type("rollback.completed")
        started = w.tap.of("rollback.started")[0]
        assert isinstance(started, RollbackStarted)
        assert started.batches == [["n1", "n2"], ["n3", "n4"]]
        batches = [e for e in w.tap.events if isinstance(e, RollbackBatch)]
        assert [(b.batch, b.nodes, b.healthy_share) for b in batches] == [
            (0, ["n1", "n2"], 1.0),
            (1, ["n3", "n4"], 1.0),
        ]
        # Each batch is one atomic switch, and the second starts only after the first was
        # judged healthy: in the event stream, commit 0 < batch 0 < commit 1 < batch 1.
        order = [
            (type(e).__name__, getattr(e, "participants", None) or getattr(e, "batch", None))
            for e in w.tap.events
            if (isinstance(e, TxnCommitted) and e.version == 3) or isinstance(e, RollbackBatch)
        ]
        assert order == [
            ("TxnCommitted", ["n1", "n2"]),
            ("RollbackBatch", 0),
            ("TxnCommitted", ["n3", "n4"]),
            ("RollbackBatch", 1),
        ]
        # The verdicts were asked for the new version, per batch, since each batch's commit;
        # the polls are not recorded, the verdict acted on is: one per batch.
        calls = [c.request for c in w.health.calls if c.request.record]
        assert [(c.version, c.nodes) for c in calls] == [(3, ["n1", "n2"]), (3, ["n3", "n4"])]
        assert calls[0].since is not None and calls[1].since is not None
        assert calls[0].since < calls[1].since


async def test_the_same_alert_five_times_rolls_back_once(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    async with world(nats_server, bus, tmp_path) as w:
        _, v2 = await w.seed()
        for _ in range(5):
            await w.alert("a-same", v2)
        await w.tap.wait_type("rollback.completed")
        await eventually(
            lambda: w.metric_at_least("confbus_rollbacker_alerts_total", 'outcome="duplicate"', 4),
            what="the four repeats judged",
        )
        assert await w.metric("confbus_rollbacker_alerts_total", 'outcome="started"') == 1
        assert len(w.tap.of("rollback.started")) == 1
        assert w.store.newest(NS) == 3  # one rollback version, no more


async def test_a_flapping_signal_is_held_by_the_cooldown_across_a_restart(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    async with world(nats_server, bus, tmp_path, pol=policy(cooldown_s=600.0)) as w:
        _, v2 = await w.seed()
        await w.alert("flap-1", v2)
        await w.tap.wait_type("rollback.completed")
        v4 = await redeploy_bad(w)
        await w.alert("flap-2", v4)
        assert await outcome_of(w, "flap-2") == "cooldown"
        assert w.rollbacker is not None
        w.rollbacker.stop()
        w.start_rollbacker()  # a new process: the cooldown lives in CFG_STATE, not in memory
        for i in range(3, 7):
            await w.alert(f"flap-{i}", v4)
        for i in range(3, 7):
            assert await outcome_of(w, f"flap-{i}") == "cooldown"
        assert len(w.tap.of("rollback.started")) == 1
        assert all(w.read(n) == BAD for n in w.nodes)  # held: nothing switched again


async def test_a_flapping_signal_starts_at_most_the_cap_across_a_restart(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    pol = policy(cooldown_s=0.0, max_per_window=2, cap_window_s=3600.0)
    async with world(nats_server, bus, tmp_path, pol=pol) as w:
        _, v2 = await w.seed()
        await w.alert("flap-1", v2)
        await w.tap.wait_type("rollback.completed")
        v4 = await redeploy_bad(w)
        assert w.rollbacker is not None
        w.rollbacker.stop()
        w.start_rollbacker()
        await w.alert("flap-2", v4)
        await w.tap.wait_type("rollback.completed", count=2)
        v6 = await redeploy_bad(w)
        w.rollbacker.stop()
        w.start_rollbacker()
        for i in range(3, 8):
            await w.alert(f"flap-{i}", v6)
        for i in range(3, 8):
            assert await outcome_of(w, f"flap-{i}") == "cap"
        assert len(w.tap.of("rollback.started")) == 2


async def test_a_batch_that_stays_unhealthy_stops_the_rollback(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    async with world(nats_server, bus, tmp_path, pol=policy(strategy="batches:2")) as w:
        _, v2 = await w.seed()

        def n2_sick(req: VerdictRequest) -> VerdictReply:
            healthy = [n for n in req.nodes if n != "n2"]
            sick = [n for n in req.nodes if n == "n2"]
            return VerdictReply(
                verdict="fail" if sick else "pass",
                samples=6,
                healthy_nodes=healthy,
                unhealthy_nodes=sick,
            )

        w.health.judge = n2_sick
        await w.alert("a-1", v2)
        stuck = (await w.tap.wait_type("rollback.stuck"))[0]
        assert isinstance(stuck, RollbackStuck)
        assert stuck.batch == 0 and stuck.healthy_share == 0.5
        assert "50% healthy" in stuck.reason
        alert = await w.tap.wait_for(
            lambda: [a for a in w.tap.alerts if a.source == "rollbacker"], timeout=5
        )
        assert alert[0].nodes == ["n2"] and alert[0].rule == "rollback_stuck"
        # Nothing further was switched: batch 2 still runs the bad version; not promoted.
        assert [w.read(n) for n in w.nodes] == [GOOD, GOOD, BAD, BAD]
        committed = [e for e in w.tap.events if isinstance(e, TxnCommitted) and e.version == 3]
        assert len(committed) == 1
        assert w.store.production[NS] == v2
        assert "rollback.completed" not in w.tap.types()
        # It waits for an operator: another alert on the same version changes nothing.
        await w.alert("a-2", v2)
        assert await outcome_of(w, "a-2") == "held"
        assert len(w.tap.of("rollback.started")) == 1


async def test_no_last_known_good_refuses_and_says_so_once(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    async with world(nats_server, bus, tmp_path) as w:
        v1 = await w.store.add(NS, GOOD, "good-1")
        await w.switch(v1)
        await w.store.promote(NS, v1)  # production, but never passed a bake: not known good
        v2 = await redeploy_bad(w)
        await w.alert("a-1", v2)
        stuck = (await w.tap.wait_type("rollback.stuck"))[0]
        assert isinstance(stuck, RollbackStuck)
        assert stuck.batch == -1 and "nothing known-good" in stuck.reason
        await w.tap.wait_for(lambda: [a for a in w.tap.alerts if a.source == "rollbacker"])
        await w.alert("a-2", v2)
        assert await outcome_of(w, "a-2") == "refused"
        assert len(w.tap.of("rollback.stuck")) == 1  # announced once per version
        assert w.store.newest(NS) == v2 and all(w.read(n) == BAD for n in w.nodes)


async def test_alerts_it_must_not_act_on_are_ignored(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    async with world(nats_server, bus, tmp_path, pol=policy(window_s=3600.0)) as w:
        v1, v2 = await w.seed()
        await w.alert("resolved", v2, state="resolved")
        await w.alert("own", v2, source="rollbacker")
        await w.alert("stale", v1)  # about v1, production is v2
        assert await outcome_of(w, "stale") == "ignored"
        assert await w.metric("confbus_rollbacker_alerts_total", 'outcome="ignored"') == 3
        w.store.set_policy(policy(automatic=False))
        await w.alert("off", v2)
        assert await outcome_of(w, "off") == "ignored"
        w.store.set_policy(policy(window_s=0.001))
        await w.alert("late", v2)
        assert await outcome_of(w, "late") == "ignored"
        # A failed bake handed over by the distributor is never too late.
        await w.alert("bake", v2, source="distributor")
        assert await outcome_of(w, "bake") == "started"
        await w.tap.wait_type("rollback.completed")
        assert all(w.read(n) == GOOD for n in w.nodes)
