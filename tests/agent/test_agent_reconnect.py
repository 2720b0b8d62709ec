"""An agent on a real nats-server that is SIGKILLed and started again: it heartbeats that it is
ready to vote again at once (not at its next interval), and reads ``CFG_TXN`` on from where it
was."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from nats.aio.msg import Msg

from confbus.agent.node import Binding, NodeAgent
from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus
from confbus.schemas import subjects
from confbus.schemas.node import Heartbeat, decode_heartbeat
from confbus.schemas.txn import Decision
from tests.helpers import eventually, restart_nats

pytestmark = pytest.mark.anyio

SHA = "0" * 64


async def test_after_a_broker_restart_the_agent_is_ready_to_vote_again_within_a_second(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    agent = NodeAgent(
        node="n1",
        bindings=[Binding("web", str(tmp_path / "etc" / "web.json"))],
        state_dir=str(tmp_path / "state"),
        heartbeat_interval_s=60.0,  # any heartbeat after the first one is a readiness change
    )
    beats: list[tuple[float, Heartbeat]] = []
    changed = anyio.Event()

    async def on_beat(msg: Msg) -> None:
        nonlocal changed
        beats.append((time.monotonic(), decode_heartbeat(msg.data)))
        changed.set()
        changed = anyio.Event()

    async def beat(ready: bool, after: float) -> float:
        with anyio.fail_after(10):
            while True:
                waiting = changed
                for at, hb in beats:
                    if at > after and hb.ready is ready:
                        return at
                await waiting.wait()

    await bus.nc.subscribe(subjects.heartbeat("n1"), cb=on_beat)
    async with anyio.create_task_group() as tg:
        await tg.start(agent.run, bus)
        await beat(True, 0.0)
        reconnected = await restart_nats(nats_server, bus, timeout=10)

        # Not ready while its consumer is being re-created (a heartbeat says so, unless that
        # was over before the heartbeat went out), then ready.
        ready = await beat(True, reconnected)
        # It reads on: a decision written after the restart is the next thing it handles.
        decision = Decision(
            txid="e1-0123456789abcdef", namespace="web", version=1, sha256=SHA, epoch=1,
            outcome="abort", participants=["n2"],
        )  # fmt: skip

        async def stored() -> int | None:
            try:
                ack = await bus.publish(subjects.txn_decision("web", decision.txid), decision)
            except Exception:  # JetStream still recovering its streams
                return None
            return ack.seq

        seq = await eventually(stored, timeout=10)
        ns = agent.namespaces["web"]

        async def read() -> bool:
            return ns.last_seq == seq

        await eventually(read, timeout=5)
        tg.cancel_scope.cancel()
    took = ready - reconnected
    print(f"\nready to vote again {took:.3f} s after the reconnect")
    assert agent.status()["ready_to_vote"] is True
    assert [hb.ready for at, hb in beats if at > reconnected][-1] is True
    assert took < 1.0
