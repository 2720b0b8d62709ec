"""``status --at`` matches every agent's disk at every sampled moment, under publishes, refused
versions, agent kills, catch-ups, supersedes and rollbacks (tests/faults/timetravel.py). CI
takes at least 200 samples; ``-m slow`` at least 5,000. The same samples read through a fold
with a deliberate bug must show mismatches: a check that cannot fail is not a check."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults import timetravel
from tests.faults.results import assert_caught, assert_safe

pytestmark = pytest.mark.anyio

CI_SECONDS = 30.0  # ~200 samples; on (up to twice as long) until 220 and every kind of fault
BUDGET_S = 150.0
# Each kind of fault done at least once before the CI run may end (a restart follows a kill).
EVERY_FAULT = ("refused", "restart", "rollback", "alert")


@pytest.mark.timeout(400)
async def test_status_at_matches_every_disk_at_every_sample(tmp_path: Path) -> None:
    fig, bug = await timetravel.scenario(
        tmp_path, seconds=CI_SECONDS, budget_s=BUDGET_S, until_samples=220, until_ops=EVERY_FAULT
    )
    assert int(fig.notes["samples"]) >= 200, fig.summary()
    assert_safe(fig)
    assert bug is not None
    assert_caught(bug, "divergent")


@pytest.mark.slow
@pytest.mark.timeout(7200)
async def test_status_at_matches_every_disk_many(tmp_path: Path) -> None:
    fig, _ = await timetravel.scenario(
        tmp_path, seconds=900.0, nodes=8, tier="slow", with_bug=False, until_samples=5200
    )
    assert int(fig.notes["samples"]) >= 5000, fig.summary()
    assert_safe(fig)
