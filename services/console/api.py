"""The HTTP JSON API (``/api/v1``): everything the CLI does, for callers without NATS.

Each operation is declared once in ``OPS`` — method, path, the role it needs, its query, body
and answer types — and that declaration both routes requests and writes the OpenAPI document
(``confbus.console.openapi``). Every answer is JSON; every error is a ``Problem`` (status, kind,
reason, where) and changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from confbus.client import (
    ChangeRejected,
    FleetAt,
    FleetDiff,
    StreamedEvent,
    VersionVariants,
    Why,
    check_namespace,
    check_node,
    policy_from_document,
)
from confbus.console import apitypes as t
from confbus.console.auth import Principal, authenticate, check_csrf, require
from confbus.console.backend import Backend
from confbus.console.metrics import ConsoleMetrics
from confbus.runtime.errors import ConfbusError, InvalidInput
from confbus.runtime.events import event_type
from confbus.runtime.since import Moment, parse_moment, parse_since
from confbus.schemas import subjects
from confbus.schemas.api import dist as dist_api
from confbus.schemas.api import rollback as rollback_api
from confbus.schemas.api import store as store_api
from confbus.schemas.names import VersionNumber
from confbus.schemas.policy import Policy
from confbus.schemas.tokens import Role
from confbus.schemas.versions import VersionInfo

PREFIX = "/api/v1"
MAX_BODY = 4 * 1024 * 1024
SSE_KEEPALIVE_S = 15.0
_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class Call:
    """One request, authenticated and decoded."""

    request: Request
    principal: Principal
    backend: Backend
    query: Any
    body: Any

    @property
    def ns(self) -> str:
        return check_namespace(self.request.path_params["ns"])

    @property
    def user(self) -> str:
        return self.principal.user

    def param(self, name: str) -> str:
        value: str = self.request.path_params[name]
        return value


@dataclass(frozen=True)
class Op:
    name: str
    method: str
    path: str  # under PREFIX
    summary: str
    role: Role
    handler: Callable[[Call], Awaitable[Any]]
    reply: Any  # the answer's type (for the document)
    query: type[Any] | None = None
    body: type[Any] | None = None
    # The body is read as plain JSON and the handler checks it (the document still shows
    # ``body``): the policy, checked as ``confbus policy --file`` checks a file.
    body_checked_by_handler: bool = False
    status: int = 200
    media_type: str = "application/json"
    errors: tuple[int, ...] = field(default=(400, 401, 403, 404, 503))


def problem(status: int, kind: str, reason: str, where: str = "") -> Response:
    body = _json.encode(t.Problem(status=status, error=kind, reason=reason, where=where))
    return Response(body, status_code=status, media_type="application/json")


_KINDS = {
    400: "invalid",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "rejected",
    503: "unavailable",
}


API_INDEX = f" (every endpoint is in {PREFIX}/openapi.json)"


async def no_route(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 (no route, or not this method), said as the API says every
    error — with the reason — for a caller of the API; a short hint for a browser."""
    status = getattr(exc, "status_code", 500)
    method, path = request.method, request.url.path
    allow = getattr(exc, "headers", None) or {}
    if status == 405:
        reason = f"{method} is not allowed on {path}: use {allow.get('Allow', 'another method')}"
    else:
        reason = f"no such endpoint: {method} {path}"
    if path.startswith("/api/"):
        found = problem(status, _KINDS.get(status, "error"), reason + API_INDEX, "path")
        found.headers.update(allow)
        return found
    return Response(f"{reason} (the console starts at /)\n", status, allow, "text/plain")


def error_response(exc: Exception) -> Response:
    if isinstance(exc, ChangeRejected):
        return problem(422, "rejected", exc.reason, exc.where)
    if isinstance(exc, ConfbusError):
        status = exc.code if 400 <= exc.code < 600 else 500
        return problem(status, _KINDS.get(status, "error"), exc.message, exc.where)
    raise exc


