"""The rollout record's transitions, as pure functions (services/distributor/record.py and
record_waves.py)."""

from __future__ import annotations

from datetime import timedelta

from confbus.distributor import record as R
from confbus.distributor import record_waves as W
from confbus.distributor.strategy import excluded_budget
from confbus.schemas.api.dist import RolloutInfo
from confbus.schemas.base import utcnow
from confbus.schemas.events import RolloutFailed, RolloutWave, VoteRecord
from confbus.schemas.health import Alert
from confbus.schemas.policy import Policy

ACTOR = "d1"


def planned(nodes: int = 8, waves: int = 4, max_excluded: float = 0.1) -> RolloutInfo:
    names = [f"n{i}" for i in range(nodes)]
    size = nodes // waves
    rec = R.new_rollout("web", 2, strategy=None, selector=None, actor=ACTOR)
    policy = Policy(
        namespace="web",
        bake_s=1.0,
        max_excluded=max_excluded,
        vote_timeout_s=2.0,
        retry_unanswered_s=60.0,
    )
    rec = R.planned(
        rec,
        policy,
        strategy=f"linear:{100 // waves}%",
        selector={},
        waves=[names[i : i + size] for i in range(0, nodes, size)],
        previous_version=1,
        actor=ACTOR,
    )
    return R.replace(rec, outbox=[])


def attempt(rec: RolloutInfo, i: int = 0) -> RolloutInfo:
    nodes = R.wave_nodes(rec, i)
    return W.start_attempt(rec, i, nodes=nodes, already=[], down=[], actor=ACTOR)


def votes(yes: list[str], missing: list[str] = (), no: list[str] = ()) -> list[VoteRecord]:  # type: ignore[assignment]
    return (
        [VoteRecord(node=n, vote="yes") for n in yes]
        + [VoteRecord(node=n, vote="missing") for n in missing]
        + [VoteRecord(node=n, vote="no", reason="bad pool") for n in no]
    )


def test_commit_then_bake_then_next_wave() -> None:
    rec = attempt(planned())
    assert rec.waves[0].state == "switching" and rec.waves[0].switch_nodes == ["n0", "n1"]
    rec = W.record_commit(rec, 0, txid="t1", votes=votes(["n0", "n1"]), switch_s=0.01, actor=ACTOR)
    assert rec.waves[0].state == "baking" and rec.waves[0].txid == "t1"
    assert [o.outcome for o in rec.report[:2]] == ["applied", "applied"]
    assert isinstance(rec.outbox[-1].event, RolloutWave)
    rec = W.record_verdict(
        rec, 0, verdict="no_data", samples=0, reason="", passed=True, actor=ACTOR, alert=None
    )
    assert rec.current_wave == 1 and rec.waves[0].state == "done"
    assert R.switched_nodes(rec) == ["n0", "n1"]


def test_missing_votes_are_retried_once_within_max_excluded() -> None:
    rec = attempt(planned(nodes=10, waves=1, max_excluded=0.2))
    everyone = R.wave_nodes(rec, 0)
    rec = W.record_abort(
        rec, 0, txid="t1", votes=votes(everyone[:8], missing=everyone[8:]), actor=ACTOR
    )
    assert rec.state == "running" and rec.waves[0].state == "pending"
    assert rec.waves[0].excluded == everyone[8:]
    event = rec.outbox[-1].event
    assert isinstance(event, RolloutWave) and event.outcome == "retrying"
    rec = attempt(rec)
    assert rec.waves[0].switch_nodes == everyone[:8] and rec.waves[0].attempts == 2
    # The retry aborts too: no third attempt.
    rec = W.record_abort(rec, 0, txid="t2", votes=votes(everyone[:7], missing=["n7"]), actor=ACTOR)
    assert rec.state == "failed" and "again on its retry" in rec.reason


