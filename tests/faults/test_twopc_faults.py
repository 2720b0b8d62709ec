"""The atomic switch under process faults: the coordinator SIGKILLed at each 2PC
step, an agent SIGKILLed at each of its steps, a zombie coordinator. CI runs each step once;
``-m slow`` runs many more. Each scenario also runs once with a deliberate bug, and must then
report a non-zero safety count (a check that cannot fail is not a check)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.faults import twopc
from tests.faults.results import assert_caught, assert_safe

pytestmark = pytest.mark.anyio

SCENARIOS = {
    "coordinator_kill": twopc.coordinator_kill,
    "agent_kill": twopc.agent_kill,
    "zombie": twopc.zombie,
}
# CI time budgets (seconds), stated in RELIABILITY.md beside the measured times.
BUDGET = {"coordinator_kill": 20.0, "agent_kill": 12.0, "zombie": 12.0}
BUG_BUDGET = {"coordinator_kill": 8.0, "agent_kill": 12.0, "zombie": 8.0}


@pytest.mark.parametrize(
    ("scenario", "steps"),
    [
        pytest.param("coordinator_kill", twopc.COORDINATOR_STEPS, id="coordinator_killed"),
        pytest.param("agent_kill", twopc.AGENT_STEPS, id="agent_killed"),
        pytest.param(
            "zombie",
            ("coordinator.before_prepare_sent", "coordinator.after_votes"),
            id="zombie_coordinator_is_fenced",
        ),
    ],
)
async def test_each_step_once(tmp_path: Path, scenario: str, steps: Sequence[str]) -> None:
    fig = await SCENARIOS[scenario](tmp_path, steps=steps, runs=1, budget_s=BUDGET[scenario])
    assert_safe(fig, runs=len(steps))


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize(
    ("scenario", "runs"), [("coordinator_kill", 25), ("agent_kill", 25), ("zombie", 10)]
)
async def test_each_step_many_times(tmp_path: Path, scenario: str, runs: int) -> None:
    assert_safe(await SCENARIOS[scenario](tmp_path, runs=runs, tier="slow"))


@pytest.mark.parametrize(
    ("scenario", "step", "bug", "caught"),
    [
        # The decision record goes out before the head's compare-and-set, and the coordinator
        # dies in between: agents apply what the recovering coordinator then aborts.
        pytest.param(
            "coordinator_kill",
            "coordinator.after_decision_published",
            "publish_commit_before_decision",
            ("divergent", "flipped"),
            id="commit_published_before_the_decision",
        ),
        # Agents that install on prepare: the transaction aborts (a node died before voting),
        # but the others already run its bytes.
        pytest.param(
            "agent_kill",
            "agent.before_vote",
            "apply_on_prepare",
            ("divergent", "aborted_applies"),
            id="apply_on_prepare",
        ),
        # Agents that stage another node's variant: each checks those bytes against that
        # entry's own sha256, so only the audit of each node's own bytes sees it.
        pytest.param(
            "agent_kill",
            "agent.after_apply",
            "stage_another_variant",
            ("divergent", "applied_other_bytes"),
            id="another_variant_staged",
        ),
        # Head writes without the compare-and-set: the resumed zombie's commit lands after the
        # successor's abort, from the older epoch.
        pytest.param(
            "zombie",
            "coordinator.after_votes",
            "cas_without_compare",
            ("stale_writes", "flipped"),
            id="writes_without_compare_and_set",
        ),
    ],
)
async def test_the_audit_catches_a_deliberate_bug(
    tmp_path: Path, scenario: str, step: str, bug: str, caught: tuple[str, ...]
) -> None:
    fig = await SCENARIOS[scenario](
        tmp_path, steps=(step,), tier="bug", bug=bug, budget_s=BUG_BUDGET[scenario]
    )
    assert_caught(fig, *caught)