def decode_error(exc: Exception, what: str) -> InvalidInput:
    """msgspec's message, with its ``$.path`` as the place."""
    reason, _, where = str(exc).partition(" - at `")
    where = where.rstrip("`")
    if missing := _MISSING_RE.search(reason):  # the place is the field that is not there
        where = f"{where or '$'}.{missing.group(1)}"
    return InvalidInput(f"{what}: {reason}", where=where or what)


_MISSING_RE = re.compile(r"missing required field `([^`]+)`")


def _query(request: Request, kind: type[Any]) -> Any:
    try:
        return msgspec.convert(dict(request.query_params), kind, strict=False)
    except msgspec.ValidationError as exc:
        raise decode_error(exc, "query") from None


async def _body(request: Request, kind: type[Any]) -> Any:
    data = await request.body()
    if len(data) > MAX_BODY:
        raise InvalidInput(f"the body is {len(data)} bytes: at most {MAX_BODY}", where="body")
    try:
        return msgspec.json.decode(data, type=kind)
    except RecursionError:
        raise InvalidInput("the body nests too deeply", where="body") from None
    except msgspec.ValidationError as exc:  # before DecodeError: it is one
        raise decode_error(exc, "body") from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}", where="body") from None


def endpoint(op: Op, metrics: ConsoleMetrics) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        started = anyio.current_time()
        try:
            principal = authenticate(request, request.app.state.tokens)
            check_csrf(request, principal, None)
            require(principal, op.role, op.summary.lower().rstrip("."))
            if "ns" in request.path_params:
                check_namespace(request.path_params["ns"])
            query = _query(request, op.query) if op.query else None
            kind: Any = Any if op.body_checked_by_handler else op.body
            body = await _body(request, kind) if op.body else None
            call = Call(request, principal, request.app.state.backend, query, body)
            result = await op.handler(call)
            if isinstance(result, Response):  # not JSON: a version's bytes, an event stream
                response = result
            else:
                response = Response(_json.encode(result), op.status, media_type=op.media_type)
        except ConfbusError as exc:
            response = error_response(exc)
        metrics.observe(op.name, response.status_code, anyio.current_time() - started)
        return response

    return handle


def routes(metrics: ConsoleMetrics) -> list[Route]:
    return [
        Route(PREFIX + op.path, endpoint(op, metrics), methods=[op.method], name=op.name)
        for op in OPS
    ]


# -- reads -------------------------------------------------------------------------------------


async def whoami(call: Call) -> t.WhoAmI:
    return t.WhoAmI(user=call.user, role=call.principal.role)


async def overview(call: Call) -> t.Overview:
    return t.Overview(namespaces=await call.backend.overview())


async def history(call: Call) -> store_api.HistoryReply:
    q: t.HistoryQuery = call.query
    return await call.backend.history(call.ns, limit=q.limit, before=q.before)


def _ref(call: Call) -> str:
    try:
        return msgspec.convert(call.param("ref"), store_api.VersionRef)
    except msgspec.ValidationError:
        raise InvalidInput(
            f"{call.param('ref')!r}: expected a version number, production, last-good or latest",
            where="ref",
        ) from None


async def version(call: Call) -> VersionInfo:
    return await call.backend.version(call.ns, _ref(call))


async def content(call: Call) -> Response:
    q: t.ForQuery = call.query
    ns = await call.backend.known(call.ns)
    labels = await call.backend.labels_for(ns, q.for_, q.node)
    if labels is not None:  # a node's own bytes of a version with overlays (§2.6)
        info, variant = await call.backend.rendered(ns, _ref(call), labels)
        return Response(
            variant.content,
            media_type="application/octet-stream",
            headers={
                "x-confbus-version": str(info.version),
                "x-confbus-sha256": variant.sha256,
                "x-confbus-variant": variant.name,
            },
        )
    reply = await call.backend.content(ns, _ref(call))
    return Response(
        reply.content or b"",
        media_type="application/octet-stream",
        headers={
            "x-confbus-version": str(reply.info.version),
            "x-confbus-sha256": reply.info.sha256,
        },
    )


async def variants(call: Call) -> VersionVariants:
    return await call.backend.version_variants(call.ns, _ref(call))