def test_a_wave_nobody_answered_is_retried_whole_with_backoff_until_its_window_ends() -> None:
    rec = attempt(planned(nodes=4, waves=1))
    everyone = R.wave_nodes(rec, 0)
    delays = []
    for n in range(1, 4):
        rec = W.record_abort(rec, 0, txid=f"t{n}", votes=votes([], missing=everyone), actor=ACTOR)
        w = rec.waves[0]
        assert rec.state == "running" and w.state == "pending" and w.unanswered == n
        assert w.excluded == [] and w.retry_at is not None and w.started_at is not None
        event = rec.outbox[-1].event
        assert isinstance(event, RolloutWave) and event.outcome == "retrying"
        delays.append((w.retry_at - event.at).total_seconds())
        assert "no node ready to vote answered" in event.reason
        rec = attempt(rec)
        assert rec.waves[0].switch_nodes == everyone and rec.waves[0].attempts == n + 1
    assert delays == [0.5, 1.0, 2.0]  # backing off
    # The first attempt began longer ago than the policy's window: the rollout fails.
    w = rec.waves[0]
    assert w.started_at is not None
    rec = R.set_wave(rec, 0, R.replace(w, started_at=w.started_at - timedelta(seconds=59)))
    rec = W.record_abort(rec, 0, txid="t4", votes=votes([], missing=everyone), actor=ACTOR)
    assert rec.state == "failed" and rec.waves[0].unanswered == 3
    assert "no node ready to vote answered in 4 attempt(s)" in rec.reason
    assert rec.wave_reports[0].unanswered == 3


def test_missing_votes_of_nodes_not_ready_are_retried_whole_and_ready_ones_are_not() -> None:
    rec = attempt(planned(nodes=10, waves=1, max_excluded=0.2))
    everyone = R.wave_nodes(rec, 0)
    # n8 and n9 said they were not ready to vote (a reconnect): no one is left out.
    rec = W.record_abort(
        rec, 0, txid="t1", votes=votes(everyone[:8], missing=everyone[8:]), actor=ACTOR,
        unready=everyone[8:],
    )  # fmt: skip
    assert rec.waves[0].state == "pending" and rec.waves[0].excluded == []
    assert rec.waves[0].unanswered == 1
    rec = attempt(rec)
    assert rec.waves[0].switch_nodes == everyone
    # n9 was ready and missed it: left out of one retry, as always (unanswered ones not counted).
    rec = W.record_abort(
        rec, 0, txid="t2", votes=votes(everyone[:8], missing=everyone[8:]), actor=ACTOR,
        unready=["n8"],
    )  # fmt: skip
    assert rec.state == "running" and rec.waves[0].excluded == everyone[8:]
    event = rec.outbox[-1].event
    assert isinstance(event, RolloutWave) and event.outcome == "retrying"


def test_max_excluded_is_a_share_rounded_down_or_a_count() -> None:
    assert excluded_budget(0.1, 4) == 0  # a small fleet stays strict
    assert excluded_budget(0.25, 4) == 1
    assert excluded_budget(0.1, 19) == 1
    assert excluded_budget(2, 4) == 2
    assert excluded_budget(0.0, 100) == 0


def test_a_count_lets_that_many_live_nodes_miss_their_vote() -> None:
    rec = attempt(planned(nodes=8, waves=1, max_excluded=2))
    retried = W.record_abort(
        rec, 0, txid="t1", votes=votes([f"n{i}" for i in range(6)], ["n6", "n7"]), actor=ACTOR
    )
    assert retried.state == "running" and retried.waves[0].excluded == ["n6", "n7"]
    failed = W.record_abort(
        rec, 0, txid="t1", votes=votes([f"n{i}" for i in range(5)], ["n5", "n6", "n7"]),
        actor=ACTOR,
    )  # fmt: skip
    assert failed.state == "failed" and "max_excluded 2 node(s)" in failed.reason


def test_nodes_away_when_their_wave_begins_are_left_out_uncounted() -> None:
    rec = planned(nodes=4, waves=1, max_excluded=0.0)
    rec = W.start_attempt(rec, 0, nodes=["n0", "n1"], already=[], down=["n2", "n3"], actor=ACTOR)
    assert rec.away == ["n2", "n3"] and rec.waves[0].excluded == []
    assert R.excluded_count(rec) == 0
    assert {o.node: o.outcome for o in rec.report}["n2"] == "away"
    assert R.wave_nodes(rec, 0) == ["n0", "n1"]


def test_missing_beyond_max_excluded_fails_without_a_retry() -> None:
    rec = attempt(planned(nodes=8, waves=1, max_excluded=0.1))
    rec = W.record_abort(
        rec, 0, txid="t1", votes=votes(["n0", "n1", "n2", "n3", "n4"], ["n5", "n6", "n7"]),
        actor=ACTOR,
    )  # fmt: skip
    assert rec.state == "failed" and rec.waves[0].attempts == 1
    assert "3 of 8 live targets" in rec.reason, rec.reason
    assert "max_excluded 10% (0 node(s))" in rec.reason, rec.reason  # 0.8 rounded down
    failed = [i.event for i in rec.outbox if isinstance(i.event, RolloutFailed)]
    assert failed and failed[0].wave == 0 and not failed[0].handed_to_rollbacker


