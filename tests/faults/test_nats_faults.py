"""The bus under faults: the stream leader of a 3-node R3 cluster SIGKILLed under
publish load, and one node cut off by nftables inside a network namespace, then healed. Each
also runs with a deliberate bug that the harness must report."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.faults import nats_faults, netns
from tests.faults.results import Figures, RunOptions, assert_caught, assert_safe, ci_and_slow, read

pytestmark = pytest.mark.anyio

BUDGET = {"leader_kill": 30.0, "partition": 20.0}
BUG_BUDGET = {"leader_kill": 22.0, "partition": 20.0}
NETNS_SKIP = netns.infeasible_reason()


@pytest.mark.parametrize(("kills", "run"), ci_and_slow(3, 20, BUDGET["leader_kill"]))
async def test_stream_leader_killed_under_load(tmp_path: Path, kills: int, run: RunOptions) -> None:
    assert_safe(await nats_faults.leader_kill(tmp_path, kills=kills, **run), runs=kills)


async def test_leader_kill_catches_r1_streams_on_a_lost_disk(tmp_path: Path) -> None:
    fig = await nats_faults.leader_kill(
        tmp_path, kills=1, tier="bug", bug="r1_lost_disk", budget_s=BUG_BUDGET["leader_kill"]
    )
    assert_caught(fig, "lost")


def partition(*args: str, timeout: float) -> Figures:
    """Run the partition scenario in its own network namespace; its figures come back."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        done = netns.run_inside(
            "tests.faults.partition_main", "--out", str(out), *args, timeout=timeout
        )
        assert done.returncode == 0, f"partition scenario failed:\n{done.stderr[-4000:]}"
        return read(out)


@pytest.mark.skipif(NETNS_SKIP is not None, reason=f"partitions: {NETNS_SKIP}")
def test_one_node_partitioned_then_healed() -> None:
    fig = partition("--cuts", "2", "--budget", str(BUDGET["partition"]), timeout=300)
    assert_safe(fig, runs=2)


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.skipif(NETNS_SKIP is not None, reason=f"partitions: {NETNS_SKIP}")
def test_one_node_partitioned_then_healed_many() -> None:
    assert_safe(partition("--cuts", "10", "--tier", "slow", timeout=2000))


@pytest.mark.skipif(NETNS_SKIP is not None, reason=f"partitions: {NETNS_SKIP}")
def test_partition_catches_a_node_left_behind() -> None:
    budget = str(BUG_BUDGET["partition"])
    fig = partition(
        "--cuts", "1", "--tier", "bug", "--bug", "never_heal", "--budget", budget, timeout=300
    )  # fmt: skip
    assert_caught(fig, "divergent")
