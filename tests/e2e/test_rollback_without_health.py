"""A rollback over agents that send no health samples (no ``--health-url``) is not held up
waiting for samples that never come: the health-watcher says no node has a health source, the
rollbacker stops waiting at once (its default ``--verify-timeout`` is 30 s a batch), one
``health.verdict`` event is recorded per batch, and ``rollback --wait --progress`` shows each
step on stderr. Every service and agent is a real process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from confbus.schemas.events import HealthVerdictEvent, RollbackCompleted
from confbus.schemas.policy import HealthRule, RollbackPolicy
from tests.distributor.e2e import NS, content, of, publish_all, set_policy, stack_of
from tests.e2e.stack import Stack

pytestmark = pytest.mark.anyio

NODES = ("n1", "n2", "n3", "n4")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    # The rollbacker with its default --verify-timeout: 30 s per batch.
    services = ("version_store", "coordinator", "health_watcher", "rollbacker")
    yield from stack_of(tmp_path, NODES, services=services)


async def test_a_rollback_without_health_sources_is_not_held_up(
    stack: Stack, tmp_path: Path
) -> None:
    async with stack.client() as client:
        await set_policy(
            client,
            health_rules=[HealthRule(name="errors", metric="error_rate", threshold=0.05)],
            rollback=RollbackPolicy(strategy="batches:2"),
        )
    await stack.live(len(NODES))
    await publish_all(stack, tmp_path, "v1", "v2")

    # Two batches, each of which used to wait the whole --verify-timeout (30 s) for samples.
    args = ("--to", "1", "--wait", "--progress", "--timeout", "20")
    r = await stack.confbus("rollback", NS, *args)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "completed" in r.stdout, r.stdout
    await stack.files_hold(NODES, content("v1"))

    assert "2 batch(es)" in r.stderr, r.stderr
    assert "batch 1/2: done" in r.stderr and "batch 2/2: done" in r.stderr, r.stderr
    assert r.stderr.count("health of") == 2, r.stderr
    assert "no health source" in r.stderr, r.stderr

    evs = await stack.events()
    done = of(evs, RollbackCompleted)
    assert len(done) == 1, done
    verdicts = [e for e in of(evs, HealthVerdictEvent) if e.version == done[0].new_version]
    assert len(verdicts) == 2, [(v.nodes, v.verdict) for v in verdicts]  # one per batch
    assert all(v.verdict == "no_data" and "no health source" in v.reason for v in verdicts)
