"""A loopback TCP proxy that can lose the server's replies, to make a commit's outcome unknown.

``swallow_after(n)``: once ``n`` more bytes have gone from client to server, every byte from the
server is dropped (the connections stay open). A request larger than ``n`` therefore reaches the
server whole — the flow-control window it needs was granted while replies still passed — and
its reply never comes back: the client sees a timeout for a write that did happen.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager

import anyio
from anyio.abc import SocketStream

from confbus.runtime.tcp import TcpListener


class ReplyLosingProxy:
    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self.port = 0
        self._armed_at: int | None = None
        self._threshold = 0
        self._upstream_bytes = 0
        self.swallowed = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def swallow_after(self, n: int) -> None:
        self._armed_at = self._upstream_bytes
        self._threshold = n

    def _swallowing(self) -> bool:
        return (
            self._armed_at is not None and self._upstream_bytes - self._armed_at >= self._threshold
        )

    async def _handle(self, client: SocketStream) -> None:
        server = await anyio.connect_tcp("127.0.0.1", self._target_port)
        async with client, server, anyio.create_task_group() as tg:

            async def up() -> None:
                async for chunk in client:
                    self._upstream_bytes += len(chunk)
                    await server.send(chunk)
                tg.cancel_scope.cancel()

            async def down() -> None:
                async for chunk in server:
                    if self._swallowing():
                        self.swallowed += len(chunk)
                        continue
                    await client.send(chunk)
                tg.cancel_scope.cancel()

            tg.start_soon(up)
            tg.start_soon(down)


@asynccontextmanager
async def reply_losing_proxy(target_port: int) -> AsyncIterator[ReplyLosingProxy]:
    async with anyio.create_task_group() as tg:
        listener = await TcpListener.bind("127.0.0.1")
        proxy = ReplyLosingProxy(target_port)
        proxy.port = listener.port
        tg.start_soon(listener.serve, _guard(proxy))
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()


def _guard(proxy: ReplyLosingProxy) -> Callable[[SocketStream], Coroutine[object, object, None]]:
    async def handle(client: SocketStream) -> None:
        try:
            await proxy._handle(client)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return  # either side hung up: the proxy just lets go

    return handle
