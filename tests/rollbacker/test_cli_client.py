"""``confbus rollback`` (the real command, as a process) and the client's ``alerts()``,
``watch()`` and ``rollback()``."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import anyio
import pytest

from confbus.cli.main import CONNECT_WAIT_S
from confbus.client import Client
from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus
from confbus.schemas.events import NodeApplied, RollbackStarted
from confbus.schemas.health import Alert
from tests.cli.procs import arun_confbus
from tests.rollbacker.world import BAD, GOOD, NS, World, policy, world

pytestmark = pytest.mark.anyio


async def confbus(url: str, *args: str) -> tuple[int, str, str]:
    done = await arun_confbus("--nats-url", url, *args)
    return done.returncode, done.stdout, done.stderr


async def test_confbus_rollback_wait_restores_and_exits_0(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    async with world(nats_server, bus, tmp_path) as w:
        v1, v2 = await w.seed()
        code, out, err = await confbus(
            w.url, "rollback", NS, "--to", str(v1), "--wait", "--json",
            "--reason", "bad pool size", "--as", "alice", "--strategy", "batches:2",
        )  # fmt: skip
        assert code == 0, err
        reply = json.loads(out)
        assert reply["state"] == "completed" and reply["new_version"] == 3
        assert (reply["from_version"], reply["to_version"]) == (v2, v1)
        assert all(w.read(n) == GOOD for n in w.nodes)
        started = w.tap.of("rollback.started")[0]
        assert isinstance(started, RollbackStarted)
        assert started.actor == "alice" and started.reason == "bad pool size"
        assert len(started.batches) == 2
        # Production already has those bytes now: refused, with the reason, exit 1.
        code, out, err = await confbus(w.url, "rollback", NS, "--to", str(v1))
        assert code == 1 and "already has" in err


async def test_confbus_rollback_refusals_and_unreachable(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    async with world(nats_server, bus, tmp_path) as w:
        v1 = await w.store.add(NS, GOOD, "good-1")
        await w.store.promote(NS, v1)
        await w.store.add(NS, BAD, "bad-2")
        code, _, err = await confbus(w.url, "rollback", NS, "--wait")
        assert code == 1 and "nothing known-good" in err
        code, _, err = await confbus(w.url, "rollback", NS, "--to", "9")
        assert code == 1 and "no version 9" in err
        code, _, err = await confbus(w.url, "rollback", NS, "--to", "2", "--strategy", "halves")
        assert code == 1 and "unknown rollback strategy" in err
        code, _, err = await confbus(w.url, "rollback", NS, "--to", "0")
        assert code == 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Its --timeout bounds the wait for the bus too (else CONNECT_WAIT_S for a broker that is
    # restarting to come back): one try, given up on at its own deadline.
    code, _, err = await confbus(f"nats://127.0.0.1:{port}", "rollback", NS, "--timeout", "1")
    assert code == 3 and "unreachable" in err
    tried = re.search(r"tried (\d+) times over ([\d.]+)s", err)
    assert tried and float(tried.group(2)) < CONNECT_WAIT_S, err


async def test_client_alerts_watch_and_rollback(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    pol = policy(automatic=False)  # the alert below is only read, not acted on
    async with world(nats_server, bus, tmp_path, nodes=2, pol=pol) as w, Client(w.url) as client:
        _, v2 = await w.seed()
        alerts: list[Alert] = []
        applied: list[NodeApplied] = []
        subscribed = anyio.Event()
        watching = anyio.Event()

        async def read_alerts() -> None:
            async for a in client.alerts(NS, on_subscribed=subscribed.set):
                alerts.append(a)
                if a.source == "operator":
                    return

        async def read_applied() -> None:
            async for ev in client.watch(NS, on_subscribed=watching.set):
                applied.append(ev)
                if len(applied) == 2:
                    return

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_alerts)
                tg.start_soon(read_applied)
                await subscribed.wait()
                await watching.wait()
                await _publish_elsewhere(w)
                await w.alert("op-1", v2, source="operator", summary="pool exhausted")
                reply = await client.rollback(NS, reason="pool exhausted", actor="bob", wait=True)
        assert reply.state == "completed" and reply.new_version == 3
        assert reply.to_version == 1 and reply.rollback_id.startswith("rb-")
        assert [a.alert_id for a in alerts] == ["op-1"]  # not the other namespace's
        assert sorted(e.node for e in applied) == ["n1", "n2"]
        assert all(e.version == 3 and e.previous == v2 for e in applied)
        assert len(w.tap.of("rollback.started")) == 1


async def _publish_elsewhere(w: World) -> None:
    from confbus.runtime.codec import encode
    from confbus.schemas import subjects

    other = Alert(alert_id="x-1", namespace="other", version=1)
    await w.bus.js.publish(subjects.alert("other"), encode(other))