async def diff(call: Call) -> store_api.DiffReply:
    q: t.DiffQuery = call.query
    ns = await call.backend.known(call.ns)
    labels = await call.backend.labels_for(ns, q.for_, q.node)
    return await call.backend.diff(ns, q.a, q.b, labels)


async def policy(call: Call) -> Policy:
    return await call.backend.policy(call.ns)


async def rollout(call: Call) -> dist_api.RolloutReply:
    return dist_api.RolloutReply(rollout=await call.backend.rollout(call.ns))


async def rollout_nodes(call: Call) -> t.RolloutNodes:
    view = await call.backend.rollout_view(call.ns)
    return t.RolloutNodes(votes=view.votes, applied=view.applied, seq=view.seq)


async def fleet(call: Call) -> dist_api.StatusReply:
    return await call.backend.fleet(call.ns)


async def fleet_variants(call: Call) -> t.FleetVariants:
    status = await call.backend.fleet(call.ns)
    named = await call.backend.fleet_variants(status)
    return t.FleetVariants(
        nodes=[
            t.NodeVariant(
                node=n.node, version=n.applied_version, sha256=n.sha256, variant=named[n.node]
            )
            for n in status.nodes
        ]
    )


def moment(text: str, where: str) -> Moment:
    try:
        return parse_moment(text)
    except ValueError as exc:
        raise InvalidInput(str(exc), where=where) from None


async def fleet_at(call: Call) -> FleetAt:
    q: t.AtQuery = call.query
    return await call.backend.status_at(call.ns, moment(q.at, "at"))


async def why(call: Call) -> Why:
    q: t.WhyQuery = call.query
    node = check_node(call.param("node"))
    return await call.backend.why(call.ns, node, moment(q.at, "at") if q.at else None)


async def diff_fleet(call: Call) -> FleetDiff:
    q: t.FleetDiffQuery = call.query
    after = moment(q.to, "to") if q.to else timedelta(0)
    return await call.backend.diff_fleet(call.ns, moment(q.from_, "from"), after)


def event_item(item: StreamedEvent) -> t.EventItem:
    if item.event is None:
        kind = item.subject.removeprefix("cfg.event.").partition(".")[2]
        raw = item.raw.decode("utf-8", errors="replace")
        return t.EventItem(
            seq=item.seq, subject=item.subject, time=item.time, type=kind, event=None, raw=raw
        )
    return t.EventItem(
        seq=item.seq,
        subject=item.subject,
        time=item.time,
        type=event_type(item.event),
        event=item.event,
    )


def event_filter(text: str) -> str:
    try:
        return subjects.event_filter(text)
    except ValueError as exc:
        raise InvalidInput(str(exc), where="filter") from None


def matcher(q: t.EventsQuery) -> Callable[[StreamedEvent], bool] | None:
    wanted = {
        "txid": q.txid,
        "rollout_id": q.rollout,
        "rollback_id": q.rollback,
    }
    wanted = {k: v for k, v in wanted.items() if v}
    if not wanted and q.version is None:
        return None

    def keep(item: StreamedEvent) -> bool:
        ev = item.event
        if ev is None:
            return False
        if any(getattr(ev, k, None) != v for k, v in wanted.items()):
            return False
        if q.version is None:
            return True
        return q.version in (
            getattr(ev, f, None) for f in ("version", "new_version", "to_version", "from_version")
        )

    return keep


async def read_events(backend: Backend, q: t.EventsQuery) -> list[StreamedEvent]:
    flt = event_filter(q.filter)
    try:
        since = parse_since(q.since) if q.since else None
    except ValueError as exc:
        raise InvalidInput(str(exc), where="since") from None
    return await backend.recent_events(
        flt, limit=q.limit, since=since, from_seq=q.from_seq, keep=matcher(q)
    )


async def events(call: Call) -> t.EventsReply:
    found = await read_events(call.backend, call.query)
    return t.EventsReply(events=[event_item(i) for i in found])


