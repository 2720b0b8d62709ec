"""The first connect of ``confbus.runtime.bus.connect`` when a caller gives up at once: a closed
port is said at once (not after the attempt's deadline), and a dead server in the list does
not stop it reaching a live one."""

from __future__ import annotations

import pytest

from confbus.procs.nats import NatsServer
from confbus.runtime.bus import connect
from confbus.runtime.errors import Unavailable
from tests.cli.procs import dead_nats_url

pytestmark = pytest.mark.anyio


async def test_a_refused_connect_gives_up_on_the_refusal_not_the_deadline() -> None:
    url = dead_nats_url()
    with pytest.raises(Unavailable) as caught:
        await connect(url, name="test", give_up_at_once=True)
    said = str(caught.value)
    assert said.startswith(f"cannot reach NATS at {url}: connection refused"), said
    assert "no connection within" not in said, said  # the deadline's words: it waited
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


async def test_one_dead_server_in_the_list_does_not_stop_the_first_connect(
    nats_server: NatsServer,
) -> None:
    # nats-py shuffles the list: whichever it tries first, the live one is reached.
    for _ in range(3):
        bus = await connect([dead_nats_url(), nats_server.url], name="test", give_up_at_once=True)
        try:
            assert bus.nc.is_connected
        finally:
            await bus.close()
