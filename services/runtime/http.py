"""A small HTTP/1.1 server for ``/metrics``, ``/healthz`` and a few JSON endpoints
(the Alertmanager receiver, the agent's status).

Deliberately tiny: one request per connection, bounded header and body sizes, a read
timeout, and a handler error becomes a 500 instead of a crash. Services that need no more
than this should not pull a web framework into every agent.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
from anyio.abc import SocketStream, TaskStatus

from confbus.runtime.tcp import TcpListener

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("confbus.http")

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 1024 * 1024
READ_TIMEOUT_S = 10.0

_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"


Handler = Callable[[Request], Awaitable[Response]]
HealthCheck = Callable[[], tuple[bool, str]]


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


async def _read_request(stream: SocketStream) -> Request:
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEADER_BYTES:
            raise HttpError(413, "headers too large")
        chunk = await stream.receive(65536)
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, _version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(400, "malformed header")
        headers[name.strip().lower()] = value.strip()
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError as exc:
        raise HttpError(400, "bad content-length") from exc
    if length < 0 or length > MAX_BODY_BYTES:
        raise HttpError(413, f"body of {length} bytes exceeds {MAX_BODY_BYTES}")
    body = rest
    while len(body) < length:
        body += await stream.receive(65536)
    return Request(method.upper(), target.split("?", 1)[0], headers, body[:length])


def _encode(resp: Response) -> bytes:
    reason = _REASONS.get(resp.status, "")
    head = (
        f"HTTP/1.1 {resp.status} {reason}\r\n"
        f"Content-Type: {resp.content_type}\r\n"
        f"Content-Length: {len(resp.body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + resp.body


@dataclass
class HttpServer:
    """``/metrics`` from ``registry`` (None: a process with no metrics of its own, whose
    ``/metrics`` is empty), ``/healthz`` from ``health``, plus ``routes``."""

    registry: CollectorRegistry | None = None
    host: str = "127.0.0.1"
    port: int = 0
    health: HealthCheck = lambda: (True, "ok")
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    bound_port: int | None = None

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method.upper(), path)] = handler

    async def _dispatch(self, req: Request) -> Response:
        if req.path == "/metrics" and req.method == "GET":
            # Imported at the first scrape: prometheus_client's package pulls in http.server,
            # urllib and email (~1.3 MB of RSS), which an agent nobody scrapes never needs.
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            body = b"" if self.registry is None else generate_latest(self.registry)
            return Response(200, body, CONTENT_TYPE_LATEST)
        if req.path == "/healthz" and req.method == "GET":
            ok, detail = self.health()
            return Response(200 if ok else 503, detail.encode() + b"\n", "text/plain")
        handler = self.routes.get((req.method, req.path))
        if handler is None:
            known = {p for (_, p) in self.routes} | {"/metrics", "/healthz"}
            status = 405 if req.path in known else 404
            return Response(status, b'{"error": "no such endpoint"}')
        return await handler(req)

    async def _serve_one(self, stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(READ_TIMEOUT_S):
                    req = await _read_request(stream)
                resp = await self._dispatch(req)
            except HttpError as exc:
                resp = Response(exc.status, _json_error(str(exc)))
            except (
                TimeoutError,
                anyio.EndOfStream,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
            ):
                return
            except Exception as exc:  # a handler bug must not take the service down
                log.exception("http handler failed")
                resp = Response(500, _json_error(repr(exc)))
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.send(_encode(resp))

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await TcpListener.bind(self.host, self.port)
        self.bound_port = listener.port
        task_status.started(self.bound_port)
        await listener.serve(self._serve_one)


def _json_error(message: str) -> bytes:
    import json

    return json.dumps({"error": message}).encode()


async def http_get(host: str, port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """A minimal GET for tests and health probes (Connection: close, bounded read)."""
    with anyio.fail_after(timeout):
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            return await _read_response(stream)


def split_http_url(url: str) -> tuple[str, int, str]:
    """``http://host[:port]/path?query`` → (host, port, path with query); ValueError if it is
    not a plain-HTTP URL (no TLS here)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not an http://host[:port]/path URL: {url!r}")
    port = parts.port or 80  # .port raises ValueError on a bad port
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, port, path


async def http_get_url(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    host, port, path = split_http_url(url)
    return await http_get(host, port, path, timeout)


async def http_post(
    host: str,
    port: int,
    path: str,
    body: bytes,
    timeout: float = 5.0,
    content_type: str = "application/json",
) -> tuple[int, bytes]:
    with anyio.fail_after(timeout):
        async with await anyio.connect_tcp(host, port) as stream:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            await stream.send(head.encode() + body)
            return await _read_response(stream)


async def _read_response(stream: SocketStream) -> tuple[int, bytes]:
    data = b""
    try:
        while len(data) < MAX_BODY_BYTES * 4:
            data += await stream.receive(65536)
    except anyio.EndOfStream:
        pass
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, _, header_lines = head.decode("latin-1").partition("\r\n")
    try:
        status = int(status_line.split(" ")[1])
    except (IndexError, ValueError) as exc:
        raise HttpError(502, f"malformed response: {status_line!r}") from exc
    for line in header_lines.split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
            return status, _dechunk(body)
    return status, body


def _dechunk(data: bytes) -> bytes:
    """Decode a ``Transfer-Encoding: chunked`` body (many servers answer HTTP/1.1 that way)."""
    out = bytearray()
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            raise HttpError(502, "truncated chunked body")
        try:
            size = int(data[pos:end].split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise HttpError(502, f"bad chunk size {data[pos:end][:20]!r}") from exc
        if size == 0:
            return bytes(out)
        start = end + 2
        if start + size > len(data):
            raise HttpError(502, "truncated chunked body")
        out += data[start : start + size]
        pos = start + size + 2  # the CRLF after the chunk
