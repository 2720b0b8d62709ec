"""Who is asking, and may they: tokens, the session cookie, roles and CSRF.

A request proves who it is with a token (``confbus.schemas.tokens``): the HTTP API's callers
send ``Authorization: Bearer <token>``; a browser signs in once (``/login``, from the link
``confbus up`` prints) and then carries the token in an HttpOnly, SameSite=Strict cookie.
The token file is read again when it changes, so a new or revoked token counts at once; a token
past its ``expires_at`` is refused with that reason.

Signing in is a POST from the sign-in page itself: the link carries the token after ``#``
(which no request sends), the page's script posts it, and the post must bring the nonce the page
set in a SameSite=Strict cookie (``LOGIN_COOKIE``), so another site cannot sign a browser in
under a token of its choosing (login CSRF).

An act that arrives with the cookie must also carry the page's CSRF token (a form field or the
``X-CSRF-Token`` header): an HMAC of the session token that only a page of this console shows,
so another site that makes the browser post here cannot supply it. A request that brings its
token in a header needs none (a browser never adds that header on its own).

```
ConfbusError
 └── Permanent
      ├── Unauthenticated   401: no token, one this console does not know, or an expired one
      └── Forbidden         403: the role does not allow it, or the CSRF token is missing
```
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

from starlette.requests import Request

from confbus.runtime.errors import Permanent
from confbus.runtime.identity import Forbidden
from confbus.schemas import tokens

log = logging.getLogger("confbus.console.auth")

COOKIE = "confbus_session"
LOGIN_COOKIE = "confbus_login"  # the sign-in page's nonce
LOGIN_FIELD = "login_nonce"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Unauthenticated(Permanent):
    code = 401


@dataclass(frozen=True)
class Principal:
    user: str
    role: tokens.Role
    token_id: str
    session: str  # the token's text: what the CSRF token is derived from
    by_cookie: bool  # a browser session (acts need the CSRF token)

    def may(self, role: tokens.Role) -> bool:
        return tokens.at_least(self.role, role)

    @property
    def csrf(self) -> str:
        return csrf_token(self.session)


def csrf_token(session: str) -> str:
    return hmac.new(session.encode(), b"confbus-console-csrf", hashlib.sha256).hexdigest()


class TokenStore:
    """The tokens file, re-read whenever it changes (size and mtime)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._by_id: dict[str, tokens.ConsoleToken] = {}

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._by_id = None, {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            parsed = tokens.decode_token_file(self.path.read_bytes())
        except (OSError, ValueError, RecursionError) as exc:  # msgspec's errors are ValueErrors
            # Keep the last good set: a half-written file must not sign everyone out.
            log.error(
                "cannot read the tokens file", extra={"path": str(self.path), "error": str(exc)}
            )
            return
        self._stamp = stamp
        self._by_id = {t.id: t for t in parsed.tokens}

    def lookup(self, text: str) -> tokens.ConsoleToken | None:
        parts = tokens.split(text)
        if parts is None:
            return None
        self._refresh()
        record = self._by_id.get(parts[0])
        if record is None or not tokens.matches(record, parts[1]):
            return None
        return record

    def check(self, text: str) -> tokens.ConsoleToken:
        """The token's record if it may be used now; ``Unauthenticated`` saying why not."""
        record = self.lookup(text)
        if record is None:
            raise Unauthenticated("unknown or revoked token", where="token")
        if record.expires_at is not None and tokens.expired(record):
            when = record.expires_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise Unauthenticated(
                f"token {record.id} of {record.user} expired at {when}: ask for a new one "
                "(confbus console token)",
                where="token",
            )
        return record


def authenticate(request: Request, store: TokenStore) -> Principal:
    """The caller, from ``Authorization: Bearer`` or the session cookie; ``Unauthenticated``."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    by_cookie = not header
    if header and scheme.lower() != "bearer":
        raise Unauthenticated("expected 'Authorization: Bearer <token>'", where="authorization")
    text = value.strip() if header else request.cookies.get(COOKIE, "")
    if not text:
        raise Unauthenticated(
            "sign in: a token is needed (confbus console token --role viewer)", where="token"
        )
    record = store.check(text)
    return Principal(record.user, record.role, record.id, text, by_cookie)


def require(principal: Principal, role: tokens.Role, what: str) -> None:
    if not principal.may(role):
        raise Forbidden(
            f"{what} needs the {role} role; {principal.user} is a {principal.role}", where="role"
        )


def check_csrf(request: Request, principal: Principal, form_value: str | None) -> None:
    """An act by a browser session must carry the page's CSRF token and come from this
    console's own pages (``Origin``, when the browser sends it)."""
    if request.method in SAFE_METHODS or not principal.by_cookie:
        return
    check_origin(request)
    sent = request.headers.get(CSRF_HEADER) or form_value or ""
    if not hmac.compare_digest(sent, principal.csrf):
        raise Forbidden(
            "missing or wrong CSRF token: act from the console's own pages", where="csrf"
        )


def check_origin(request: Request) -> None:
    """``Origin``, when the browser sends it, must be this console's."""
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.url.netloc}"
    if origin is not None and origin != own:
        raise Forbidden(f"cross-site request from {origin} refused", where="origin")


def login_nonce() -> str:
    """A new nonce for the sign-in page: its form field and its cookie."""
    return secrets.token_urlsafe(24)


def check_login(request: Request, form_value: str | None) -> None:
    """A sign-in must come from the sign-in page: this console's ``Origin`` and the nonce that
    page set, in its cookie and its form alike (a cross-site post carries no SameSite=Strict
    cookie)."""
    check_origin(request)
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie, form_value or ""):
        raise Forbidden(
            "sign in from the console's own sign-in page (its nonce is missing or stale)",
            where="login_nonce",
        )
