"""Provisioning against a real nats-server: idempotent, limits as the table says, and room
for more agents than nats-server's default of 1000 consumers per stream."""

from __future__ import annotations

import dataclasses

import anyio
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus, provision
from confbus.schemas.streams import BUCKETS, CFG_TXN, STREAMS

pytestmark = pytest.mark.anyio


async def test_provisioning_twice_keeps_the_table_limits(bus: Bus) -> None:
    await provision(bus)  # the fixture provisioned once already
    for spec in STREAMS:
        cfg = (await bus.js.stream_info(spec.name)).config
        assert cfg.max_age == spec.max_age_s and cfg.max_bytes == spec.max_bytes, spec.name
        assert cfg.max_consumers == spec.max_consumers, spec.name
        assert cfg.duplicate_window == spec.duplicate_window_s, spec.name
    for b in BUCKETS:
        status = await (await bus.js.key_value(b.name)).status()
        assert status.bucket == b.name


async def test_cfg_txn_takes_more_than_a_thousand_agents(bus: Bus, nats_server: NatsServer) -> None:
    """One ordered consumer per agent and namespace: nats-server 2.15 would refuse the
    1001st ephemeral consumer of a stream that does not set its own limit."""
    created = 0

    async def one(i: int) -> None:
        nonlocal created
        await bus.js.add_consumer(
            CFG_TXN.name,
            ConsumerConfig(
                name=f"agent-{i}",
                deliver_policy=DeliverPolicy.NEW,
                inactive_threshold=60.0,
                filter_subject=f"cfg.txn.ns{i % 10}.>",
            ),
        )
        created += 1

    with anyio.fail_after(120):
        for start in range(0, 1050, 50):
            async with anyio.create_task_group() as tg:
                for i in range(start, start + 50):
                    tg.start_soon(one, i)
    assert created == 1050
    assert (await bus.js.stream_info(CFG_TXN.name)).state.consumer_count == 1050
    # A graceful stop writes each consumer's state (~11 s for these 1050, past the fixture's
    # 10 s SIGTERM grace); the store is thrown away, so end it as a crash would.
    await bus.close()
    nats_server.kill()


async def test_streams_of_an_older_deployment_get_atomic_batches(bus: Bus) -> None:
    """Streams made before atomic batches were used (allow_atomic off) are updated at start-up."""
    old = [dataclasses.replace(spec, allow_atomic=False) for spec in STREAMS]
    for spec in old:
        await bus.js.delete_stream(spec.name)
    await provision(bus, streams=old)
    assert not (await bus.js.stream_info("CFG_EVENTS")).config.allow_atomic
    await provision(bus)
    for spec in STREAMS:
        assert (await bus.js.stream_info(spec.name)).config.allow_atomic, spec.name