async def event_stream(call: Call) -> Response:
    q: t.StreamQuery = call.query
    flt = event_filter(q.filter)
    from_seq = q.from_seq
    if last_id := call.request.headers.get("last-event-id"):  # EventSource reconnecting
        from_seq = int(last_id) + 1 if last_id.isdigit() else from_seq
    return StreamingResponse(
        sse(call.backend, flt, from_seq, call.request.app.state.metrics),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


async def sse(
    backend: Backend, flt: str, from_seq: int | None, metrics: ConsoleMetrics
) -> AsyncIterator[bytes]:
    """Server-Sent Events. First a ``subscribed`` event, once the consumer exists (from then
    on nothing is missed); then per event ``id`` (the stream sequence: a reconnect resumes
    after it) and ``data`` (the ``EventItem``); a comment now and then keeps proxies from
    closing a quiet stream."""
    send, receive = anyio.create_memory_object_stream[StreamedEvent](256)
    subscribed = anyio.Event()

    async def pump() -> None:
        async with send:
            follow = backend.follow(flt, from_seq=from_seq, on_subscribed=subscribed.set)
            async for item in follow:
                await send.send(item)

    metrics.streams.inc()
    try:
        async with anyio.create_task_group() as tg, receive:
            tg.start_soon(pump)
            await subscribed.wait()
            hello = _json.encode({"type": "subscribed", "filter": flt})
            yield b"event: subscribed\ndata: " + hello + b"\n\n"
            while True:
                with anyio.move_on_after(SSE_KEEPALIVE_S) as idle:
                    item = await receive.receive()
                if idle.cancelled_caught:
                    yield b": keep-alive\n\n"
                    continue
                ev = event_item(item)
                # No "event:" field: an EventSource's onmessage sees only unnamed events (the
                # type is in the data).
                yield f"id: {ev.seq}\ndata: ".encode() + _json.encode(ev) + b"\n\n"
    finally:
        metrics.streams.dec()


# -- acts --------------------------------------------------------------------------------------


async def publish(call: Call) -> VersionInfo:
    request: t.PublishRequest = call.body
    return await call.backend.publish(call.ns, request, author=call.user)


async def dry_run(call: Call) -> store_api.DryRunReply:
    request: t.PublishRequest = call.body
    return await call.backend.dry_run(call.ns, request, author=call.user)


def _version(call: Call) -> int:
    try:
        return msgspec.convert(call.param("version"), VersionNumber, strict=False)
    except msgspec.ValidationError:
        raise InvalidInput(
            f"{call.param('version')!r}: expected a version number", where="version"
        ) from None


async def approve(call: Call) -> VersionInfo:
    return await call.backend.approve(call.ns, _version(call), call.user)


async def reject(call: Call) -> VersionInfo:
    body: t.ActRequest = call.body
    return await call.backend.reject(call.ns, _version(call), call.user, body.reason)


async def set_policy(call: Call) -> Policy:
    # Whatever `confbus policy NS --file` accepts, and nothing else (one check for both).
    return await call.backend.set_policy(policy_from_document(call.body, call.ns), call.user)


def control(op: str) -> Callable[[Call], Awaitable[dist_api.RolloutReply]]:
    async def act(call: Call) -> dist_api.RolloutReply:
        body: t.ActRequest = call.body
        info = await call.backend.rollout_control(op, call.ns, call.user, body.reason)
        return dist_api.RolloutReply(rollout=info)

    return act


async def rollback(call: Call) -> rollback_api.RollbackReply:
    body: t.RollbackRequest = call.body
    return await call.backend.rollback(
        call.ns, call.user, to=body.to, reason=body.reason, strategy=body.strategy
    )


NS = "/namespaces/{ns}"
OPS: tuple[Op, ...] = (
    Op("whoami", "GET", "/whoami", "Who this token is.", "viewer", whoami, t.WhoAmI),
    Op("overview", "GET", "/namespaces", "Every namespace: production, rollout, fleet health.",
       "viewer", overview, t.Overview),
    Op("history", "GET", NS + "/versions", "Versions, newest first, with authors and messages.",
       "viewer", history, store_api.HistoryReply, query=t.HistoryQuery),
    Op("publish", "POST", NS + "/versions", "Publish a change (idempotent by change id).",
       "publisher", publish, VersionInfo, body=t.PublishRequest, status=201,
       errors=(400, 401, 403, 409, 422, 503)),
    Op("publish_dry_run", "POST", NS + "/dry-run",
       "Validate and diff a change as publish would; store nothing.", "publisher", dry_run,
       store_api.DryRunReply, body=t.PublishRequest),
    Op("version", "GET", NS + "/versions/{ref}", "One version's metadata.", "viewer", version,
       VersionInfo),
    Op("content", "GET", NS + "/versions/{ref}/content",
       "A version's exact bytes, or (for, node) those a node runs of it (refused for a secret "
       "namespace).", "viewer", content, bytes, query=t.ForQuery,
       media_type="application/octet-stream"),
    Op("variants", "GET", NS + "/versions/{ref}/variants",
       "A version's overlays in order, the members each matches now, and the variants they run.",
       "viewer", variants, VersionVariants),
    Op("approve", "POST", NS + "/versions/{version}/approve",
       "Approve a draft (someone other than its author).", "operator", approve, VersionInfo,
       errors=(400, 401, 403, 404, 409, 503)),
    Op("reject", "POST", NS + "/versions/{version}/reject", "Refuse a draft for good.",
       "operator", reject, VersionInfo, body=t.ActRequest, errors=(400, 401, 403, 404, 409, 503)),
    Op("diff", "GET", NS + "/diff",
       "Unified diff of two versions, or (for, node) of what a node runs of each (refused for a "
       "secret one).", "viewer", diff, store_api.DiffReply, query=t.DiffQuery),
    Op("policy", "GET", NS + "/policy", "The namespace's policy.", "viewer", policy, Policy),
    Op("set_policy", "PUT", NS + "/policy", "Replace the namespace's policy.", "operator",
       set_policy, Policy, body=Policy, body_checked_by_handler=True),
    Op("rollout", "GET", NS + "/rollout", "The current or last rollout, wave by wave.", "viewer",
       rollout, dist_api.RolloutReply),
    Op("rollout_nodes", "GET", NS + "/rollout/nodes",
       "Each node's vote and apply in the current or last rollout.", "viewer", rollout_nodes,
       t.RolloutNodes),
    *(
        Op(op, "POST", NS + f"/rollout/{op}", f"{op.capitalize()} the running rollout.",
           "operator", control(op), dist_api.RolloutReply, body=t.ActRequest,
           errors=(400, 401, 403, 404, 409, 503))
        for op in ("pause", "resume", "abort")
    ),
    Op("rollback", "POST", NS + "/rollback",
       "Roll back to the last known good or a chosen version, batch by batch.", "operator",
       rollback, rollback_api.RollbackReply, body=t.RollbackRequest, status=202),
    Op("fleet", "GET", NS + "/fleet",
       "Per node: version, sha256, labels, heartbeat, drift, liveness.", "viewer", fleet,
       dist_api.StatusReply),
    Op("fleet_variants", "GET", NS + "/fleet/variants",
       "Per node: which variant of its version its bytes are (the overlays that applied).",
       "viewer", fleet_variants, t.FleetVariants),
    Op("fleet_at", "GET", NS + "/fleet/at",
       "The fleet as it was at a past moment (confbus status --at), from the audit log.",
       "viewer", fleet_at, FleetAt, query=t.AtQuery),
    Op("fleet_diff", "GET", NS + "/fleet/diff",
       "Which nodes changed version between two moments, and through what (diff-fleet).",
       "viewer", diff_fleet, FleetDiff, query=t.FleetDiffQuery),
    Op("why", "GET", NS + "/nodes/{node}/why",
       "The chain of events that put a node on its version, newest first (confbus why).",
       "viewer", why, Why, query=t.WhyQuery),
    Op("events", "GET", "/events", "The audit log, newest first, with confbus replay's filters.",
       "viewer", events, t.EventsReply, query=t.EventsQuery),
    Op("event_stream", "GET", "/events/stream", "The audit log live, as Server-Sent Events.",
       "viewer", event_stream, t.EventItem, query=t.StreamQuery,
       media_type="text/event-stream"),
)  # fmt: skip
