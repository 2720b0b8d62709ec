"""Who is asking, and may they: tokens, the session cookie, roles and CSRF.

A request proves who it is with a token (``confbus.schemas.tokens``): the HTTP API's callers
send ``Authorization: Bearer <token>``; a browser signs in once (``/login``, from the link
``confbus up`` prints) and then carries the token in an HttpOnly, SameSite=Strict cookie.
The token file is read again when it changes, so a new or revoked token counts at once.

An act that arrives with the cookie must also carry the page's CSRF token (a form field or the
``X-CSRF-Token`` header): an HMAC of the session token that only a page of this console shows,
so another site that makes the browser post here cannot supply it. A request that brings its
token in a header needs none (a browser never adds that header on its own).

```
ConfbusError
 └── Permanent
      ├── Unauthenticated   401: no token, or one this console does not know
      └── Forbidden         403: the role does not allow it, or the CSRF token is missing
```
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request

from confbus.runtime.errors import Permanent
from confbus.runtime.identity import Forbidden
from confbus.schemas import tokens

log = logging.getLogger("confbus.console.auth")

COOKIE = "confbus_session"
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
    record = store.lookup(text)
    if record is None:
        raise Unauthenticated("unknown or revoked token", where="token")
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
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.url.netloc}"
    if origin is not None and origin != own:
        raise Forbidden(f"cross-site request from {origin} refused", where="origin")
    sent = request.headers.get(CSRF_HEADER) or form_value or ""
    if not hmac.compare_digest(sent, principal.csrf):
        raise Forbidden(
            "missing or wrong CSRF token: act from the console's own pages", where="csrf"
        )
