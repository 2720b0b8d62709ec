"""A nats-server SIGKILLed under ``confbus up`` — the embedded one, or in ``--ha`` the node most
agents are connected to: a publish a second later goes through, on every node."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.broker_restart import (
    EMBEDDED_ONE_JOB,
    HA_LEADER,
    Loop,
    busiest_node,
    kill_loop,
    kill_then_publish,
    led_by,
    on_every_node,
    publish,
    start_agents,
)
from tests.faults.results import Figures, assert_safe
from tests.ha.hastack import needs_etcd, start_up

pytestmark = pytest.mark.anyio

TARGET_S = 3.0  # issue 25; asserted with room for a loaded 2-core machine
RAFT_ELECTION_MAX_S = 9.0  # nats-server: a follower campaigns 4-9 s after its leader died


async def test_a_publish_a_second_after_the_broker_died_is_applied_everywhere(
    tmp_path: Path,
) -> None:
    stack = start_up(tmp_path / "data")
    try:
        nodes = start_agents(stack, tmp_path, 3)
        await publish(stack, tmp_path, "v1")
        on_every_node(stack, nodes, "v1")

        took = await kill_then_publish(stack, tmp_path, nodes, "v2")

        print(f"\nkill → applied on every node: {took:.2f} s (target {TARGET_S:g} s)")
        assert "nats-server was killed by SIGKILL" in stack.proc.err.text()
        assert took < 3 * TARGET_S
    finally:
        stack.cleanup()


@needs_etcd
async def test_in_ha_the_nats_node_most_agents_use_dies_and_a_publish_goes_through(
    tmp_path: Path,
) -> None:
    stack = start_up(tmp_path / "data", "--ha")
    try:
        nodes = start_agents(stack, tmp_path, 3)
        await publish(stack, tmp_path, "v1")
        on_every_node(stack, nodes, "v1")
        victim = busiest_node(stack, nodes)
        led = await led_by(stack, victim)

        took = await kill_then_publish(stack, tmp_path, nodes, "v2", kill=victim)

        print(
            f"\n{victim} (leading {', '.join(led) or 'nothing on the path'}) killed → applied on "
            f"every node: {took:.2f} s (target {TARGET_S:g} s)"
        )
        # A leader lost costs nats-server's own raft elections: 4-9 s before each begins.
        assert took < (2 * RAFT_ELECTION_MAX_S + TARGET_S if led else 3 * TARGET_S)
    finally:
        stack.cleanup()


async def test_the_broker_killed_while_ci_publishes(tmp_path: Path) -> None:
    fig = await kill_loop(tmp_path, kills=3, tier="ci")
    assert fig.failed == 0, fig.summary()
    assert_safe(fig)


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_the_broker_killed_20_times_while_ci_publishes(tmp_path: Path) -> None:
    fig = await kill_loop(tmp_path, kills=20, tier="slow")
    assert fig.failed == 0, fig.summary()
    assert_safe(fig)


def _every_publish_went_through(fig: Figures) -> None:
    assert fig.failed == 0 and fig.notes["superseded"] == 0, fig.summary()
    assert fig.duplicates == 0 and fig.lost == 0 and fig.divergent == 0, fig.summary()
    assert_safe(fig)
    print(f"longest publish --wait: {fig.notes['publish_max_s']} s")


async def test_one_ci_job_never_fails_while_the_embedded_broker_is_killed(tmp_path: Path) -> None:
    fig = await kill_loop(tmp_path, kills=3, tier="ci", loop=EMBEDDED_ONE_JOB)
    _every_publish_went_through(fig)


@needs_etcd
async def test_in_ha_killing_the_leader_of_changes_and_txn_fails_no_publish(
    tmp_path: Path,
) -> None:
    fig = await kill_loop(tmp_path, kills=1, tier="ci", loop=HA_LEADER)
    _every_publish_went_through(fig)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    "loop",
    [EMBEDDED_ONE_JOB, pytest.param(HA_LEADER, marks=needs_etcd)],
    ids=lambda lp: lp.scenario,
)
async def test_five_kills_fail_no_publish(tmp_path: Path, loop: Loop) -> None:
    fig = await kill_loop(tmp_path, kills=5, tier="slow", loop=loop)
    _every_publish_went_through(fig)
