"""An agent host reads ``CFG_TXN`` once per namespace and fans each record out to its agents
(``confbus.agent.txnfeed``), on a real nats-server: one consumer per namespace however many
agents; each agent only its namespace's records, from its own position, each once; an agent
that starts behind the others (restarted on older state, or late) catches up on what it
missed, and the others see nothing twice."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anyio
import pytest

from confbus.agent.host import run_agents
from confbus.agent.node import Binding, NodeAgent
from confbus.agent.txnfeed import Tap, TxnReader
from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus, connect
from confbus.schemas import subjects
from confbus.schemas.streams import CFG_TXN
from confbus.schemas.txn import Decision, Prepare
from tests.helpers import eventually

pytestmark = pytest.mark.anyio


def _agent(tmp_path: Path, node: str, namespace: str = "web") -> NodeAgent:
    return NodeAgent(
        node=node,
        bindings=[Binding(namespace, str(tmp_path / node / "etc" / f"{namespace}.json"))],
        state_dir=str(tmp_path / node / "state"),
        heartbeat_interval_s=60.0,
    )


def _content(version: int) -> bytes:
    return f'{{"version": {version}}}\n'.encode()


async def _switch(bus: Bus, version: int, nodes: list[str], namespace: str = "web") -> int:
    """A prepare and a commit of ``version`` for ``nodes``, written as a coordinator writes
    them (no coordinator answers the votes: the decision is what the agents act on); the
    decision's stream sequence."""
    data = _content(version)
    sha256 = hashlib.sha256(data).hexdigest()
    txid = f"e1-{version:016x}"
    prepare = Prepare(
        txid=txid, namespace=namespace, version=version, sha256=sha256, format="json",
        content=data, participants=nodes, epoch=1, timeout_s=30.0,
    )  # fmt: skip
    decision = Decision(
        txid=txid, namespace=namespace, version=version, sha256=sha256, epoch=1,
        outcome="commit", participants=nodes,
    )  # fmt: skip
    await bus.publish(subjects.txn_prepare(namespace, txid), prepare)
    return int((await bus.publish(subjects.txn_decision(namespace, txid), decision)).seq)


async def _applied(agent: NodeAgent, version: int, namespace: str = "web") -> None:
    live = Path(agent.namespaces[namespace].disk.live_path)

    async def done() -> bool:
        path = anyio.Path(live)
        return await path.exists() and await path.read_bytes() == _content(version)

    await eventually(done, timeout=10, what=f"{agent.node} applies v{version}")


async def _consumers(bus: Bus) -> int:
    return len(await bus.js.consumers_info(CFG_TXN.name))


