"""Rollouts under faults, end to end: a distributor killed mid-rollout, an agent
away during two rollouts, a newer version mid-rollout, frozen agents, a hand-edited file.
Real nats-server, version-store, coordinator, distributor and agent processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from confbus.client import Client
from confbus.schemas.events import (
    NodeApplied,
    NodeCatchUp,
    NodeDrift,
    NodeStatusChanged,
    RolloutCompleted,
    RolloutStarted,
    RolloutSuperseded,
    RolloutWave,
    TxnCommitted,
)
from tests.distributor.e2e import (
    NS,
    all_applied,
    content,
    decisions,
    events,
    of,
    rollout_stack,
    set_policy,
    stack_of,
    start_distributor,
    wait_event,
)
from tests.e2e.stack import Stack
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

EIGHT = tuple(f"n{i}" for i in range(1, 9))
FOUR = EIGHT[:4]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Four agents, the distributor and the services it needs."""
    yield from stack_of(tmp_path, FOUR)


async def not_live(client: Client, node: str) -> None:
    async def probe() -> bool:
        st = await client.fleet_status(NS)
        return any(n.node == node and n.liveness != "live" for n in st.nodes)

    await eventually(probe, timeout=15, every=0.2, what=f"{node} no longer live")


@pytest.mark.parametrize("wave", [1, 2])
async def test_killed_distributor_resumes_at_the_right_wave(tmp_path: Path, wave: int) -> None:
    stack = rollout_stack(tmp_path, EIGHT, distributor=False)
    try:
        # SIGKILL itself right after the coordinator's reply for a wave's commit, before
        # recording it: the restarted one must find that commit, not switch the wave again.
        # At the 1st wave, rollout.started is published but still in the record's outbox
        # (the wave's record write drops it): published again, it is a no-op.
        start_distributor(
            stack, env={"CONFBUS_FAILPOINTS": f"distributor.after_wave_committed=kill@{wave}"}
        )
        async with stack.client() as client:
            await set_policy(client, bake_s=0.3)
            await stack.live(len(EIGHT))
            v1 = await client.publish(NS, content("v1"), strategy="linear:25%")
            assert stack.services["distributor"].wait_exit(timeout=30) == -9
            await eventually(
                lambda: _any(client, TxnCommitted, wave),
                timeout=10,
                what=f"{wave} commit(s) before the kill",
            )
            start_distributor(stack)  # the same flags, no failpoint
            info = await client.wait_rollout(NS, v1.version, timeout=60)
            assert info.state == "completed", info.reason
            await stack.files_hold(EIGHT, content("v1"))

            evs = await events(client.bus)
            started = of(evs, RolloutStarted)
            assert len(started) == 1 and started[0].rollout_id == info.rollout_id  # resumed
            waves = of(evs, RolloutWave)
            assert [w.wave for w in waves] == [0, 1, 2, 3]
            assert all(w.outcome == "committed" for w in waves)
            commits = [e for e in of(evs, TxnCommitted) if e.version == v1.version]
            assert len(commits) == 4  # no wave switched twice, none skipped
            assert {w.txid for w in waves} == {c.txid for c in commits}
            participants = sorted(n for c in commits for n in c.participants)
            assert participants == sorted(EIGHT)
            assert all(d.outcome == "commit" for d in await decisions(client.bus))
            applied = await all_applied(client.bus, v1.version, EIGHT)
            assert sorted(e.node for e in applied) == sorted(EIGHT)  # each exactly once
            assert [len(w.nodes) for w in info.waves] == [2, 2, 2, 2]
            assert all(w.attempts == 1 for w in info.waves)
    finally:
        stack.stop()


async def _any(client: Client, kind: type, n: int) -> bool:
    return len(of(await events(client.bus), kind)) >= n


