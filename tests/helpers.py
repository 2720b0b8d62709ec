"""Waiting on events instead of sleeping (every wait has a deadline), a fixture's started
thing stopped after the test, a fresh server made ready for confbus, and a server restarted
under a connected client."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TypeVar

import anyio

from confbus.procs.etcd import leader_name
from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus, connect, provision

T = TypeVar("T")
S = TypeVar("S")


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 10.0,
    every: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns something truthy, or fail after ``timeout``."""
    try:
        with anyio.fail_after(timeout):
            while True:
                value = await probe()
                if value:
                    return value
                await anyio.sleep(every)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


def stopped_after(started: S, stop: Callable[[S], object]) -> Iterator[S]:
    """A fixture's body: ``started`` for the test, then ``stop(started)`` however it ended."""
    try:
        yield started
    finally:
        stop(started)


async def etcd_leader(endpoints: Sequence[str], timeout: float = 10.0) -> str:
    """The name of the etcd member that leads, once one does (asked of ``endpoints``)."""

    async def named() -> str | None:
        return await anyio.to_thread.run_sync(leader_name, endpoints)

    return await eventually(named, timeout=timeout, what=f"an etcd leader among {endpoints}")


async def provision_at(url: str) -> None:
    """confbus's streams and buckets on the nats-server at ``url``, as ``confbus up`` makes
    them before it starts a service."""
    bus = await connect(url, name="test-provision")
    try:
        await provision(bus)
    finally:
        await bus.close()


async def restart_nats(server: NatsServer, bus: Bus, timeout: float = 20.0) -> float:
    """SIGKILL the server, start it again on its port and store; wait for the client to be
    back. Returns the monotonic time the connection came back."""
    back = bus.reconnected()
    server.kill()
    server.restart()
    with anyio.fail_after(timeout):
        await back.wait()
    return time.monotonic()
