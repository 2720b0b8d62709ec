"""The rollbacker's pure rules: batches, cooldown and cap, the stuck hold, bounds, the
healthy share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from confbus.rollbacker import plan
from confbus.rollbacker.driver import healthy_share
from confbus.rollbacker.engine import alert_rollback_id, change_id_of
from confbus.rollbacker.records import MAX_ALERTS, prune, rate_limit, with_alert, with_rollback
from confbus.runtime.errors import InvalidInput
from confbus.schemas.api.dist import NodeStatus
from confbus.schemas.api.health import VerdictReply
from confbus.schemas.policy import RollbackPolicy
from confbus.schemas.state import BatchResult, Ledger, Rollback, SeenAlert

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rb(rid: str, at: datetime, state: str = "completed", **kw: object) -> Rollback:
    return Rollback(
        rollback_id=rid,
        namespace="web",
        trigger="alert",
        to_version=1,
        change_id=f"rollback-{rid}",
        strategy="all-at-once",
        state=state,  # type: ignore[arg-type]
        started_at=at,
        updated_at=at,
        **kw,  # type: ignore[arg-type]
    )


def node(name: str, applied: int | None, liveness: str = "live") -> NodeStatus:
    return NodeStatus(
        node=name,
        liveness=liveness,  # type: ignore[arg-type]
        applied_version=applied,
        sha256=None,
        target_version=None,
        last_heartbeat=None,
    )


def test_strategies() -> None:
    assert plan.batch_count("all-at-once") == 1
    assert plan.batch_count("batches:5") == 5
    for bad in ("batches:0", "batches:", "halves", "batches:-1", "batches:10000"):
        with pytest.raises(InvalidInput):
            plan.batch_count(bad)


def test_split_is_even_and_never_empty() -> None:
    nodes = [f"n{i}" for i in range(7)]
    assert [len(b) for b in plan.split(nodes, 3)] == [3, 2, 2]
    assert plan.split(nodes, 1) == [nodes]
    assert [len(b) for b in plan.split(nodes[:2], 5)] == [1, 1]
    assert plan.split([], 3) == []
    assert [n for b in plan.split(nodes, 4) for n in b] == nodes


def test_targets_put_the_hurting_nodes_first_and_skip_dead_or_done_ones() -> None:
    nodes = [
        node("a", 1),
        node("b", 2),
        node("c", 2, "away"),
        node("d", 3),
        node("e", None),
        node("f", 2),
    ]
    assert plan.targets(nodes, from_version=2, new_version=3) == ["b", "f", "a", "e"]


def test_cooldown_then_cap() -> None:
    pol = RollbackPolicy(cooldown_s=300, max_per_window=2, cap_window_s=3600)
    ledger = Ledger(namespace="web")
    assert rate_limit(ledger, pol, T0) is None
    ledger = with_rollback(ledger, rb("r1", T0))
    limited = rate_limit(ledger, pol, T0 + timedelta(seconds=10))
    assert limited is not None and limited.kind == "cooldown"
    assert rate_limit(ledger, pol, T0 + timedelta(seconds=301)) is None
    ledger = with_rollback(ledger, rb("r2", T0 + timedelta(seconds=400)))
    limited = rate_limit(ledger, pol, T0 + timedelta(seconds=800))
    assert limited is not None and limited.kind == "cap"
    assert rate_limit(ledger, pol, T0 + timedelta(seconds=3601)) is None  # r1 left the window
    # A refused rollback (nothing known-good) never counts.
    refused = with_rollback(Ledger(namespace="web"), rb("r3", T0, state="refused"))
    assert rate_limit(refused, pol, T0) is None


def test_a_stuck_rollback_holds_versions_up_to_its_own() -> None:
    ledger = with_rollback(Ledger(namespace="web"), rb("r1", T0, "stuck", new_version=5))
    assert ledger.holding(4) is not None and ledger.holding(5) is not None
    assert ledger.holding(6) is None  # a newer version is a new situation
    ledger = with_rollback(ledger, rb("r2", T0 + timedelta(seconds=1)))  # an operator acted
    assert ledger.holding(4) is None


def test_the_ledger_stays_bounded() -> None:
    ledger = Ledger(namespace="web")
    for i in range(MAX_ALERTS + 50):
        ledger = with_alert(ledger, SeenAlert(alert_id=f"a{i}", at=T0, outcome="ignored"))
    assert len(ledger.alerts) == MAX_ALERTS and ledger.seen(f"a{MAX_ALERTS + 49}") is not None
    batch = BatchResult(index=0, nodes=["n1"], switched=["n1"], txids=["t"])
    for i in range(80):
        ledger = with_rollback(
            ledger, rb(f"r{i}", T0 + timedelta(seconds=i), batches=[["n1"]], done=[batch])
        )
    assert len(ledger.rollbacks) == 50
    assert ledger.rollbacks[-1].batches == [["n1"]]  # the newest keeps its node lists
    assert all(not r.batches and not r.done[0].nodes for r in ledger.rollbacks[:-1])
    pruned = prune(ledger, RollbackPolicy(cap_window_s=60, cooldown_s=60), T0 + timedelta(days=2))
    assert len(pruned.rollbacks) == 5 and pruned.alerts == []


def test_the_same_alert_maps_to_the_same_rollback_and_change() -> None:
    a, b = alert_rollback_id("web", "x"), alert_rollback_id("web", "x")
    assert a == b != alert_rollback_id("api", "x")
    assert change_id_of(a) == "rollback-" + a.removeprefix("rb-")


def test_healthy_share() -> None:
    result = BatchResult(index=0, nodes=["a", "b", "c", "d"], switched=["a", "b", "c"])
    v = VerdictReply(verdict="fail", samples=9, healthy_nodes=["a"], unhealthy_nodes=["b"])
    assert healthy_share(result, v, "pass") == 0.5  # c has no data: counts as healthy
    assert healthy_share(result, v, "fail") == 0.25  # d was never switched: unhealthy
    assert healthy_share(result, VerdictReply(verdict="pass", samples=3), "pass") == 0.75
    assert healthy_share(result, VerdictReply(verdict="fail", samples=3), "pass") == 0.0
