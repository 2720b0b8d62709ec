"""``project``: a message built from another object's same-named fields, checked as if decoded."""

from __future__ import annotations

import msgspec
import pytest

from confbus.schemas.base import project
from confbus.schemas.events import TxnCommitted
from confbus.schemas.txn import Decision
from tests.agent.support import make_prepare

PREPARE = make_prepare(3, txid="t1", epoch=4, sha256="0" * 64, namespace="payments")


def test_same_named_fields_are_copied_and_the_differing_ones_given() -> None:
    decision = project(PREPARE, Decision, outcome="abort", reason="n2 voted no")
    assert (decision.txid, decision.namespace, decision.version, decision.epoch) == (
        "t1",
        "payments",
        3,
        4,
    )
    assert (decision.sha256, decision.participants) == ("0" * 64, ["node-1"])
    assert (decision.outcome, decision.reason) == ("abort", "n2 voted no")
    # A field the source lacks takes its default: Decision's own time, not the prepare's.
    assert decision.decided_at >= PREPARE.created_at


def test_a_given_value_wins_over_the_sources_and_fields_it_lacks_keep_defaults() -> None:
    decision = project(PREPARE, Decision, outcome="commit", version=9)
    event = project(decision, TxnCommitted, actor="coordinator-1")
    assert (event.version, event.txid, event.actor, event.votes) == (9, "t1", "coordinator-1", [])


def test_a_value_the_target_refuses_is_an_error_with_msgspecs_path() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.outcome"):
        project(PREPARE, Decision, outcome="maybe")
    with pytest.raises(msgspec.ValidationError, match=r"\$\.namespace"):
        project(PREPARE, Decision, outcome="commit", namespace="Not A Name")
    with pytest.raises(msgspec.ValidationError, match="outcome"):
        project(PREPARE, Decision)  # a required field neither the source nor the call gives