async def test_a_host_reads_each_namespace_once_and_each_agent_only_its_own(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    agents = [_agent(tmp_path, "n1"), _agent(tmp_path, "n2"), _agent(tmp_path, "n3", "db")]
    other = await connect(nats_server.url, name="host-conn-2")
    try:
        async with anyio.create_task_group() as tg:
            # Two connections, one reader: as the benchmarks' hosts run.
            reader = TxnReader(bus, tg)
            await run_agents(bus, agents[:1], tg, txn=reader)
            await run_agents(other, agents[1:], tg, txn=reader)
            assert all(a.ready for a in agents)
            assert await _consumers(bus) == 2  # web and db, not one per agent
            assert sorted(reader.feeds) == ["db", "web"]

            await _switch(bus, 1, ["n1", "n2"])
            for a in agents[:2]:
                await _applied(a, 1)
            await _switch(bus, 2, ["n2"])  # n1 follows web but is not a participant
            await _applied(agents[1], 2)
            seq = await _switch(bus, 1, ["n3"], namespace="db")
            await _applied(agents[2], 1, namespace="db")

            async def read_on() -> bool:  # the file is in place before the handling ends
                return (
                    agents[0].namespaces["web"].last_seq == seq - 2
                    and agents[2].namespaces["db"].last_seq == seq
                )

            await eventually(read_on)  # n1 read v2's records and did not act on them
            assert agents[0].namespaces["web"].state.applied_version == 1
            assert [a.namespaces["web"].state.applied_version for a in agents[:2]] == [1, 2]
            tg.cancel_scope.cancel()
    finally:
        await other.close()


async def test_an_agent_restarted_in_a_host_catches_up_on_what_it_missed(
    bus: Bus, tmp_path: Path
) -> None:
    async with anyio.create_task_group() as tg:
        reader = TxnReader(bus, tg)
        n1 = _agent(tmp_path, "n1")
        await run_agents(bus, [n1], tg, txn=reader)

        async def run_n2(agent: NodeAgent) -> tuple[anyio.CancelScope, anyio.Event]:
            """``agent`` in the host; cancel the scope to stop it alone (the event: stopped)."""
            agent.host_txn = reader
            scope, stopped = anyio.CancelScope(), anyio.Event()

            async def one(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                try:
                    with scope:
                        await agent.run(bus, task_status=task_status)
                finally:
                    stopped.set()

            await tg.start(one)
            return scope, stopped

        first = _agent(tmp_path, "n2")
        scope, stopped = await run_n2(first)
        await _switch(bus, 1, ["n1", "n2"])
        await _applied(n1, 1)
        await _applied(first, 1)
        scope.cancel()
        with anyio.fail_after(5):
            await stopped.wait()

        # While n2 is away: v2 for both, then records it is not in.
        await _switch(bus, 2, ["n1", "n2"])
        await _applied(n1, 2)
        last = await _switch(bus, 3, ["n1"])
        await _applied(n1, 3)
        assert reader.feeds["web"].follower.next_seq == last + 1

        # Back on its state: its position is behind the host's reading, which goes back for it.
        again = _agent(tmp_path, "n2")
        scope, stopped = await run_n2(again)
        await _applied(again, 2)

        async def caught_up() -> bool:
            return again.namespaces["web"].last_seq == last

        await eventually(caught_up)
        assert again.namespaces["web"].state.applied_version == 2
        assert n1.namespaces["web"].state.applied_version == 3
        assert list(reader.feeds) == ["web"]  # (the consumer before the rewind lingers a while)
        tg.cancel_scope.cancel()


async def _seqs(tap: Tap, count: int) -> list[int]:
    with anyio.fail_after(10):
        return [(await tap.next()).metadata.sequence.stream for _ in range(count)]


async def _quiet(tap: Tap) -> None:
    """Nothing more is queued for ``tap`` (what was handed out already is not again)."""
    with anyio.move_on_after(0.3):
        msg = await tap.next()
        pytest.fail(f"a record handed out twice or out of turn: {msg.metadata.sequence.stream}")


async def test_a_tap_behind_the_feed_rewinds_it_and_nobody_sees_a_record_twice(
    bus: Bus,
) -> None:
    async def record(n: int, namespace: str = "web") -> int:
        return await _switch(bus, n, ["x"], namespace) - 1  # the prepare's sequence

    seqs = []
    for n in range(1, 4):
        seqs += [s := await record(n), s + 1]
    async with anyio.create_task_group() as tg:
        reader = TxnReader(bus, tg)
        async with reader.tap("web", seqs[0]) as first:
            assert await _seqs(first, 6) == seqs
            await record(9, "db")  # another namespace's: no web tap hears of it
            seqs += [s := await record(4), s + 1]
            assert await _seqs(first, 2) == seqs[6:]
            assert await _consumers(bus) == 1
            async with reader.tap("web", seqs[2]) as behind:
                assert first.live and behind.live
                assert await _seqs(behind, 6) == seqs[2:]
                await _quiet(first)
                seqs += [s := await record(5), s + 1]
                assert await _seqs(first, 2) == await _seqs(behind, 2) == seqs[8:]
                async with reader.tap("web", seqs[-1] + 1) as ahead:
                    seqs += [s := await record(6), s + 1]
                    for tap in (first, behind, ahead):
                        assert await _seqs(tap, 2) == seqs[10:]
                        await _quiet(tap)
            assert list(reader.feeds) == ["web"]
        assert reader.feeds == {}  # the last tap gone, the feed stops
        tg.cancel_scope.cancel()


async def test_agents_starting_together_ask_the_stream_end_once_and_are_told_it(bus: Bus) -> None:
    last = await _switch(bus, 1, ["x"])
    ends: list[int] = []
    sent = bus.nc.stats["out_msgs"]
    async with anyio.create_task_group() as tg:
        reader = TxnReader(bus, tg)

        async def ask() -> None:
            ends.append(await reader.stream_end())

        for _ in range(5):
            tg.start_soon(ask)
    assert ends == [last] * 5
    assert bus.nc.stats["out_msgs"] - sent == 1  # one stream info request for the five
    later = await _switch(bus, 2, ["x"])
    async with anyio.create_task_group() as tg:
        assert await TxnReader(bus, tg).stream_end() == later  # asked again, not remembered