async def test_agent_away_during_two_rollouts_catches_up(stack: Stack) -> None:
    async with stack.client() as client:
        await stack.live(len(FOUR))
        v1 = await client.publish(NS, content("v1"))
        assert (await client.wait_rollout(NS, v1.version, timeout=30)).state == "completed"
        await stack.files_hold(FOUR, content("v1"))
        # Stopped only once it has announced its apply (the file is written just before).
        await wait_event(client.bus, NodeApplied, node="n4", version=v1.version)
        stack.agents["n4"].proc.stop()
        await not_live(client, "n4")
        v2 = await client.publish(NS, content("v2"))
        assert (await client.wait_rollout(NS, v2.version, timeout=30)).state == "completed"
        v3 = await client.publish(NS, content("v3"))
        done = await client.wait_rollout(NS, v3.version, timeout=30)
        assert done.state == "completed" and "n4" not in done.targets
        assert stack.agents["n4"].read(NS) == content("v1")
        # Announced away (node.status waits out --status-event-gap after its last one):
        # the two rollouts can be over sooner than that.
        await wait_event(client.bus, NodeStatusChanged, node="n4", status="away")

        stack.agents["n4"].proc.start()
        await stack.files_hold(FOUR, content("v3"))
        # The event log says how: back live, one catch-up switch straight to v3.
        catchup = await wait_event(client.bus, NodeCatchUp, node="n4", outcome="applied")
        assert catchup.kind == "switch" and catchup.version == v3.version
        assert catchup.from_version == v1.version and catchup.txid is not None
        await wait_event(client.bus, NodeApplied, node="n4", version=v3.version)
        evs = await events(client.bus)
        commit = next(e for e in of(evs, TxnCommitted) if e.txid == catchup.txid)
        assert commit.participants == ["n4"] and commit.version == v3.version
        n4 = [e for e in of(evs, NodeApplied) if e.node == "n4"]
        assert [(e.version, e.previous) for e in n4] == [(1, None), (3, 1)]  # skipped v2

        async def back_live() -> list[str] | None:
            found = of(await events(client.bus), NodeStatusChanged)
            statuses = [e.status for e in found if e.node == "n4"]
            # Away, and gone too when its restart took longer than GONE_AFTER heartbeats
            # (a loaded machine): then live again.
            back = statuses[-1:] == ["live"] and statuses[-2:-1] in (["away"], ["gone"])
            return list(statuses) if back else None

        statuses = await eventually(back_live, timeout=10, what="n4 away, then live")
        assert statuses[:2] == ["live", "away"]  # joined, went away, came back
        st = await client.fleet_status(NS)
        n4s = next(n for n in st.nodes if n.node == "n4")
        assert n4s.applied_version == n4s.target_version == v3.version


async def test_newer_version_supersedes_a_rollout_mid_bake(stack: Stack) -> None:
    async with stack.client() as client:
        await stack.live(len(FOUR))
        v1 = await client.publish(NS, content("v1"))
        assert (await client.wait_rollout(NS, v1.version, timeout=30)).state == "completed"
        await set_policy(client, bake_s=60.0)  # a long bake: v2 would take minutes
        v2 = await client.publish(NS, content("v2"), strategy="linear:25%")
        await wait_event(client.bus, RolloutWave, version=v2.version, wave=0)
        await set_policy(client, bake_s=0.2)  # v3's own rollout: quick
        v3 = await client.publish(NS, content("v3"), strategy="all-at-once")
        old = await client.wait_rollout(NS, v2.version, timeout=30)
        assert old.state == "superseded" and old.superseded_by == v3.version
        new = await client.wait_rollout(NS, v3.version, timeout=30)
        assert new.state == "completed", new.reason
        await stack.files_hold(FOUR, content("v3"))

        sup = await wait_event(client.bus, RolloutSuperseded, version=v2.version)
        await wait_event(client.bus, RolloutCompleted, version=v3.version)
        evs = await events(client.bus)
        assert sup.by_version == v3.version
        assert [w.state for w in sup.waves] == ["done", "skipped", "skipped", "skipped"]
        v2_applied = {e.node for e in of(evs, NodeApplied) if e.version == v2.version}
        assert len(v2_applied) == 1  # only the first wave went out
        done = next(e for e in of(evs, RolloutCompleted) if e.version == v3.version)
        assert sorted(o.node for o in done.report) == sorted(FOUR)
        assert (await client.fleet_status(NS)).production_version == v3.version


async def _frozen_stack(tmp_path: Path) -> Stack:
    """8 agents; n6..n8 freeze (SIGSTOP themselves) when the 2nd prepare reaches them."""
    from tests.distributor.e2e import HEARTBEAT_S

    stack = rollout_stack(tmp_path, EIGHT[:5], distributor=False)
    for n in EIGHT[5:]:
        stack.start_agent(
            n,
            (NS,),
            "--heartbeat-interval",
            str(HEARTBEAT_S),
            env={"CONFBUS_FAILPOINTS": "agent.before_vote=pause@2"},
        )
    start_distributor(stack)
    return stack


