"""The console's access tokens: what ``confbus console token`` writes and the console reads.

A token is ``cbt_<id>_<secret>``. The file keeps only the secret's sha256, with the token's
user and role (and, if it has one, when it expires); it lives at
``<data-dir>/console/tokens.json`` (mode 0600, in a 0700 folder) unless the console is given
another ``--tokens-file``. The roles follow the ones of
``confbus up --secure`` (docs/security.md): a ``viewer`` reads, a ``publisher`` (the console's
``ci``) also proposes changes, an ``operator`` also acts — approve, reject, policy, pause,
resume, abort, rollback.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from confbus.schemas.base import LazyDecoder, utcnow
from confbus.schemas.names import NAME_PATTERN

Role = Literal["viewer", "publisher", "operator"]
ROLES: tuple[Role, ...] = ("viewer", "publisher", "operator")  # each may do all the one before may
TOKENS_FILE = ("console", "tokens.json")  # under the data directory
PREFIX = "cbt"

User = Annotated[
    str, msgspec.Meta(pattern=NAME_PATTERN, description="who acts: [a-z0-9][a-z0-9_-]{0,63}")
]
TokenId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{12}$")]


class ConsoleToken(msgspec.Struct, frozen=True, kw_only=True):
    id: TokenId
    user: User
    role: Role
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]  # of the secret
    created_at: datetime = msgspec.field(default_factory=utcnow)
    label: str = ""  # what it is for ("confbus up" marks the login link's)
    expires_at: datetime | None = None  # refused from then on; None: until revoked


class TokenFile(msgspec.Struct, kw_only=True):
    tokens: list[ConsoleToken] = []


decode_token_file: LazyDecoder[TokenFile] = LazyDecoder(TokenFile)
encode_token_file = msgspec.json.Encoder().encode


def at_least(role: Role, needed: Role) -> bool:
    """Whether ``role`` may do what ``needed`` may."""
    return ROLES.index(role) >= ROLES.index(needed)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(
    user: str, role: Role, label: str = "", expires_at: datetime | None = None
) -> tuple[str, ConsoleToken]:
    """A new token's text (shown once, never stored) and its record."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    record = ConsoleToken(
        id=token_id,
        user=user,
        role=role,
        sha256=digest(secret),
        label=label,
        expires_at=expires_at,
    )
    return f"{PREFIX}_{token_id}_{secret}", record


def split(text: str) -> tuple[str, str] | None:
    """(id, secret) of a token's text, or None if it is not one."""
    prefix, _, rest = text.strip().partition("_")
    token_id, _, secret = rest.partition("_")
    if prefix != PREFIX or len(token_id) != 12 or not secret:
        return None
    return token_id, secret


def matches(record: ConsoleToken, secret: str) -> bool:
    return hmac.compare_digest(record.sha256, digest(secret))


def expired(record: ConsoleToken, now: datetime | None = None) -> bool:
    return record.expires_at is not None and (now or utcnow()) >= record.expires_at
