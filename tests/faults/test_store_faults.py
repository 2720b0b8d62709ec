"""The path from a proposed change to a stored version under faults: a redelivery
storm on the version-store, and kill -9 of the version-store during writes. Each also runs
with a deliberate bug that the harness must report."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults import store_faults
from tests.faults.results import RunOptions, assert_caught, assert_safe, ci_and_slow

pytestmark = pytest.mark.anyio

BUDGET = {"redelivery_storm": 10.0, "store_kill": 12.0}
BUG_BUDGET = {"redelivery_storm": 8.0, "store_kill": 15.0}


async def test_redelivery_storm_has_no_duplicate_effects(tmp_path: Path) -> None:
    fig = await store_faults.redelivery_storm(
        tmp_path, changes=300, crashes=2, budget_s=BUDGET["redelivery_storm"]
    )
    assert fig.notes["poison_messages"] == len(store_faults.POISON)
    assert fig.notes["good_changes_dead_lettered"] == 0
    assert_safe(fig)


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize(
    "poison_in_batches",
    [
        pytest.param(False, id="poison_after_the_load"),
        pytest.param(True, id="poison_in_the_batches"),
    ],
)
async def test_redelivery_storm_many(tmp_path: Path, poison_in_batches: bool) -> None:
    fig = await store_faults.redelivery_storm(
        tmp_path, changes=3000, crashes=10, tier="slow", poison_in_batches=poison_in_batches
    )
    assert_safe(fig)


async def test_poison_in_the_batches_costs_no_good_change(tmp_path: Path) -> None:
    """Finding 1 (RELIABILITY.md), fixed: poison sent during the load shares batches with good
    changes; only the poison is dead-lettered."""
    fig = await store_faults.redelivery_storm(
        tmp_path,
        changes=300,
        crashes=2,
        poison_in_batches=True,
        tier="ci",
        budget_s=BUDGET["redelivery_storm"],
    )
    assert fig.notes["good_changes_dead_lettered"] == 0
    assert_safe(fig)


async def test_redelivery_storm_catches_duplicate_announcements(tmp_path: Path) -> None:
    fig = await store_faults.redelivery_storm(
        tmp_path,
        changes=150,
        crashes=0,
        tier="bug",
        bug="duplicate_announce",
        budget_s=BUG_BUDGET["redelivery_storm"],
    )
    assert_caught(fig, "duplicates")


@pytest.mark.parametrize(("runs", "run"), ci_and_slow(10, 200, BUDGET["store_kill"]))
async def test_store_killed_during_writes_loses_nothing(
    tmp_path: Path, runs: int, run: RunOptions
) -> None:
    assert_safe(await store_faults.store_kill(tmp_path, runs=runs, **run), runs=runs)


async def test_store_kill_catches_ack_before_commit(tmp_path: Path) -> None:
    fig = await store_faults.store_kill(
        tmp_path,
        runs=2,
        tier="bug",
        bug="ack_before_commit",
        points=("version_store.before_commit",),
        timer_kills=False,
        budget_s=BUG_BUDGET["store_kill"],
    )
    assert_caught(fig, "lost")
