"""Shared fixtures: a real nats-server per test (fresh JetStream store dir, free port)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus, connect, provision

# Started in the background by a shell without job control (``make test &``, a CI runner),
# the test run inherits SIGINT ignored, and so would every process it starts: the tests that
# stop a command with Ctrl-C (SIGINT → exit 130) would wait for it in vain. A handler, unlike
# SIG_IGN, is reset to the default by exec: the children get a working Ctrl-C again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
