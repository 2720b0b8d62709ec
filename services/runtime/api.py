"""Request/reply APIs on ``nats.micro``: typed endpoints on the server side, typed calls on
the client side.

Every endpoint decodes its request into a Struct (a malformed request gets a 400 with
msgspec's path, never a crash), and maps ``ConfbusError`` to ``Nats-Service-Error-Code``
with an ``ApiError`` body, so the caller can rebuild the same error and decide: retry
(503) or give up (4xx).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import msgspec
import nats.errors
from anyio.abc import TaskGroup
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service

from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.runtime.errors import ConfbusError, Unavailable, from_code
from confbus.runtime.identity import bind_subject, unbind_subject
from confbus.schemas import subjects
from confbus.schemas.api import ApiError, decode_api_error
from confbus.schemas.base import DECODE_ERRORS

log = logging.getLogger("confbus.api")

Req = TypeVar("Req")
Rep = TypeVar("Rep")


@dataclass(frozen=True)
class Endpoint:
    op: str
    request_type: type[Any]
    handler: Callable[[Any], Awaitable[Any]]
    # nats-py runs one subscription's callbacks one at a time; a slow endpoint (a 2PC that
    # waits for votes) must not hold up the next request, so it runs in its own task.
    concurrent: bool = False
    # The subject under ``cfg.api.<service>`` when it is not just ``<op>``: ``approve.*`` pins
    # the caller's NATS user in the last token (confbus.runtime.identity).
    subject: str | None = None


async def _respond_error(req: Request, err: ApiError) -> None:
    await req.respond(
        encode(err),
        headers={"Nats-Service-Error": err.error[:200], "Nats-Service-Error-Code": str(err.code)},
    )


def _wrap(ep: Endpoint, tg: TaskGroup | None) -> Callable[[Request], Awaitable[None]]:
    decoder = msgspec.json.Decoder(ep.request_type)

    async def handle(req: Request) -> None:
        try:
            request = decoder.decode(req.data)
        except RecursionError:
            # msgspec raises this (not DecodeError) for JSON nested ~1000 deep; escaping here it
            # would end the service's task group — one request would kill the service.
            await _respond_error(req, ApiError(code=400, error="bad request: nested too deeply"))
            return
        except DECODE_ERRORS as exc:
            await _respond_error(req, ApiError(code=400, error=f"bad request: {exc}"))
            return
        bound = bind_subject(req.subject)
        try:
            reply = await ep.handler(request)
        except ConfbusError as exc:
            await _respond_error(req, ApiError(code=exc.code, error=exc.message, where=exc.where))
            return
        except Exception as exc:
            log.exception("endpoint failed", extra={"op": ep.op})
            await _respond_error(req, ApiError(code=500, error=f"internal error: {exc!r}"))
            return
        finally:
            unbind_subject(bound)
        await req.respond(encode(reply))

    if not ep.concurrent or tg is None:
        return handle

    async def spawn(req: Request) -> None:
        tg.start_soon(handle, req)

    return spawn


async def serve_api(
    bus: Bus,
    service: str,
    endpoints: Sequence[Endpoint],
    *,
    version: str = "0.1.0",
    description: str = "",
    tg: TaskGroup | None = None,
) -> Service:
    """Start a ``nats.micro`` service answering ``cfg.api.<service>.<op>``.

    Replicas share the default queue group, so several processes split the requests.
    """
    svc = await add_service(
        bus.nc,
        name=f"confbus-{service}",
        version=version,
        description=description or f"confbus {service} API",
    )
    group = svc.add_group(name=subjects.api_group(service))
    for ep in endpoints:
        await group.add_endpoint(
            EndpointConfig(name=ep.op, subject=ep.subject, handler=_wrap(ep, tg))
        )
    return svc


async def call(
    bus: Bus,
    service: str,
    op: str,
    request: Any,
    reply_type: type[Rep],
    *,
    timeout: float = 5.0,
) -> Rep:
    """Call ``cfg.api.<service>.<op>``; raise the endpoint's error as a ``ConfbusError``."""
    subject = subjects.api(service, op)
    try:
        msg = await bus.nc.request(subject, encode(request), timeout=timeout)
    except nats.errors.NoRespondersError as exc:
        raise Unavailable(f"no {service} service is answering on {subject}") from exc
    except nats.errors.TimeoutError as exc:
        raise Unavailable(f"{subject} did not answer within {timeout}s") from exc
    headers = msg.headers or {}
    if "Nats-Service-Error-Code" in headers:
        try:
            err = decode_api_error(msg.data)
            raise from_code(err.code, err.error, err.where)
        except DECODE_ERRORS:
            code = int(headers.get("Nats-Service-Error-Code", "500") or 500)
            raise from_code(code, headers.get("Nats-Service-Error", "error")) from None
    try:
        return msgspec.json.decode(msg.data, type=reply_type)
    except DECODE_ERRORS as exc:
        raise ConfbusError(f"malformed reply from {subject}: {exc}") from exc


async def stop_api(svc: Service) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await svc.stop()
        except Exception:  # the connection may be gone already
            pass
