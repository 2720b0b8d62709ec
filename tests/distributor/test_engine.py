"""The rollout engine against a real nats-server, with the real coordinator, distributor and
agents in this process (tests/distributor/harness.py). The must-show scenarios with real
processes are in tests/e2e/test_rollout_*.py; these cover the other paths: refusals, no votes,
controls, queueing, the rollbacker's hand-over, bootstrapping, a node that keeps failing,
two replicas, and the client's ``wait_rollout``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import anyio
import pytest
from nats.aio.msg import Msg

from confbus.client import Client
from confbus.runtime.api import call
from confbus.runtime.errors import Conflict
from confbus.runtime.events import emit
from confbus.schemas.api import dist as dist_api
from confbus.schemas.api import health as health_api
from confbus.schemas.api.operation import Operation
from confbus.schemas.events import (
    AnyEvent,
    NodeCatchUp,
    NodeStatusChanged,
    RollbackStarted,
    RolloutBaked,
    RolloutCompleted,
    RolloutFailed,
    RolloutRolledBack,
    RolloutStarted,
    RolloutSuperseded,
    RolloutWave,
    TxnCommitted,
)
from confbus.schemas.policy import Policy
from tests.distributor.harness import NS, Harness, content_of
from tests.helpers import eventually

pytestmark = pytest.mark.anyio


async def agents(h: Harness, n: int, **kw: object) -> list[str]:
    nodes = [f"n{i}" for i in range(1, n + 1)]
    for node in nodes:
        await h.start_agent(node, **kw)  # type: ignore[arg-type]
    return nodes


async def control(
    h: Harness, op: Operation[dist_api.ControlRequest, dist_api.RolloutReply], **kw: object
) -> dist_api.RolloutInfo:
    reply = await call(
        h.bus,
        op,
        dist_api.ControlRequest(namespace=NS, actor="tester", **kw),  # type: ignore[arg-type]
    )
    assert reply.rollout is not None
    return reply.rollout


async def test_unknown_strategy_and_bad_selector_are_refused(h: Harness) -> None:
    nodes = await agents(h, 2)
    v1 = await h.store.publish(NS, strategy="blue-green")
    rec = await h.wait_rollout_state(v1, ("failed",))
    assert rec.failed_wave == -1 and not rec.waves
    assert "unknown strategy 'blue-green'" in rec.reason and "linear:STEP%" in rec.reason
    v2 = await h.store.publish(NS, selector={"dc": "eu 1"})
    rec = await h.wait_rollout_state(v2, ("failed",))
    assert "invalid selector" in rec.reason and "'eu 1'" in rec.reason
    v3 = await h.store.publish(NS, strategy="linear:0%")
    rec = await h.wait_rollout_state(v3, ("failed",))
    assert "above 0" in rec.reason
    await h.wait_event(RolloutFailed, version=v3)
    failed = h.of_type(RolloutFailed)
    assert [f.wave for f in failed] == [-1, -1, -1]
    assert not h.of_type(TxnCommitted) and not h.of_type(RolloutStarted)
    assert all(h.read(n) is None for n in nodes)
    assert not h.store.promotions


async def test_a_no_vote_fails_the_wave_with_each_reason(h: Harness) -> None:
    await h.start_agent("n1")
    await h.start_agent("n2", validate="sh -c 'echo pool must be even >&2; exit 3'")
    v1 = await h.store.publish(NS)
    rec = await h.wait_rollout_state(v1, ("failed",))
    assert rec.failed_wave == 0 and rec.waves[0].attempts == 1  # a no is never retried
    assert "voted no" in rec.reason and "n2" in rec.reason and "pool must be even" in rec.reason
    outcomes = {o.node: o for o in rec.report}
    assert outcomes["n2"].outcome == "no" and "pool must be even" in outcomes["n2"].reason
    # n1 said yes (skipped: the transaction aborted) or had not voted yet when the no decided.
    assert outcomes["n1"].outcome in ("skipped", "missing")
    assert h.read("n1") is None and h.read("n2") is None
    wave = await h.wait_event(RolloutWave, version=v1)
    assert wave.outcome == "aborted"


async def test_pause_resume_and_abort(h: Harness) -> None:
    h.store.policies[NS] = Policy(namespace=NS, bake_s=0.5)
    nodes = await agents(h, 4)
    v1 = await h.store.publish(NS, strategy="linear:25%")

    async def wave0() -> bool:
        rec = await h.rollout()
        return rec is not None and rec.waves[:1] != [] and rec.waves[0].state == "baking"

    await eventually(wave0, what="wave 0 baking")
    paused = await control(h, dist_api.PAUSE, reason="looking at graphs")
    assert paused.state == "paused"
    with pytest.raises(Conflict, match="paused"):
        await control(h, dist_api.PAUSE)
    # Held: well past the bake, wave 1 does not start.
    with anyio.move_on_after(1.5):
        await eventually(lambda: _wave_started(h, 1), timeout=2.0)
        raise AssertionError("a paused rollout switched another wave")
    rec = await h.rollout()
    assert rec is not None and rec.state == "paused" and rec.current_wave <= 1
    assert rec.waves[1].state == "pending"
    await control(h, dist_api.RESUME)
    rec = await h.wait_rollout_state(v1, ("completed",))
    await h.wait_files(nodes, content_of(v1))

    v2 = await h.store.publish(NS, strategy="linear:25%")
    await eventually(lambda: _wave_started(h, 0, v2), what="v2 wave 0")
    aborted = await control(h, dist_api.ABORT, reason="wrong file")
    assert aborted.state == "failed" and "aborted by tester: wrong file" in aborted.reason
    rec = await h.wait_rollout_state(v2, ("failed",))
    assert [w.state for w in rec.waves][1:] == ["skipped"] * 3
    names = [type(e).__name__ for e in h.events if getattr(e, "version", None) == v1]
    assert "RolloutPaused" in names and "RolloutResumed" in names
    with pytest.raises(Conflict, match="failed"):
        await control(h, dist_api.RESUME)


async def _wave_started(h: Harness, index: int, version: int | None = None) -> bool:
    rec = await h.rollout()
    if rec is None or (version is not None and rec.version != version):
        return False
    return len(rec.waves) > index and rec.waves[index].state in ("switching", "baking", "done")


async def test_queue_mode_runs_the_newest_waiting_version_next(h: Harness) -> None:
    h.store.policies[NS] = Policy(namespace=NS, bake_s=0.4, on_newer_version="queue")
    nodes = await agents(h, 2)
    v1 = await h.store.publish(NS, strategy="linear:50%")
    await eventually(lambda: _wave_started(h, 0, v1), what="v1 under way")
    v2 = await h.store.publish(NS)
    v3 = await h.store.publish(NS)
    await h.wait_rollout_state(v3, ("completed",))
    await h.wait_files(nodes, content_of(v3))
    await h.wait_event(RolloutCompleted, version=v3)
    done = {e.version for e in h.of_type(RolloutCompleted)}
    assert done == {v1, v3}  # v1 finished first: queued, not superseded
    skipped = await h.wait_event(RolloutSuperseded, version=v2)
    assert skipped.by_version == v3
    assert h.store.promotions == [(NS, v1), (NS, v3)]


async def test_a_version_announced_after_a_newer_one_is_superseded_not_forgotten(
    h: Harness,
) -> None:
    # v1's event is handled after v2's (redelivered after a broker restart): whoever waits
    # for v1's rollout must hear that there will be none.
    nodes = await agents(h, 2)
    v1 = await h.store.publish(NS, announce=False)
    v2 = await h.store.publish(NS)
    await h.wait_rollout_state(v2, ("completed",))
    await h.store.announce(NS, v1)
    ended = await h.wait_event(RolloutSuperseded, version=v1)
    assert ended.by_version == v2
    await h.wait_files(nodes, content_of(v2))
    rec = await h.rollout()
    assert rec is not None and rec.version == v2  # nothing started for v1


async def test_rolled_back_rollout_is_never_resumed(h: Harness) -> None:
    h.store.policies[NS] = Policy(namespace=NS, bake_s=30.0)
    nodes = await agents(h, 4)
    v1 = await h.store.publish(NS, strategy="linear:25%")
    await eventually(lambda: _wave_started(h, 0, v1), what="v1 under way")
    rec = await h.rollout()
    assert rec is not None
    await emit(
        h.bus,
        RollbackStarted(
            namespace=NS,
            actor="rollbacker",
            rollback_id="rb-1",
            from_version=v1,
            to_version=v1 - 1 or 1,
            new_version=None,
        ),
    )
    rec = await h.wait_rollout_state(v1, ("rolled_back",))
    assert "rb-1" in rec.reason and [w.state for w in rec.waves][1:] == ["skipped"] * 3
    await h.wait_event(RolloutRolledBack, version=v1)
    # A restarted distributor does not pick it up again.
    h.stop_service("dist-1")
    await h.start_distributor(instance="dist-2")
    with anyio.move_on_after(1.5):
        await eventually(lambda: _wave_started(h, 1, v1), timeout=2.0)
        raise AssertionError("a rolled-back rollout was resumed")
    assert sum(1 for n in nodes if h.read(n) == content_of(v1)) == 1
    # The API hand-over does the same for a failed rollout; a version made by the
    # rollbacker (rollback_of) is not rolled out by the distributor.
    v2 = await h.store.publish(NS, rollback_of=v1)
    with anyio.move_on_after(1.0):
        await eventually(lambda: _has_rollout_of(h, v2), timeout=2.0)
        raise AssertionError("the distributor rolled out a rollback version")


async def _has_rollout_of(h: Harness, version: int) -> bool:
    rec = await h.rollout()
    return rec is not None and rec.version == version


async def test_abort_as_rolled_back_is_the_rollbackers_handover(h: Harness) -> None:
    await agents(h, 2, validate=None)
    h.store.policies[NS] = Policy(namespace=NS, bake_s=30.0)
    v1 = await h.store.publish(NS, strategy="canary:1")
    await eventually(lambda: _wave_started(h, 0, v1), what="canary")
    with pytest.raises(Conflict):
        await control(h, dist_api.ABORT, rolled_back=True, version=v1 + 5)
    rec = await control(h, dist_api.ABORT, rolled_back=True, version=v1, reason="rollback rb-9")
    assert rec.state == "rolled_back"
    assert (await h.wait_rollout_state(v1, ("rolled_back",))).reason == "rollback rb-9"


async def test_no_agent_yet_promotes_and_late_joiners_catch_up(h: Harness) -> None:
    v1 = await h.store.publish(NS, strategy="canary:1")
    rec = await h.wait_rollout_state(v1, ("completed",))
    assert "no agent follows" in rec.reason and h.store.production[NS] == v1
    await h.start_agent("late")
    await h.wait_files(["late"], content_of(v1))
    up = await h.wait_event(NodeCatchUp, node="late")
    assert up.outcome == "applied" and up.from_version is None and up.version == v1


async def test_one_fetch_of_a_versions_hash_answers_every_nodes_heartbeat(h: Harness) -> None:
    # Right after a commit every node's heartbeat shows the new version before the
    # distributor knows its sha256; a slow store must be asked once, not once per heartbeat.
    nodes = await agents(h, 6)
    h.store.get_delay_s = 0.3
    v1 = await h.store.publish(NS)
    await h.wait_rollout_state(v1, ("completed",), timeout=30)
    await h.wait_files(nodes, content_of(v1))
    hashes = [a for a in h.store.asked if a == (NS, str(v1), False)]
    assert len(hashes) <= 2, hashes


@contextlib.asynccontextmanager
async def state_reads(h: Harness, part: str) -> AsyncIterator[list[str]]:
    """The reads of CFG_STATE keys containing ``part`` made meanwhile, as seen on the bus."""
    reads: list[str] = []

    async def on_read(msg: Msg) -> None:
        wanted = json.loads(msg.data or b"{}").get("last_by_subj", "")
        if part in wanted:
            reads.append(wanted)

    sub = await h.bus.nc.subscribe("$JS.API.STREAM.MSG.GET.KV_CFG_STATE", cb=on_read)
    try:
        yield reads
    finally:
        await h.bus.nc.flush()
        await sub.unsubscribe()


async def test_raising_the_targets_writes_each_key_without_reading_it_first(h: Harness) -> None:
    nodes = await agents(h, 4)
    v1 = await h.store.publish(NS)
    await h.wait_rollout_state(v1, ("completed",))
    async with state_reads(h, ".target.") as reads:
        v2 = await h.store.publish(NS)
        await h.wait_rollout_state(v2, ("completed",))
        await h.wait_files(nodes, content_of(v2))
    st = await call(h.bus, dist_api.STATUS, dist_api.StatusRequest(namespace=NS))
    assert sorted(n.node for n in st.nodes if n.target_version == v2) == nodes
    assert reads == []  # the watch's revision was current: one compare-and-set per node


async def test_from_a_version_to_its_switch_nothing_is_read_twice(h: Harness) -> None:
    # The plan takes the reads on_version has just made, and every write of the record is
    # a compare-and-set on the copy the driver holds (its own last write, or the watch's):
    # a quiet rollout never reads its record back, and publishes each event once.
    nodes = await agents(h, 3)
    v1 = await h.store.publish(NS)
    await h.wait_event(RolloutCompleted, version=v1)
    h.store.asked.clear()
    async with state_reads(h, ".rollout.") as reads:
        v2 = await h.store.publish(NS)
        await h.wait_event(RolloutCompleted, version=v2)
        await h.wait_files(nodes, content_of(v2))
    assert reads == []
    assert h.store.asked.count((NS, str(v2), False)) == 1  # on_version's, used by the plan
    assert h.store.asked.count((NS, str(v2), True)) == 1  # the coordinator's fetch
    kinds = [
        type(e).__name__
        for e in h.events
        if isinstance(e, RolloutStarted | TxnCommitted | RolloutCompleted) and e.version == v2
    ]
    assert kinds == ["RolloutStarted", "TxnCommitted", "RolloutCompleted"]
    rec = await h.rollout()
    assert rec is not None and rec.state == "completed" and rec.outbox == []


async def test_a_node_that_keeps_failing_is_reported_and_blocks_no_one(h: Harness) -> None:
    h.store.policies[NS] = Policy(namespace=NS, vote_timeout_s=1.0)
    v1 = await h.store.publish(NS)
    await h.wait_rollout_state(v1, ("completed",))  # no agent yet: promoted as is
    await h.start_agent("bad", validate="sh -c 'echo disk full >&2; exit 1'")
    await h.start_agent("good")
    await h.wait_files(["good"], content_of(v1))

    async def failing() -> NodeStatusChanged | None:
        found = [e for e in h.of_type(NodeStatusChanged) if e.node == "bad"]
        return next((e for e in found if e.status == "failing"), None)

    status = await eventually(failing, timeout=15, what="bad reported failing")
    assert "disk full" in status.reason
    tries = [e for e in h.of_type(NodeCatchUp) if e.node == "bad"]
    assert len(tries) >= 3 and all(e.outcome == "failed" for e in tries)
    assert all(e.next_retry_s is not None and e.next_retry_s <= 1.0 for e in tries)  # capped
    st = await call(h.bus, dist_api.STATUS, dist_api.StatusRequest(namespace=NS))
    bad = next(n for n in st.nodes if n.node == "bad")
    assert bad.status.startswith("failing:") and "disk full" in bad.status
    assert bad.attempts >= 3 and bad.target_version == v1 and bad.applied_version is None
    good = next(n for n in st.nodes if n.node == "good")
    assert good.status == "ok" and good.applied_version == v1


async def test_final_pass_with_data_marks_last_good(h: Harness) -> None:
    async def verdict(req: health_api.VerdictRequest) -> health_api.VerdictReply:
        return health_api.VerdictReply(verdict="pass", samples=9, healthy_nodes=req.nodes)

    nodes = await agents(h, 2)
    v1 = await h.store.publish(NS)  # no health-watcher: no_data → promoted, never last good
    await h.wait_rollout_state(v1, ("completed",))
    assert NS not in h.store.last_good
    await h.serve_verdicts(verdict)
    v2 = await h.store.publish(NS, strategy="linear:50%")
    rec = await h.wait_rollout_state(v2, ("completed",))
    assert rec.last_good and h.store.last_good[NS] == v2
    assert [b.verdict for b in h.of_type(RolloutBaked) if b.version == v2] == ["pass", "pass"]
    await h.wait_files(nodes, content_of(v2))


async def test_missing_data_fails_when_the_policy_says_so(h: Harness) -> None:
    h.store.policies[NS] = Policy(namespace=NS, on_missing_data="fail")
    await agents(h, 2)
    v1 = await h.store.publish(NS, strategy="canary:1")
    rec = await h.wait_rollout_state(v1, ("failed",))
    assert "no_data" in rec.reason and rec.handed_to_rollbacker
    assert [w.state for w in rec.waves] == ["failed", "skipped"]
    assert NS not in h.store.production


async def test_two_replicas_one_drives_the_other_takes_over(h: Harness) -> None:
    h.store.policies[NS] = Policy(namespace=NS, bake_s=0.5)
    nodes = await agents(h, 4)
    await h.start_distributor(instance="dist-2")
    v1 = await h.store.publish(NS, strategy="linear:25%")
    await eventually(lambda: _wave_started(h, 1, v1), timeout=15, what="wave 1 under way")
    rec = await h.rollout()
    assert rec is not None
    driver = rec.holder
    h.stop_service(driver)  # the driving replica goes away mid-rollout
    rec = await h.wait_rollout_state(v1, ("completed",), timeout=30)
    await h.wait_files(nodes, content_of(v1))
    # By txid: the harness hears events on core NATS, where a re-publish that the stream
    # deduplicates (the coordinator's recovery re-announcing a decision) shows twice.
    commits = {e.txid: e for e in h.of_type(TxnCommitted) if e.version == v1}
    assert sorted(n for c in commits.values() for n in c.participants) == sorted(nodes)
    actors = {e.actor for e in h.of_type(RolloutWave)}
    assert driver in actors and len(actors) == 2 and rec.holder != driver


async def test_wait_rollout_reports_progress(h: Harness) -> None:
    h.store.policies[NS] = Policy(namespace=NS, bake_s=0.2)
    await agents(h, 2)
    seen: list[AnyEvent] = []
    async with Client(h.url, name="waiter") as client:
        v1 = await h.store.publish(NS, strategy="linear:50%")
        info = await client.wait_rollout(NS, v1, timeout=30, progress=seen.append)
        assert info.state == "completed" and info.version == v1
        assert [w.state for w in info.waves] == ["done", "done"]
        kinds = [type(e).__name__ for e in seen]
        assert kinds[0] == "RolloutStarted" and kinds[-1] == "RolloutCompleted"
        assert kinds.count("RolloutWave") == 2 and kinds.count("RolloutBaked") == 2
        # Asking after the fact: the answer is at once, from the replay.
        again = await client.wait_rollout(NS, v1, timeout=10)
        assert again.rollout_id == info.rollout_id
        status = await client.fleet_status(NS)
        assert status.production_version == v1 and len(status.nodes) == 2
        assert status.rollout is not None and status.rollout.state == "completed"
        assert all(n.liveness == "live" and n.target_version == v1 for n in status.nodes)
