"""Shared fixtures: a real nats-server per test (fresh JetStream store dir, free port)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.runtime.bus import Bus, connect, provision
from services.runtime.natsd import NatsServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # nats-py does not run on trio


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(data_dir=tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    b = await connect(nats_server.url, name="test")
    await provision(b)
    try:
        yield b
    finally:
        await b.close()
