"""The web console: server-rendered pages (Jinja2, autoescaped) over the same backend as the
API, and the acts a signed-in user confirms on them.

Live parts of a page (a rollout's nodes, the fleet, the timeline) are fragments the page's
script fetches again whenever the audit log has a new event for them (Server-Sent Events from
``/api/v1/events/stream``): no reload, and without JavaScript the page is still whole. An act
is a form post with the page's CSRF token; without ``confirm=yes`` (the script's dialog sets
it) it answers with a page asking to confirm, so every act is confirmed, script or not.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote

import anyio
import jinja2
import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from confbus.client import check_namespace, check_node
from confbus.console import apitypes as t
from confbus.console.api import decode_error, moment, read_events
from confbus.console.auth import (
    COOKIE,
    CSRF_FIELD,
    LOGIN_COOKIE,
    LOGIN_FIELD,
    Principal,
    Unauthenticated,
    authenticate,
    check_csrf,
    check_login,
    login_nonce,
    require,
)
from confbus.console.backend import Backend
from confbus.console.metrics import ConsoleMetrics
from confbus.runtime.errors import ConfbusError, InvalidInput
from confbus.schemas.api import dist as dist_api
from confbus.schemas.api.store import VersionRef
from confbus.schemas.names import VersionNumber
from confbus.schemas.variants import BASE, has_variants

SESSION_S = 12 * 3600
LOGIN_S = 15 * 60  # how long a sign-in page's nonce is good for
PAGE = 100  # versions per history page unless ?limit= says otherwise
ACTIONS = ("approve", "reject", "pause", "resume", "abort", "rollback")

Handler = Callable[
    [Request, Principal, Backend], Awaitable["tuple[str, dict[str, Any]] | Response"]
]


class Pages:
    def __init__(self, env: jinja2.Environment, metrics: ConsoleMetrics) -> None:
        self.env = env
        self.metrics = metrics

    def routes(self) -> list[Route]:
        page = self.page
        return [
            Route("/", page("overview", overview), methods=["GET"]),
            Route("/fleet", page("fleet_all", fleet_all), methods=["GET"]),
            Route("/timeline", page("timeline", timeline), methods=["GET"]),
            Route("/ns/{ns}", page("namespace", namespace), methods=["GET"]),
            Route("/ns/{ns}/v/{ref}", page("version", version), methods=["GET"]),
            Route("/ns/{ns}/diff", page("diff", diff), methods=["GET"]),
            Route("/ns/{ns}/rollout", page("rollout", rollout), methods=["GET"]),
            Route("/ns/{ns}/fleet", page("fleet", fleet), methods=["GET"]),
            Route("/ns/{ns}/why/{node}", page("why", why), methods=["GET"]),
            Route("/ns/{ns}/act/{action}", page("act", act), methods=["POST"]),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
        ]

    def render(self, request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        principal = ctx.pop("principal", None)
        html = self.env.get_template(name).render(
            request=request,
            principal=principal,
            csrf=principal.csrf if principal is not None else "",
            notice=request.query_params.get("notice", ""),
            **ctx,
        )
        return HTMLResponse(html, status_code=status)

    def page(self, route: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            started = anyio.current_time()
            response = await self._handle(request, handler)
            self.metrics.observe(route, response.status_code, anyio.current_time() - started)
            return response

        return handle

    async def _handle(self, request: Request, handler: Handler) -> Response:
        try:
            principal = authenticate(request, request.app.state.tokens)
        except Unauthenticated as exc:
            if request.method != "GET":
                return self.render(request, "error.html", 401, error=exc)
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if COOKIE not in request.cookies:
                return RedirectResponse(f"/login?next={quote(here)}", status_code=303)
            # A session whose token expired or was revoked: say so, and sign in again here.
            response = self.login_page(request, _local(here), exc)
            response.delete_cookie(COOKIE)
            return response
        try:
            if "ns" in request.path_params:
                check_namespace(request.path_params["ns"])
            started = time.perf_counter()
            result = await handler(request, principal, request.app.state.backend)
            asked = time.perf_counter()
        except ConfbusError as exc:
            return self.render(request, "error.html", exc.code, error=exc, principal=principal)
        if isinstance(result, Response):
            return result
        name, ctx = result
        response = self.render(request, name, principal=principal, **ctx)
        # What the page cost: waiting on the bus, and building the HTML (Server-Timing: the
        # browser's developer tools show it, and the benchmark reads it).
        bus_ms, render_ms = (asked - started) * 1000, (time.perf_counter() - asked) * 1000
        response.headers["server-timing"] = f"bus;dur={bus_ms:.1f}, render;dur={render_ms:.1f}"
        return response

    # -- signing in and out ------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        """The sign-in page (GET), and signing in (POST from that page: its nonce, a token)."""
        if request.method == "GET":
            target = _local(request.query_params.get("next", "/"))
            if request.query_params.get("token"):
                # A GET that signs in is login CSRF, and a token in the query stays in the
                # history and the logs: the link carries it after '#', which no request sends.
                refused = InvalidInput(
                    "a token in the address is not accepted: paste it here (sign-in links "
                    "carry it after '#')",
                    where="token",
                )
                return self.login_page(request, target, refused)
            return self.login_page(request, target)
        form = await _form(request)
        target = _local(form.get("next", "/"))
        token = form.get("token", "").strip()
        try:
            check_login(request, form.get(LOGIN_FIELD))
            if not token:
                raise Unauthenticated("enter a token", where="token")
            record = request.app.state.tokens.check(token)
        except ConfbusError as exc:
            return self.login_page(request, target, exc)
        session_s = SESSION_S
        if record.expires_at is not None:  # the cookie goes when the token does
            left = (record.expires_at - datetime.now(UTC)).total_seconds()
            session_s = max(1, min(session_s, int(left)))
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, token, max_age=session_s, **_cookie_flags(request))
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    def login_page(
        self, request: Request, target: str, error: ConfbusError | None = None
    ) -> HTMLResponse:
        """The sign-in form, with a new nonce in a hidden field and in a cookie of its own."""
        nonce = login_nonce()
        status = error.code if error is not None else 200
        response = self.render(
            request, "login.html", status, target=target, error=error, nonce=nonce
        )
        response.set_cookie(
            LOGIN_COOKIE, nonce, max_age=LOGIN_S, path="/login", **_cookie_flags(request)
        )
        return response

    async def logout(self, request: Request) -> Response:
        try:
            principal = authenticate(request, request.app.state.tokens)
            check_csrf(request, principal, (await _form(request)).get(CSRF_FIELD))
        except ConfbusError as exc:
            return self.render(request, "error.html", exc.code, error=exc)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response


# -- reading ------------------------------------------------------------------------------------


async def overview(
    request: Request, who: Principal, backend: Backend
) -> tuple[str, dict[str, Any]]:
    return "overview.html", {"rows": await backend.overview()}


async def namespace(
    request: Request, who: Principal, backend: Backend
) -> tuple[str, dict[str, Any]]:
    ns = request.path_params["ns"]
    q = _convert(dict(request.query_params), t.HistoryQuery, {"limit": PAGE})
    policy = await backend.policy(ns)
    page = await backend.history(ns, limit=q.limit, before=q.before)
    policy_json = msgspec.json.format(msgspec.json.encode(policy)).decode()
    return "namespace.html", {
        "ns": ns,
        "policy": policy,
        "policy_json": policy_json,
        "page": page,
        "query": q,
    }


async def version(request: Request, who: Principal, backend: Backend) -> tuple[str, dict[str, Any]]:
    """A version; with overlays, also its overlays and variants, and the bytes of the variant
    asked for (``?node=`` or ``?for=``; else the base's)."""
    ns = request.path_params["ns"]
    ref = _convert(request.path_params["ref"], VersionRef, where="ref")
    q = _convert(_given(request), t.ForQuery)
    info = await backend.version(ns, ref)
    secret = await backend.secret(ns)
    ctx: dict[str, Any] = {"ns": ns, "info": info, "secret": secret, "query": q, "text": None}
    if secret:
        return "version.html", ctx
    content = (await backend.content(ns, str(info.version))).content or b""
    if has_variants(content):
        variants = await backend.version_variants(ns, str(info.version))
        labels = await backend.labels_for(ns, q.for_, q.node) or {}
        _, shown = await backend.rendered(ns, str(info.version), labels)
        content = shown.content
        members = sorted({n for v in variants.variants for n in v.nodes})
        ctx.update(variants=variants, shown=shown, members=members)
    ctx["text"] = content.decode("utf-8", errors="replace")
    return "version.html", ctx


async def diff(request: Request, who: Principal, backend: Backend) -> tuple[str, dict[str, Any]]:
    ns = request.path_params["ns"]
    q = _convert(_given(request), t.DiffQuery)
    await backend.known(ns)
    secret = await backend.secret(ns)
    labels = await backend.labels_for(ns, q.for_, q.node)
    reply = None if secret else await backend.diff(ns, q.a, q.b, labels)
    return "diff.html", {"ns": ns, "query": q, "secret": secret, "reply": reply}


def _given(request: Request) -> dict[str, str]:
    """The query's parameters that have a value (a form sends its empty fields too)."""
    return {k: v for k, v in request.query_params.items() if v}


async def rollout(request: Request, who: Principal, backend: Backend) -> tuple[str, dict[str, Any]]:
    ns = request.path_params["ns"]
    view = await backend.rollout_view(ns)
    name = "rollout_live.html" if request.query_params.get("part") == "live" else "rollout.html"
    return name, {"ns": ns, "view": view, "bake": _bake(view.rollout)}


async def fleet(request: Request, who: Principal, backend: Backend) -> tuple[str, dict[str, Any]]:
    """A namespace's fleet now, or (``?at=``) as it was at a past moment; the full page also
    has the slider over the audit log's sequences that picks the moment."""
    ns = request.path_params["ns"]
    at = request.query_params.get("at", "")
    ctx: dict[str, Any] = {"ns": ns, "fleets": [], "past": None, "variants": {}}
    if at:
        ctx["past"] = await backend.status_at(ns, moment(at, "at"))
    else:
        ctx["fleets"] = [await backend.fleet(ns)]
        ctx["variants"] = await _variants(backend, ctx["fleets"])
    if request.query_params.get("part") == "live":
        return "fleet_live.html", ctx
    first, last = await backend.moments()
    return "fleet.html", {**ctx, "at": at, "first": first, "last": last}


async def why(request: Request, who: Principal, backend: Backend) -> tuple[str, dict[str, Any]]:
    ns = request.path_params["ns"]
    node = check_node(request.path_params["node"])
    at = request.query_params.get("at", "")
    answer = await backend.why(ns, node, moment(at, "at") if at else None)
    return "why.html", {"ns": ns, "why": answer, "at": at}


async def fleet_all(
    request: Request, who: Principal, backend: Backend
) -> tuple[str, dict[str, Any]]:
    names = await backend.namespaces()
    fleets: dict[str, dist_api.StatusReply] = {}

    async def one(ns: str) -> None:
        fleets[ns] = await backend.fleet(ns)

    async with anyio.create_task_group() as tg:
        for ns in names:
            tg.start_soon(one, ns)
    name = "fleet_live.html" if request.query_params.get("part") == "live" else "fleet.html"
    shown = [fleets[ns] for ns in names]
    variants = await _variants(backend, shown)
    return name, {"ns": None, "fleets": shown, "past": None, "variants": variants}


async def _variants(
    backend: Backend, fleets: list[dist_api.StatusReply]
) -> dict[str, dict[str, str | None]]:
    """Per namespace, the variant each node runs; only namespaces where some node runs a
    version with overlays (the others' pages show no variant column)."""
    out: dict[str, dict[str, str | None]] = {}
    for f in fleets:
        named = await backend.fleet_variants(f)
        if any(v not in (None, BASE) for v in named.values()):
            out[f.namespace] = named
    return out


async def timeline(
    request: Request, who: Principal, backend: Backend
) -> tuple[str, dict[str, Any]]:
    params = {k: v for k, v in request.query_params.items() if v and k != "part"}
    q = _convert(params, t.EventsQuery)
    items = await read_events(backend, q)
    name = "timeline_live.html" if request.query_params.get("part") == "live" else "timeline.html"
    return name, {"items": items, "query": q, "params": params}


def _bake(rollout: dist_api.RolloutInfo | None) -> str:
    """When the bake under way ends (ISO time), for the countdown; "" when none is."""
    if rollout is None or not rollout.active or rollout.bake_s <= 0:
        return ""
    for wave in rollout.waves:
        if wave.state == "baking" and wave.committed_at is not None:
            return (wave.committed_at + timedelta(seconds=rollout.bake_s)).isoformat()
    return ""


# -- acting ---------------------------------------------------------------------------------------


async def act(
    request: Request, who: Principal, backend: Backend
) -> tuple[str, dict[str, Any]] | Response:
    ns = request.path_params["ns"]
    action = request.path_params["action"]
    form = await _form(request)
    check_csrf(request, who, form.get(CSRF_FIELD))
    if action not in ACTIONS:
        raise InvalidInput(f"no action {action!r} (known: {', '.join(ACTIONS)})", where="action")
    require(who, "operator", action)
    target = _local(form.get("next", f"/ns/{ns}"))
    reason = form.get("reason", "")
    number = (
        _convert(form["version"], VersionNumber, where="version") if form.get("version") else None
    )
    if form.get("confirm") != "yes":
        return "confirm.html", {"ns": ns, "action": action, "form": form, "version": number}
    await backend.known(ns)
    if action in ("approve", "reject"):
        if number is None:
            raise InvalidInput(f"{action} needs a version", where="version")
        if action == "approve":
            info = await backend.approve(ns, number, who.user)
        else:
            info = await backend.reject(ns, number, who.user, reason)
        notice = f"{ns} v{info.version} is {info.status}"
    elif action == "rollback":
        reply = await backend.rollback(ns, who.user, to=number, reason=reason)
        notice = f"rollback of {ns} to v{reply.to_version} {reply.state} ({reply.rollback_id})"
    else:
        info_r = await backend.rollout_control(action, ns, who.user, reason)
        notice = f"rollout of {ns} v{info_r.version} is {info_r.state}"
    sep = "&" if "?" in target else "?"
    return RedirectResponse(f"{target}{sep}notice={quote(notice)}", status_code=303)


# -- helpers --------------------------------------------------------------------------------------


async def _form(request: Request) -> dict[str, str]:
    """An url-encoded form's fields (the console's forms have no files)."""
    body = await request.body()
    if len(body) > 64 * 1024:
        raise InvalidInput("the form is too large", where="form")
    parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


def _cookie_flags(request: Request) -> dict[str, Any]:
    return {"httponly": True, "samesite": "strict", "secure": request.url.scheme == "https"}


def _local(target: str) -> str:
    """Only a path of this console: never an open redirect to another site."""
    # "//host" and "/\\host" are other sites to a browser.
    local = target.startswith("/") and not target.startswith(("//", "/\\"))
    return target if local else "/"


def _convert(
    value: Any, kind: Any, defaults: dict[str, Any] | None = None, where: str = "query"
) -> Any:
    if defaults and isinstance(value, dict):
        value = {**defaults, **value}
    try:
        return msgspec.convert(value, kind, strict=False)
    except msgspec.ValidationError as exc:
        err = decode_error(exc, where)
        raise InvalidInput(
            err.message, where=err.where if err.where != "query" else where
        ) from None
