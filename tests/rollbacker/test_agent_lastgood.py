"""Agents keep the last known good (docs/design.md §5.4): they record it when it changes, keep the
namespace's ``cold_start_last_good`` flag on disk, and a node restarting with no bus falls back
to it when that flag says so."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from confbus.agent.disk import NamespaceDisk
from confbus.agent.lastgood import POLICY_FILE, cache_policy, cached_policy, sync_namespace
from confbus.agent.node import Binding, NodeAgent
from confbus.agent.state import CommitOutcome
from confbus.procs.agent import agent_argv
from confbus.procs.nats import NatsServer
from confbus.procs.proc import Proc
from confbus.runtime.bus import Bus
from confbus.schemas.policy import Policy
from confbus.schemas.txn import Prepare
from tests.cli.procs import dead_nats_url
from tests.helpers import eventually
from tests.rollbacker.world import BAD, GOOD, NS, world

pytestmark = pytest.mark.anyio


async def test_agents_record_the_last_known_good_and_cache_the_policy_flag(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    pol = Policy(namespace=NS, cold_start_last_good=True)
    async with world(nats_server, bus, tmp_path, nodes=2, pol=pol) as w:
        v1, v2 = await w.seed()  # v1 became the last known good while the agents ran it
        for agent in w.agents:
            ns = agent.namespaces[NS]

            async def recorded(agent: NodeAgent = agent) -> bool:
                return agent.namespaces[NS].state.last_good == v1

            await eventually(recorded, what=f"{agent.node} recorded the last known good")
            assert ns.disk.version_bytes(v1) == GOOD
            cached = cached_policy(ns.disk)
            assert cached is not None and cached.cold_start_last_good
        # The heartbeat tells the distributor.
        assert all(agent.heartbeat().namespaces[0].last_good == v1 for agent in w.agents)
        # A node that never ran the last known good still keeps its bytes (from the store,
        # checked against the sha256), ready for a cold start.
        newcomer = NodeAgent(
            node="n9",
            bindings=[Binding(NS, str(tmp_path / "n9" / "web.json"))],
            state_dir=str(tmp_path / "n9" / "state"),
        )
        await newcomer.load()
        assert await sync_namespace(bus, newcomer, NS) == v1
        disk = newcomer.namespaces[NS].disk
        assert disk.version_bytes(v1) == GOOD and disk.snapshot().last_good == v1
        assert not (tmp_path / "n9" / "web.json").exists()  # recorded, not applied
        assert await sync_namespace(bus, newcomer, NS) is None  # nothing new: nothing done
        assert v2 == 2


def _commit(disk: NamespaceDisk, version: int, content: bytes) -> None:
    p = Prepare(
        txid=f"tx-{version}",
        namespace=NS,
        version=version,
        sha256=hashlib.sha256(content).hexdigest(),
        format="json",
        content=content,
        participants=["n1"],
        epoch=1,
        timeout_s=5.0,
    )
    disk.stage(p)
    disk.seal(p.txid)
    assert disk.commit(p.txid, p.version, p.sha256) is CommitOutcome.APPLIED


def _node_on_bad_with_good_known(root: Path, flag: bool | None) -> tuple[Path, Path]:
    live, state = root / "etc" / "web.json", root / "state"
    disk = NamespaceDisk(NS, live, state)
    disk.load()
    _commit(disk, 1, GOOD)
    disk.mark_last_good(1)
    _commit(disk, 2, BAD)
    if flag is not None:
        cache_policy(disk, flag)
    assert live.read_bytes() == BAD
    return live, state


def _agent(root: Path, live: Path, state: Path) -> Proc:
    argv = agent_argv(dead_nats_url(), "n1", {NS: live}, state)
    return Proc("agent-n1", argv, root, {"CONFBUS_COLD_START_GRACE_S": "0.3"})


@pytest.mark.parametrize("flag", [True, False, None])
async def test_a_restart_with_no_bus_falls_back_only_when_the_policy_says_so(
    tmp_path: Path, flag: bool | None
) -> None:
    live, state = _node_on_bad_with_good_known(tmp_path, flag)
    proc = _agent(tmp_path, live, state).start()
    try:
        # The agent says what it decided once the grace period is over.
        await eventually(
            lambda: _true("no bus at start" in proc.log_text()),
            what="the cold-start decision",
        )
        if flag:
            assert live.read_bytes() == GOOD
            assert "serving the last known good" in proc.log_text()
            assert NamespaceDisk(NS, live, state).snapshot().applied_version == 1
        else:
            assert live.read_bytes() == BAD
            assert (state / NS / POLICY_FILE).exists() == (flag is not None)
    finally:
        proc.stop()


async def _true(value: bool) -> bool:
    return value
