"""A TCP listener whose accept can be cancelled at any moment.

anyio's TCP listener accepts with asyncio's ``loop.sock_accept``. On CPython 3.11 that has
a race: when the task waiting in ``accept`` is cancelled in the same loop iteration in
which a client connects, the selector's callback still calls ``set_result`` on the
cancelled future, and the loop reports ``InvalidStateError`` (the connection is lost
with it). Every service's HTTP endpoint is cancelled at shutdown while scrapers connect;
a test that cancels its server right after a scrape hit it about once in a few hundred
runs (a cancel right after a connect: every time, ``tests/runtime/test_tcp.py``).

Here accepting is a non-blocking ``accept()`` after ``anyio.wait_readable``, whose
callback tolerates a cancelled waiter: cancelling it leaves a pending connection in the
kernel's backlog, where it belongs.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import anyio
from anyio.abc import SocketStream

BACKLOG = 128
_SHORT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

log = logging.getLogger("confbus.tcp")


class TcpListener:
    """Listening sockets on every address a host resolves to (``localhost``: IPv4 and IPv6,
    as anyio's listener did), all on one port. ``serve`` owns them: it closes them when it
    ends; ``close`` is for a listener that is never served."""

    def __init__(self, socks: list[socket.socket]) -> None:
        for sock in socks:
            sock.setblocking(False)
        self._socks = socks

    @classmethod
    async def bind(cls, host: str, port: int = 0) -> TcpListener:
        infos: Sequence[tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]]
        try:
            # A numeric address needs no lookup, so none goes to a worker thread: asyncio's
            # executor thread behind ``anyio.getaddrinfo`` stays for the process's life, and
            # costs an agent (its status endpoint is on 127.0.0.1) ~0.5 MB of resident memory.
            # Bytes, as anyio passes them: a str host is encoded by the idna codec, which
            # imports ``unicodedata`` (~0.3 MB more).
            numeric = socket.AI_PASSIVE | socket.AI_NUMERICHOST
            infos = socket.getaddrinfo(
                host.encode("ascii"), port, type=socket.SOCK_STREAM, flags=numeric
            )
        except (UnicodeEncodeError, socket.gaierror):  # a name: resolved off the event loop
            infos = await anyio.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        addrs = list(dict.fromkeys((family, addr) for family, _t, _p, _n, addr in infos))
        socks: list[socket.socket] = []
        try:
            for family, addr in addrs:
                sock = socket.socket(family, socket.SOCK_STREAM)
                socks.append(sock)
                # A restarted service must get its port back while old connections linger.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and len(addrs) > 1:
                    # Its IPv4 twin has a socket of its own: no dual-stack clash on the port.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and len(socks) > 1:  # the port the first address was given
                    addr = (addr[0], socks[0].getsockname()[1], *addr[2:])
                sock.bind(addr)
                sock.listen(BACKLOG)
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        return cls(socks)

    @property
    def port(self) -> int:
        port: int = self._socks[0].getsockname()[1]
        return port

    async def serve(
        self, handler: Callable[[SocketStream], Coroutine[object, object, None]]
    ) -> None:
        """Accept until cancelled, each connection handled in its own task; then close."""

        async def accept_loop(sock: socket.socket) -> None:
            while True:
                tg.start_soon(handler, await _accept(sock))

        try:
            async with anyio.create_task_group() as tg:
                for sock in self._socks:
                    tg.start_soon(accept_loop, sock)
        finally:
            self.close()

    def close(self) -> None:
        for sock in self._socks:
            sock.close()


async def _accept(sock: socket.socket) -> SocketStream:
    while True:
        try:
            conn, _addr = sock.accept()
        except BlockingIOError:
            await anyio.wait_readable(sock)
            continue
        except (ConnectionAbortedError, InterruptedError):
            continue  # the client gave up before we took it: not the listener's failure
        except OSError as exc:
            if exc.errno not in _SHORT_OF_RESOURCES:
                raise
            # Out of file descriptors or memory: wait for connections to close, keep serving.
            log.warning("cannot accept a connection", extra={"error": str(exc)})
            await anyio.sleep(0.1)
            continue
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return await SocketStream.from_socket(conn)