FROZEN = EIGHT[5:]


async def test_frozen_agents_are_left_out_within_max_excluded(tmp_path: Path) -> None:
    stack = await _frozen_stack(tmp_path)
    try:
        async with stack.client() as client:
            await set_policy(client, max_excluded=0.4, vote_timeout_s=1.5)
            await stack.live(len(EIGHT))
            v1 = await client.publish(NS, content("v1"))
            assert (await client.wait_rollout(NS, v1.version, timeout=30)).state == "completed"
            v2 = await client.publish(NS, content("v2"))
            info = await client.wait_rollout(NS, v2.version, timeout=60)
            assert info.state == "completed", info.reason
            assert info.waves[0].attempts == 2 and info.waves[0].excluded == sorted(FROZEN)
            await stack.files_hold(EIGHT[:5], content("v2"))
            for n in FROZEN:
                assert stack.agents[n].read(NS) == content("v1")
            evs = await events(client.bus)
            waves = [w for w in of(evs, RolloutWave) if w.version == v2.version]
            assert [w.outcome for w in waves] == ["retrying", "committed"]
            missing = sorted(o.node for o in waves[0].nodes if o.outcome == "excluded")
            assert missing == sorted(FROZEN)
            commit = next(e for e in of(evs, TxnCommitted) if e.txid == waves[1].txid)
            assert sorted(commit.participants) == sorted(EIGHT[:5])

            # Thawed, they catch up to their target (v2, now production).
            for n in FROZEN:
                stack.agents[n].proc.resume()
            await stack.files_hold(EIGHT, content("v2"), timeout=30)
            for n in FROZEN:
                up = await wait_event(client.bus, NodeCatchUp, node=n, outcome="applied")
                assert up.version == v2.version and up.kind == "switch"
    finally:
        for n in FROZEN:
            stack.agents[n].proc.resume()
        stack.stop()


async def test_frozen_agents_beyond_max_excluded_fail_the_rollout(tmp_path: Path) -> None:
    stack = await _frozen_stack(tmp_path)
    try:
        async with stack.client() as client:
            await set_policy(client, vote_timeout_s=1.5)  # max_excluded: the default, none
            await stack.live(len(EIGHT))
            v1 = await client.publish(NS, content("v1"))
            assert (await client.wait_rollout(NS, v1.version, timeout=30)).state == "completed"
            await stack.files_hold(EIGHT, content("v1"))
            v2 = await client.publish(NS, content("v2"))
            info = await client.wait_rollout(NS, v2.version, timeout=60)
            assert info.state == "failed"
            assert info.waves[0].attempts == 1  # not retried
            assert "missed the vote deadline" in info.reason and "max_excluded" in info.reason
            for n in FROZEN:
                assert n in info.reason
            evs = await events(client.bus)
            assert not [e for e in of(evs, TxnCommitted) if e.version == v2.version]
            assert not [e for e in of(evs, NodeApplied) if e.version == v2.version]
            for n in EIGHT:
                assert stack.agents[n].read(NS) == content("v1"), n
            assert (await client.fleet_status(NS)).production_version == v1.version
    finally:
        for n in FROZEN:
            stack.agents[n].proc.resume()
        stack.stop()


async def test_hand_edited_file_is_resynced(tmp_path: Path) -> None:
    stack = rollout_stack(tmp_path, FOUR[:3])
    try:
        async with stack.client() as client:
            await stack.live(3)
            v1 = await client.publish(NS, content("v1"))
            assert (await client.wait_rollout(NS, v1.version, timeout=30)).state == "completed"
            await stack.files_hold(FOUR[:3], content("v1"))
            path = stack.agents["n2"].files[NS]
            path.write_bytes(b'{"release": "edited by hand", "pool": 999}\n')
            drift = await wait_event(client.bus, NodeDrift, node="n2")
            assert drift.expected_version == v1.version and drift.expected_sha256 == v1.sha256
            assert drift.found_sha256 != v1.sha256
            await stack.files_hold(["n2"], content("v1"))
            fix = await wait_event(client.bus, NodeCatchUp, node="n2", kind="resync")
            assert fix.outcome == "applied" and fix.version == v1.version
            assert "history" in fix.reason
            evs = await events(client.bus)
            assert len([e for e in of(evs, NodeApplied) if e.node == "n2"]) == 1  # no new txn
            assert len(of(evs, TxnCommitted)) == 1
    finally:
        stack.stop()
