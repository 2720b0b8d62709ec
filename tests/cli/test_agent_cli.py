"""``confbus --nats-url URL agent …``: the agent joins the bus at URL (a subcommand's own
defaults once overwrote the top-level option, and it went to 127.0.0.1:4222)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

from confbus.procs.proc import Proc
from confbus.runtime.bus import Bus
from confbus.schemas import subjects
from confbus.schemas.node import decode_heartbeat
from tests.e2e.helpers import agent_status

pytestmark = pytest.mark.anyio


async def test_the_top_level_nats_url_reaches_the_agent(bus: Bus, tmp_path: Path) -> None:
    url = bus.nc.connected_url
    assert url is not None
    beats = await bus.nc.subscribe(subjects.heartbeat("n1"))
    argv = [sys.executable, "-m", "confbus.cli.main", "--nats-url", url.geturl(), "agent"]
    argv += ["--node", "n1", "--namespace", "web", "--path", str(tmp_path / "app.json")]
    argv += ["--state-dir", str(tmp_path / "state")]
    env = {k: v for k, v in os.environ.items() if k != "CONFBUS_NATS_URL"}
    agent = Proc("agent", argv, tmp_path, env).start()
    try:
        with anyio.fail_after(20):
            msg = await beats.next_msg(timeout=20)
        assert decode_heartbeat(msg.data).node == "n1"
        # Its ready line comes before it has tried the bus: "connecting", never "down" while
        # the bus is there; once heard, its status says connected.
        assert agent.ready is not None
        assert agent.ready["status"]["bus"] == "connecting", agent.ready
        status = await agent_status(int(agent.ready["http_port"]))
        assert status["bus"] == "connected", status
    finally:
        agent.stop()
        # Heartbeats left unread in this callback-less subscription would hold the bus's drain
        # for its whole 30 s timeout.
        await beats.unsubscribe()
