"""Request/reply APIs on ``nats.micro``: handlers bound to the operations ``schemas/api``
declares on the server side, calls through those same operations on the client side.

Every endpoint decodes its request into a Struct (a malformed request gets a 400 with
msgspec's path, never a crash), and maps ``ConfbusError`` to ``Nats-Service-Error-Code``
with an ``ApiError`` body, so the caller can rebuild the same error and decide: retry
(503) or give up (4xx).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import msgspec
import nats.errors
from anyio.abc import TaskGroup

from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.runtime.errors import ConfbusError, Unavailable, from_code
from confbus.runtime.identity import bind_subject, unbind_subject
from confbus.runtime.presence import WATCH_EVERY_S, Presence
from confbus.runtime.retry import budget_deadline, retry_unavailable
from confbus.schemas import subjects
from confbus.schemas.api import ApiError, decode_api_error
from confbus.schemas.api.operation import Operation
from confbus.schemas.base import DECODE_ERRORS

if TYPE_CHECKING:
    # Serving only: a caller (the CLI, an agent) imports neither nats.micro nor the catalog of
    # every service's operations (~20 ms of each ``confbus`` command's start-up).
    from nats.aio.msg import Msg
    from nats.micro.request import Request
    from nats.micro.service import Service

log = logging.getLogger("confbus.api")

# An acknowledged operation's request asks the replica that takes it to say so at once: its
# role and instance, the name its presence answers to (``confbus.runtime.presence``).
ACK_ASKED = "Confbus-Ack"
ACCEPTED_BY = "Confbus-Accepted-By"


class ReplicaGone(Exception):
    """The replica that took a request died before answering it: its presence is gone."""

    def __init__(self, role: str, instance: str) -> None:
        super().__init__(f"the {role} replica {instance} that took the request is gone")
        self.role = role
        self.instance = instance


Req = TypeVar("Req")
Rep = TypeVar("Rep")


@dataclass(frozen=True)
class Endpoint(Generic[Req, Rep]):
    """A handler bound to an operation declared in ``schemas/api``."""

    op: Operation[Req, Rep]
    handler: Callable[[Req], Awaitable[Rep]]
    # nats-py runs one subscription's callbacks one at a time; a slow endpoint (a 2PC that
    # waits for votes) must not hold up the next request, so it runs in its own task.
    concurrent: bool = False


async def _respond_error(req: Request, err: ApiError) -> None:
    await req.respond(
        encode(err),
        headers={"Nats-Service-Error": err.error[:200], "Nats-Service-Error-Code": str(err.code)},
    )


def _wrap(
    ep: Endpoint[Any, Any], tg: TaskGroup | None, presence: Presence | None
) -> Callable[[Request], Awaitable[None]]:
    decoder = msgspec.json.Decoder(ep.op.request)
    me = presence if ep.op.acknowledged else None

    async def handle(req: Request) -> None:
        if me is not None and me.serving and (req.headers or {}).get(ACK_ASKED):
            # Who took it, before any work: the caller probes that presence while it waits.
            # Flushed, so that a crash in the work that follows cannot keep it unsent.
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await req.respond(b"", headers={ACCEPTED_BY: f"{me.role} {me.process}"})
                await me.bus.nc.flush(timeout=1)
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
            log.exception("endpoint failed", extra={"op": ep.op.name})
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


def _service_of(endpoints: Sequence[Endpoint[Any, Any]], partial: bool) -> str:
    """The one service the endpoints belong to, checked against what ``schemas/api`` declares
    for it: every operation bound once (``partial``: a test's stand-in may bind fewer)."""
    services = {ep.op.service for ep in endpoints}
    if len(services) != 1:
        raise ValueError(f"one service per serve_api, not {sorted(services) or 'none'}")
    (service,) = services
    from confbus.schemas.api.catalog import operations_of

    declared = operations_of(service)
    bound: dict[str, Endpoint[Any, Any]] = {}
    for ep in endpoints:
        op = ep.op.declaration
        if op not in declared:
            raise ValueError(f"{service}.{op.name} is not declared in schemas/api")
        if op.per_replica and ep.op is op:
            raise ValueError(f"{service}.{op.name} is served per replica: bind op.at(replica)")
        if op.name in bound:
            raise ValueError(f"{service}.{op.name} is bound twice")
        bound[op.name] = ep
    missing = [op.name for op in declared if op.name not in bound]
    if missing and not partial:
        raise ValueError(f"{service}: no handler for {', '.join(missing)}")
    return service


async def serve_api(
    bus: Bus,
    endpoints: Sequence[Endpoint[Any, Any]],
    *,
    partial: bool = False,
    version: str = "0.1.0",
    description: str = "",
    tg: TaskGroup | None = None,
    presence: Presence | None = None,
) -> Service:
    """Start a ``nats.micro`` service answering the operations the endpoints bind.

    Replicas share the default queue group, so several processes split the requests (an
    operation ``at`` one replica has a subject of its own). ``presence``: this replica's, named
    in the early answer to an ``acknowledged`` operation's request while it is served.
    """
    from nats.micro import add_service
    from nats.micro.service import EndpointConfig

    service = _service_of(endpoints, partial)
    svc = await add_service(
        bus.nc,
        name=f"confbus-{service}",
        version=version,
        description=description or f"confbus {service} API",
    )
    group = svc.add_group(name=subjects.api_group(service))
    for ep in endpoints:
        await group.add_endpoint(
            EndpointConfig(
                name=ep.op.name, subject=ep.op.subject or None, handler=_wrap(ep, tg, presence)
            )
        )
    return svc


async def call(
    bus: Bus,
    op: Operation[Req, Rep],
    request: Req,
    *,
    timeout: float | None = None,
    retry_for: float | None = None,
    again_after: float | None = None,
) -> Rep:
    """Send ``request`` to ``op`` and decode its reply; raise the endpoint's error as a
    ``ConfbusError`` (``Unavailable`` when nobody answered within the deadline).

    ``again_after``: with no answer by then, send the request once more beside the first, and
    take whichever answer comes first — for an operation safe to repeat whose caller must not
    wait out its deadline for a request lost with a dying nats-server (the one it went
    through, or the one its taker's reply went back through).

    ``timeout`` None: the operation's deadline. A caller may wait longer; it may wait less only
    for a read, where not hearing back loses an answer and never cuts off an act under way.

    What is retried (``confbus.runtime.retry``, with backoff): a request that reached nobody
    (no responders: the service is resubscribing after a reconnect; the connection is
    reconnecting) always; one that may have reached the service (a timeout, a 503) only if the
    operation is safe to repeat (``Operation.retry_safe``) — an act that is not says so in the
    error instead. For how long: ``retry_for`` seconds, else until the deadline of the
    ``retry.budget`` around the caller (a command's ``--timeout``), else one ``timeout`` in all.
    ``retry_for=0``: one try, for a caller that has something better to do when nobody answers.
    """
    deadline = op.deadline_s(request)
    if timeout is None:
        timeout = deadline
    elif op.acts and timeout < deadline:
        raise ValueError(
            f"{op.service}.{op.name} acts: wait at least its deadline ({deadline:g}s), "
            f"not {timeout:g}s"
        )
    if again_after is not None and not op.retry_safe:
        raise ValueError(f"{op.service}.{op.name} is not safe to send twice")
    started = time.monotonic()
    if retry_for is not None:
        until = started + retry_for
    else:
        until = budget_deadline()
        if until == math.inf:
            until = started + timeout
    per_try = timeout

    async def once() -> Rep:
        # A read need not outwait the budget; an act always gets its whole deadline.
        left = until - time.monotonic()
        wait = per_try if op.acts or left <= 0 else max(min(per_try, left), _MIN_TRY_S)
        if again_after is None or again_after >= wait:
            return await _request(bus, op, request, wait)
        return await _twice(bus, op, request, wait, again_after)

    def refuse(exc: Unavailable) -> str:
        if isinstance(exc.__cause__, nats.errors.ConnectionClosedError):
            return "the connection is closed"
        if isinstance(exc.__cause__, _UNDELIVERED):
            return ""  # nobody got it: nothing can have been done
        return op.why_not_retried()

    return await retry_unavailable(
        once, what=f"{op.service}.{op.name} ({op.address})", deadline=until, refuse=refuse
    )


# A request that did not reach any service: safe to send again, whatever it asks for.
_UNDELIVERED = (
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
)
# The shortest wait for an answer a retried read is given, however little budget is left.
_MIN_TRY_S = 0.5


async def _twice(
    bus: Bus, op: Operation[Req, Rep], request: Req, timeout: float, again_after: float
) -> Rep:
    """``_request``, and the same request again ``again_after`` seconds later unless answered:
    the first answer (or error from the service) wins; ``Unavailable`` only if neither got one."""
    answers: list[Rep] = []
    errors: list[Exception] = []

    async with anyio.create_task_group() as tg:

        async def attempt(delay: float) -> None:
            await anyio.sleep(delay)  # the second attempt's start: no answer by then
            try:
                answers.append(await _request(bus, op, request, timeout - delay))
            except Unavailable as exc:
                errors.append(exc)  # no answer this way: the other attempt may get one
                return
            except Exception as exc:  # the service's own answer, an error
                errors.insert(0, exc)
            tg.cancel_scope.cancel()

        tg.start_soon(attempt, 0.0)
        tg.start_soon(attempt, again_after)
    if answers:
        return answers[0]
    raise errors[0]


async def _request(bus: Bus, op: Operation[Req, Rep], request: Req, timeout: float) -> Rep:
    subject = op.address
    try:
        if op.acknowledged:
            msg = await _acknowledged_request(bus, subject, encode(request), timeout)
        else:
            msg = await bus.nc.request(subject, encode(request), timeout=timeout)
    except ReplicaGone as exc:
        raise Unavailable(f"{subject}: {exc} (it died before answering)") from exc
    except nats.errors.NoRespondersError as exc:
        raise Unavailable(f"no {op.service} service is answering on {subject}") from exc
    except nats.errors.TimeoutError as exc:
        raise Unavailable(f"{subject} did not answer within {timeout:g}s") from exc
    except (
        nats.errors.ConnectionReconnectingError,
        nats.errors.OutboundBufferLimitError,
        nats.errors.ConnectionClosedError,
    ) as exc:
        raise Unavailable(f"cannot send to {subject}: {exc!r}") from exc
    headers = msg.headers or {}
    if "Nats-Service-Error-Code" in headers:
        try:
            err = decode_api_error(msg.data)
            raise from_code(err.code, err.error, err.where)
        except DECODE_ERRORS:
            code = int(headers.get("Nats-Service-Error-Code", "500") or 500)
            raise from_code(code, headers.get("Nats-Service-Error", "error")) from None
    try:
        return op.decode_reply(msg.data)
    except DECODE_ERRORS as exc:
        raise ConfbusError(f"malformed reply from {subject}: {exc}") from exc


async def _acknowledged_request(bus: Bus, subject: str, data: bytes, timeout: float) -> Msg:
    """A request whose taker names itself at once (``ACCEPTED_BY``); while the answer is
    awaited, that replica's presence is probed every ``WATCH_EVERY_S``, and ``ReplicaGone`` is
    raised as soon as it is gone (no responders twice: its process died) — instead of waiting
    out the deadline for an answer that cannot come. A taker that is slow or paused still
    answers its presence and is waited for; one that does not name itself (an older replica)
    is waited for as any request."""
    nc = bus.nc
    send, receive = anyio.create_memory_object_stream[Any](math.inf)

    async def got(msg: Msg) -> None:
        send.send_nowait(msg)

    sub = await nc.subscribe(nc.new_inbox(), cb=got)
    answer: list[Msg] = []
    gone: list[ReplicaGone] = []
    try:
        await nc.publish(subject, data, reply=sub.subject, headers={ACK_ASKED: "1"})
        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as tg:

                async def watch(role: str, instance: str) -> None:
                    probe = Presence(bus, role, "")
                    while True:
                        await anyio.sleep(WATCH_EVERY_S)
                        if await probe.gone(instance):
                            gone.append(ReplicaGone(role, instance))
                            tg.cancel_scope.cancel()
                            return

                async for msg in receive:
                    taker = (msg.headers or {}).get(ACCEPTED_BY)
                    if taker is None:
                        answer.append(msg)
                        tg.cancel_scope.cancel()
                        break
                    role, _, instance = taker.partition(" ")
                    tg.start_soon(watch, role, instance)
    finally:
        send.close()
        receive.close()
        with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    if answer:
        msg = answer[0]
        if (msg.headers or {}).get("Status") == "503":
            raise nats.errors.NoRespondersError
        return msg
    if gone:
        raise gone[0]
    raise nats.errors.TimeoutError


async def stop_api(svc: Service) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await svc.stop()
        except Exception:  # the connection may be gone already
            pass
