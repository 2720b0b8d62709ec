"""The atomic switch under process faults: the coordinator SIGKILLed at each 2PC
step, an agent SIGKILLed at each of its steps, a zombie coordinator. CI runs each step once;
``-m slow`` runs many more. Each scenario also runs once with a deliberate bug, and must then
report a non-zero safety count (a check that cannot fail is not a check)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults import twopc
from tests.faults.results import assert_caught, assert_safe

pytestmark = pytest.mark.anyio

# CI time budgets (seconds), stated in RELIABILITY.md beside the measured times.
BUDGET = {"coordinator_kill": 20.0, "agent_kill": 12.0, "zombie": 12.0}
BUG_BUDGET = {"coordinator_kill": 8.0, "agent_kill": 12.0, "zombie": 8.0}


async def test_coordinator_killed_at_each_step(tmp_path: Path) -> None:
    fig = await twopc.coordinator_kill(tmp_path, runs=1, budget_s=BUDGET["coordinator_kill"])
    assert fig.runs == len(twopc.COORDINATOR_STEPS)
    assert_safe(fig)


@pytest.mark.slow
@pytest.mark.timeout(2400)
async def test_coordinator_killed_at_each_step_many(tmp_path: Path) -> None:
    assert_safe(await twopc.coordinator_kill(tmp_path, runs=25, tier="slow"))


async def test_coordinator_kill_catches_commit_published_before_the_decision(
    tmp_path: Path,
) -> None:
    """The decision record goes out before the head's compare-and-set, and the coordinator
    dies in between: agents apply what the recovering coordinator then aborts."""
    fig = await twopc.coordinator_kill(
        tmp_path,
        steps=("coordinator.after_decision_published",),
        tier="bug",
        bug="publish_commit_before_decision",
        budget_s=BUG_BUDGET["coordinator_kill"],
    )
    assert_caught(fig, "divergent", "flipped")


async def test_agent_killed_at_each_step(tmp_path: Path) -> None:
    fig = await twopc.agent_kill(tmp_path, runs=1, budget_s=BUDGET["agent_kill"])
    assert fig.runs == len(twopc.AGENT_STEPS)
    assert_safe(fig)


@pytest.mark.slow
@pytest.mark.timeout(2400)
async def test_agent_killed_at_each_step_many(tmp_path: Path) -> None:
    assert_safe(await twopc.agent_kill(tmp_path, runs=25, tier="slow"))


async def test_agent_kill_catches_apply_on_prepare(tmp_path: Path) -> None:
    """Agents that install on prepare: the transaction aborts (a node died before voting),
    but the others already run its bytes."""
    fig = await twopc.agent_kill(
        tmp_path,
        steps=("agent.before_vote",),
        tier="bug",
        bug="apply_on_prepare",
        budget_s=BUG_BUDGET["agent_kill"],
    )
    assert_caught(fig, "divergent", "aborted_applies")


async def test_agent_kill_catches_another_variant_staged(tmp_path: Path) -> None:
    """Agents that stage another node's variant: each checks those bytes against that entry's
    own sha256, so only the audit of each node's own bytes sees it."""
    fig = await twopc.agent_kill(
        tmp_path,
        steps=("agent.after_apply",),
        tier="bug",
        bug="stage_another_variant",
        budget_s=BUG_BUDGET["agent_kill"],
    )
    assert_caught(fig, "divergent", "applied_other_bytes")


async def test_zombie_coordinator_is_fenced(tmp_path: Path) -> None:
    steps = ("coordinator.before_prepare_sent", "coordinator.after_votes")
    fig = await twopc.zombie(tmp_path, steps=steps, budget_s=BUDGET["zombie"])
    assert fig.runs == len(steps)
    assert_safe(fig)


@pytest.mark.slow
@pytest.mark.timeout(2400)
async def test_zombie_coordinator_is_fenced_many(tmp_path: Path) -> None:
    assert_safe(await twopc.zombie(tmp_path, runs=10, tier="slow"))


async def test_zombie_catches_writes_without_compare_and_set(tmp_path: Path) -> None:
    """Head writes without the compare-and-set: the resumed zombie's commit lands after the
    successor's abort, from the older epoch."""
    fig = await twopc.zombie(
        tmp_path,
        steps=("coordinator.after_votes",),
        tier="bug",
        bug="cas_without_compare",
        budget_s=BUG_BUDGET["zombie"],
    )
    assert_caught(fig, "stale_writes", "flipped")
