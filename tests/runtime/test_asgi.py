"""A service's own web app on the runtime (``confbus.runtime.asgi``): /metrics and /healthz
beside its routes, a port chosen before ready, responses without Nagle's delay, and a stop
that ends open streams instead of hanging on them."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from confbus.runtime.asgi import AsgiServer, _listen, with_metrics_and_health


def app() -> Starlette:
    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    async def forever(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"first\n"
            await anyio.sleep_forever()

        return StreamingResponse(body(), media_type="text/plain")

    return Starlette(routes=[Route("/hello", hello), Route("/forever", forever)])


async def test_routes_metrics_health_and_a_stop_that_ends_open_streams() -> None:
    registry = CollectorRegistry()
    Counter("confbus_test_things", "things", registry=registry).inc()
    healthy = [True, "ok"]
    served = with_metrics_and_health(app(), registry, lambda: (bool(healthy[0]), str(healthy[1])))
    server_scope = anyio.CancelScope()

    async def server(*, task_status: TaskStatus[int]) -> None:
        with server_scope:
            await AsgiServer(served).serve(task_status=task_status)

    async with anyio.create_task_group() as tg:
        port = await tg.start(server)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/hello")).text == "hello"
            assert "confbus_test_things_total 1.0" in (await client.get("/metrics")).text
            assert (await client.get("/healthz")).text == "ok\n"
            healthy[:] = [False, "nats disconnected"]
            r = await client.get("/healthz")
            assert (r.status_code, r.text) == (503, "nats disconnected\n")
            async with client.stream("GET", "/forever") as stream:
                lines = stream.aiter_lines()
                assert await lines.__anext__() == "first"
                server_scope.cancel()  # the service stops: the open stream is cut, not waited on
                with anyio.fail_after(10), pytest.raises(httpx.RemoteProtocolError):
                    async for _ in lines:
                        pass
            with anyio.fail_after(10):
                while True:  # refused once stopped
                    try:
                        await client.get("/hello")
                    except httpx.ConnectError:
                        break
                    await anyio.sleep(0.1)


def test_the_listening_socket_turns_nagle_off_for_its_connections() -> None:
    # asyncio disables Nagle only on sockets whose proto says TCP; without it each response
    # after the first on a kept-alive connection waited for the client's delayed ACK (~40 ms).
    sock = _listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()
