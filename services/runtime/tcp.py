"""A TCP listener whose accept can be cancelled at any moment.

anyio's TCP listener accepts with asyncio's ``loop.sock_accept``. On CPython 3.11 that has
a race: when the task waiting in ``accept`` is cancelled in the same loop iteration in
which a client connects, the selector's callback still calls ``set_result`` on the
cancelled future, and the loop reports ``InvalidStateError`` (the connection is lost
with it). Every service's HTTP endpoint is cancelled at shutdown while scrapers connect;
a test that cancels its server right after a scrape hit it about once in a few hundred
runs (a cancel right after a connect: every time, ``tests/runtime/test_tcp.py``).

Here ``accept`` is a non-blocking ``accept()`` after ``anyio.wait_readable``, whose
callback tolerates a cancelled waiter: cancelling it leaves a pending connection in the
kernel's backlog, where it belongs.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Coroutine
from types import TracebackType

import anyio
from anyio.abc import SocketStream

BACKLOG = 128


class TcpListener:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock

    @classmethod
    async def bind(cls, host: str, port: int = 0) -> TcpListener:
        """Listen on the first address ``host`` resolves to (IPv4 or IPv6)."""
        infos = await anyio.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _type, _proto, _name, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # A restarted service must get its port back while old connections linger.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr[:2] if family == socket.AF_INET else addr)
            sock.listen(BACKLOG)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @property
    def port(self) -> int:
        port: int = self._sock.getsockname()[1]
        return port

    async def accept(self) -> SocketStream:
        while True:
            try:
                conn, _addr = self._sock.accept()
            except BlockingIOError:
                await anyio.wait_readable(self._sock)
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return await SocketStream.from_socket(conn)

    async def serve(
        self, handler: Callable[[SocketStream], Coroutine[object, object, None]]
    ) -> None:
        """Accept until cancelled, each connection handled in its own task."""
        async with anyio.create_task_group() as tg:
            while True:
                tg.start_soon(handler, await self.accept())

    def close(self) -> None:
        self._sock.close()

    async def __aenter__(self) -> TcpListener:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
