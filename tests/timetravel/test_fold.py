"""The fold from events to fleet state, pure: against the truth a generated log implies, through
checkpoints written and read back at any cut, and the explanations it gives."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.fleetgen import FleetGen
from confbus.client._fleet import diff, fleet_at, why
from confbus.schemas.events import (
    Event,
    NodeApplied,
    NodeCatchUp,
    NodeLeft,
    NodeStatusChanged,
    RollbackBatch,
    RollbackStarted,
    RolloutBaked,
    RolloutFailed,
    RolloutStarted,
    RolloutWave,
    TxnCommitted,
    VersionCreated,
)
from confbus.schemas.fleet import (
    CheckpointCorrupt,
    FleetState,
    encode_checkpoint,
    parse_checkpoint,
)
from confbus.schemas.fold import fold, new_state

NS = "web"
NODES = [f"n{i:02d}" for i in range(12)]
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def log_of(seed: int, n: int) -> tuple[list[Event], FleetGen]:
    gen = FleetGen(NS, NODES, seed=seed)
    return list(itertools.islice(gen.events(), n)), gen


def fold_all(events: list[Event], state: FleetState | None = None, start: int = 1) -> FleetState:
    state = state or new_state(NS)
    for seq, ev in enumerate(events, start):
        fold(state, seq, T0 + timedelta(seconds=seq), ev)  # type: ignore[arg-type]
    return state


def applied(state: FleetState) -> dict[str, tuple[int, str]]:
    return {
        name: (n.applied.version, n.applied.sha256)
        for name, n in state.nodes.items()
        if n.applied is not None
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_node_holds_what_its_last_apply_says(seed: int) -> None:
    events, gen = log_of(seed, 5000)
    state = fold_all(events)
    assert applied(state) == gen.applied
    assert state.production is not None and state.production.version == gen.production
    # Bounded whatever the length of the log (docs/design.md §8.7).
    assert len(state.txns) <= 2 * 256 + len(NODES) and len(state.versions) <= 2 * 128 + 24


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 1500), cut=st.floats(0, 1))
def test_a_checkpoint_read_back_folds_on_as_if_never_written(seed: int, n: int, cut: float) -> None:
    events, _ = log_of(seed, n)
    k = int(cut * n)
    straight = fold_all(events)
    head = fold_all(events[:k])
    resumed = fold_all(events[k:], parse_checkpoint(encode_checkpoint(head)), start=k + 1)
    assert msgspec.json.encode(resumed) == msgspec.json.encode(straight)


def test_a_damaged_checkpoint_is_refused_with_the_reason() -> None:
    good = encode_checkpoint(fold_all(log_of(1, 300)[0]))
    assert parse_checkpoint(good).namespace == NS
    flipped = bytearray(good)
    flipped[-10] ^= 0xFF
    for bad, reason in [
        (bytes(flipped), "checksum"),
        (good[:-5], "checksum"),
        (b"garbage", "bad header"),
        (good.split(b"\n")[0], "truncated"),
    ]:
        with pytest.raises(CheckpointCorrupt, match=reason):
            parse_checkpoint(bad)


def created(v: int, rollback_of: int | None = None) -> VersionCreated:
    return VersionCreated(
        namespace=NS, version=v, sha256=f"{v:064x}", size=9, format="json", parent=v - 1 or None,
        change_id=f"c{v}", status="approved", actor="alice", message=f"raise the pool ({v})",
        rollback_of=rollback_of,
    )  # fmt: skip


def rollout_v1_then_bad_v2_rolled_back() -> list[Event]:
    three = ["n1", "n2", "n3"]
    return [
        created(1),
        RolloutStarted(namespace=NS, rollout_id="r1", version=1, strategy="all-at-once",
                       waves=[three]),
        TxnCommitted(namespace=NS, txid="t1", version=1, epoch=1, participants=three),
        *[NodeApplied(namespace=NS, node=n, version=1, sha256=f"{1:064x}", txid="t1")
          for n in three],
        RolloutWave(namespace=NS, rollout_id="r1", version=1, wave=0, txid="t1",
                    outcome="committed"),
        created(2),
        RolloutStarted(namespace=NS, rollout_id="r2", version=2, strategy="linear:50%",
                       waves=[["n1"], ["n2", "n3"]]),
        TxnCommitted(namespace=NS, txid="t2", version=2, epoch=1, participants=["n1"]),
        NodeApplied(namespace=NS, node="n1", version=2, sha256=f"{2:064x}", txid="t2"),
        RolloutWave(namespace=NS, rollout_id="r2", version=2, wave=0, txid="t2",
                    outcome="committed"),
        RolloutBaked(namespace=NS, rollout_id="r2", version=2, wave=0, verdict="fail",
                     reason="error_rate 0.31 > 0.05 on n1"),
        RolloutFailed(namespace=NS, rollout_id="r2", version=2, wave=0,
                      handed_to_rollbacker=True),
        RollbackStarted(namespace=NS, rollback_id="rb1", from_version=2, to_version=1,
                        new_version=3, alert_id="web:2:bake:r2", batches=[["n1"]],
                        reason="alert web:2:bake:r2: verdict fail", actor="rollbacker"),
        created(3, rollback_of=1),
        TxnCommitted(namespace=NS, txid="t3", version=3, epoch=2, participants=["n1"]),
        NodeApplied(namespace=NS, node="n1", version=3, sha256=f"{1:064x}", txid="t3"),
        RollbackBatch(namespace=NS, rollback_id="rb1", batch=0, nodes=["n1"], healthy_share=1.0),
    ]  # fmt: skip


def test_why_a_rolled_back_node_names_the_alert_the_verdict_and_the_batch() -> None:
    events = rollout_v1_then_bad_v2_rolled_back()
    state = fold_all(events)
    answer = why(state, "n1")
    kinds = [s.kind for s in answer.steps]
    assert kinds == ["apply", "transaction", "batch", "rollback", "version", "alert", "verdict"]
    text = "\n".join(f"{s.seq} {s.summary}" for s in answer.steps)
    assert "batch 1/1 of rollback rb1" in text
    assert "alert web:2:bake:r2" in text
    assert "verdict fail on v2 in the bake of wave 1 of rollout r2: error_rate 0.31" in text
    assert "v3 created by alice" in text and "with the bytes of v1" in text
    # Each step cites its event: the apply is the last event, the version its created one.
    assert answer.steps[0].seq == len(events) - 1
    v3 = next(
        i for i, e in enumerate(events, 1) if isinstance(e, VersionCreated) and e.version == 3
    )
    assert answer.steps[4].seq == v3


def test_why_a_node_of_a_rollout_names_wave_rollout_and_version() -> None:
    state = fold_all(rollout_v1_then_bad_v2_rolled_back())
    answer = why(state, "n2")
    assert [s.kind for s in answer.steps] == ["apply", "transaction", "wave", "rollout", "version"]
    assert "wave 1/1 of rollout r1" in answer.steps[2].summary
    assert "all 3 voted yes" in answer.steps[1].summary


def test_status_and_diff_between_two_moments() -> None:
    events = rollout_v1_then_bad_v2_rolled_back()
    before = fold_all(events[:6])
    after = fold_all(events)
    view = fleet_at(after, at=None)
    assert [(n.node, n.version) for n in view.nodes] == [("n1", 3), ("n2", 1), ("n3", 1)]
    assert view.rollout is not None and view.rollout.rollout_id == "r2"
    d = diff(before, after)
    assert [(c.node, c.from_version, c.to_version, c.applies) for c in d.changed] == [
        ("n1", 1, 3, 2)
    ]
    assert "batch 1/1 of rollback rb1" in d.changed[0].via
    assert [r.rollout_id for r in d.rollouts] == ["r2"]


def test_what_the_stream_no_longer_holds_is_unknown_since_its_oldest_event() -> None:
    events = rollout_v1_then_bad_v2_rolled_back()
    # The stream dropped the first 7 events (retention): the fold starts at seq 8.
    state = new_state(NS, origin_seq=8, origin_at=T0 + timedelta(seconds=8))
    fold_all(events[7:], state, start=8)
    view = fleet_at(state, at=None)
    nodes = {n.node: n for n in view.nodes}
    assert nodes["n1"].applied == "known" and nodes["n1"].version == 3
    assert nodes["n2"].applied == "unknown" and nodes["n2"].unknown_since == T0 + timedelta(
        seconds=8
    )
    assert not view.complete
    assert "unknown since" in why(state, "n3").steps[0].summary


def test_a_batch_is_found_by_its_transaction_and_a_catch_up_is_no_batch() -> None:
    events = rollout_v1_then_bad_v2_rolled_back()
    # The batch event names its transaction (rollback.batch.txids): n1 was switched by t3.
    events[-1] = RollbackBatch(
        namespace=NS, rollback_id="rb1", batch=0, nodes=["n1"], healthy_share=1.0, txids=["t3"]
    )
    # n2 was away: the distributor caught it up to the rollback's version later.
    events += [
        TxnCommitted(namespace=NS, txid="t4", version=3, epoch=2, participants=["n2"]),
        NodeApplied(namespace=NS, node="n2", version=3, sha256=f"{1:064x}", txid="t4"),
        NodeCatchUp(namespace=NS, node="n2", version=3, from_version=1, txid="t4"),
    ]
    state = fold_all(events)
    n1 = why(state, "n1")
    assert n1.steps[2].kind == "batch" and n1.steps[2].seq == len(events) - 3
    n2 = why(state, "n2")
    assert [s.kind for s in n2.steps] == [
        "apply", "transaction", "catch-up", "rollback", "version", "alert", "verdict",
    ]  # fmt: skip
    assert "catch-up (switch) of n2 to v3" in n2.steps[2].summary


def test_liveness_is_live_away_gone_and_node_left_makes_a_node_away() -> None:
    events: list[Event] = [
        NodeStatusChanged(namespace=NS, node="n00", status="live"),
        NodeLeft(namespace=NS, node="n00", instance="a1"),  # stopped on purpose
        NodeStatusChanged(namespace=NS, node="n01", status="suspect"),  # an old log's word
        NodeStatusChanged(namespace=NS, node="n02", status="gone"),
    ]
    state = fold_all(events)
    assert {n: state.nodes[n].liveness for n in ("n00", "n01", "n02")} == {
        "n00": "away",
        "n01": "away",
        "n02": "gone",
    }
    assert state.nodes["n00"].liveness_seq == 2