def test_a_no_vote_fails_at_once_with_the_reason() -> None:
    rec = attempt(planned())
    rec = W.record_abort(rec, 0, txid="t1", votes=votes(["n0"], no=["n1"]), actor=ACTOR)
    assert rec.state == "failed" and "n1: bad pool" in rec.reason
    assert [w.state for w in rec.waves] == ["failed", "skipped", "skipped", "skipped"]
    report = {o.node: o for o in rec.report}
    assert report["n1"].outcome == "no" and report["n0"].outcome == "skipped"
    assert report["n7"].outcome == "skipped" and "before this node" in report["n7"].reason


def test_failed_bake_hands_over_with_an_alert() -> None:
    rec = attempt(planned())
    rec = W.record_commit(rec, 0, txid="t1", votes=votes(["n0", "n1"]), switch_s=None, actor=ACTOR)
    alert = Alert(alert_id=f"distributor:{rec.rollout_id}:bake0", namespace="web", version=2,
                  source="distributor")  # fmt: skip
    rec = W.record_verdict(
        rec, 0, verdict="fail", samples=5, reason="error_rate", passed=False, actor=ACTOR,
        alert=alert,
    )  # fmt: skip
    assert rec.state == "failed" and rec.handed_to_rollbacker and rec.failed_wave == 0
    assert "verdict after wave 0 is fail: error_rate" in rec.reason
    assert [i.alert for i in rec.outbox if i.alert] == [alert]
    assert rec.outbox[-1].msg_id == alert.alert_id  # idempotent per rollout and wave


def test_supersede_closes_the_waves_and_keeps_what_was_switched() -> None:
    rec = attempt(planned())
    rec = W.record_commit(rec, 0, txid="t1", votes=votes(["n0", "n1"]), switch_s=None, actor=ACTOR)
    assert R.at_boundary(rec)
    rec = R.supersede(rec, 3, actor=ACTOR)
    assert rec.state == "superseded" and rec.superseded_by == 3
    assert [w.state for w in rec.waves] == ["done", "skipped", "skipped", "skipped"]


def test_not_at_a_boundary_while_switching() -> None:
    rec = attempt(planned())
    assert not R.at_boundary(rec)


def test_outbox_ids_are_stable_per_transition() -> None:
    rec = attempt(planned())
    a = W.record_commit(rec, 0, txid="t1", votes=votes(["n0", "n1"]), switch_s=None, actor=ACTOR)
    b = W.record_commit(rec, 0, txid="t1", votes=votes(["n0", "n1"]), switch_s=None, actor=ACTOR)
    assert a.outbox[-1].msg_id == b.outbox[-1].msg_id == f"rollout:{rec.rollout_id}:wave0:t1"


def test_writes_next_says_when_the_next_step_writes_at_once() -> None:
    """Events published by a write leave the outbox with the next step's write only when that
    step writes at once: a due bake, the next wave, the finish — not a bake still running, a
    retry backing off, a paused or ended rollout."""
    rec = attempt(planned())
    assert not R.writes_next(rec, utcnow())  # switching: the outcome comes when it comes
    rec = W.record_commit(rec, 0, txid="t1", votes=votes(["n0", "n1"]), switch_s=0.01, actor=ACTOR)
    committed = rec.waves[0].committed_at
    assert committed is not None and rec.bake_s == 1.0
    assert not R.writes_next(rec, committed + timedelta(seconds=0.5))  # baking
    assert R.writes_next(rec, committed + timedelta(seconds=1.0))  # the bake is due
    assert not R.writes_next(R.pause(rec, actor=ACTOR, reason=""), committed + timedelta(seconds=2))
    rec = W.record_verdict(
        rec, 0, verdict="pass", samples=3, reason="", passed=True, actor=ACTOR, alert=None
    )
    assert rec.current_wave == 1 and R.writes_next(rec, utcnow())  # the next wave's switch
    backing_off = R.set_wave(rec, 1, R.replace(rec.waves[1], retry_at=utcnow() + timedelta(1)))
    assert not R.writes_next(backing_off, utcnow())
    done = R.replace(rec, current_wave=len(rec.waves))
    assert R.writes_next(done, utcnow())  # the finish: promote, then complete
    assert not R.writes_next(R.complete(done, actor=ACTOR, last_good=False), utcnow())
