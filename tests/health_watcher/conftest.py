"""Fixtures of the health-watcher tests: a real nats-server (tests/conftest.py), the stand-in
version-store, and health-watcher processes started with short timings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from confbus.procs.nats import NatsServer
from confbus.procs.proc import Proc
from confbus.runtime.bus import Bus
from tests.health_watcher.support import AlertLog, StoreStub, started

# Fast enough for tests, slow enough not to flap on a busy 2-core machine.
FAST = ("--eval-interval", "0.1", "--lease-ttl", "1.5", "--policy-ttl", "0.2")

StartWatcher = Callable[..., Awaitable[Proc]]


@pytest.fixture
async def store(bus: Bus) -> AsyncIterator[StoreStub]:
    async with started(StoreStub(), bus) as stub:
        yield stub


@pytest.fixture
async def alert_log(bus: Bus) -> AsyncIterator[AlertLog]:
    async with started(AlertLog(), bus) as log:
        yield log


@pytest.fixture
async def start_watcher(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[StartWatcher]:
    procs: list[Proc] = []

    async def start(*extra: str, name: str = "health-watcher") -> Proc:
        proc = Proc.service("health_watcher", nats_server.url, tmp_path, *FAST, *extra, name=name)
        procs.append(proc)
        # Proc.start blocks until the ready line: off the event loop, which serves the store.
        return await anyio.to_thread.run_sync(proc.start)

    try:
        yield start
    finally:
        for proc in procs:
            await anyio.to_thread.run_sync(proc.stop)
