"""Who is calling: the NATS user, pinned into the request subject by server permissions.

NATS never tells a subscriber who published a message, and anything in a body or header is
whatever the sender wrote. What the server *does* enforce is which subjects a user may publish
to. So an operation that records who acted has a second subject whose **last token is the
caller's NATS user**, and the generated permissions (``confbus.cli.security``) let each user
publish only to the subjects that end in its own name:

```
cfg.api.store.approve              body says approver=…   (self-declared: services only, once
                                                           authentication is on)
cfg.api.store.approve.<user>       the server let <user>, and only <user>, publish here
cfg.api.store.propose.<ns>.<user>  a change of <ns>, authored by <user>
```

An operation served on such a subject (``store.APPROVE_AS``, subject ``approve.*``; a client
names it with ``APPROVE_AS.as_user(user)``) reads the caller with ``pinned_identity()`` and the
tokens before it with ``pinned_scope()``; the runtime binds the subject of the request being
handled (``bind_subject``) before it calls the handler. Without
authentication nothing stops anyone from publishing on ``approve.alice`` — the pinned subjects
add nothing there, and the plain ones keep working as before.

```
ConfbusError
 └── Permanent
      └── Forbidden      403: the request claims an identity (or scope) the subject does not give
```
"""

from __future__ import annotations

import contextvars
from typing import TypeVar

import msgspec

from confbus.runtime.errors import Forbidden
from confbus.schemas.names import InvalidName, check_name

S = TypeVar("S", bound=msgspec.Struct)

# The subject of the request being handled (set by services.runtime.api for each request).
_subject: contextvars.ContextVar[str] = contextvars.ContextVar(
    "confbus_request_subject", default=""
)


def bind_subject(subject: str) -> contextvars.Token[str]:
    """Record the subject the current request arrived on (the runtime calls this)."""
    return _subject.set(subject)


def unbind_subject(token: contextvars.Token[str]) -> None:
    _subject.reset(token)


def request_subject() -> str:
    return _subject.get()


def pinned_identity() -> str:
    """The caller's NATS user: the last token of the request's subject.

    ``Forbidden`` when the request did not come on a pinned subject, or the token is not a
    name (a permission could only ever pin a name).
    """
    tokens = _subject.get().split(".")
    if len(tokens) < 2 or not tokens[-1]:
        raise Forbidden("this operation needs the caller's identity in the subject")
    try:
        return check_name(tokens[-1], "identity")
    except InvalidName as exc:
        raise Forbidden(str(exc)) from None


def pinned_scope(count: int) -> list[str]:
    """The ``count`` tokens just before the identity (``propose.<ns>.<user>`` → ``[ns]``)."""
    tokens = _subject.get().split(".")
    if len(tokens) < count + 2:
        raise Forbidden(f"expected {count} scope token(s) before the identity in the subject")
    return tokens[-1 - count : -1]


def claim(field: str, claimed: str, caller: str) -> str:
    """The identity to record: the caller's. A body that names someone else is refused, so that
    ``--as bob`` with Alice's credentials fails loudly instead of quietly acting as Alice."""
    if claimed and claimed != caller:
        raise Forbidden(
            f"{field} {claimed!r} is not the caller: this connection is NATS user {caller!r}",
            where=field,
        )
    return caller


def as_caller(request: S, field: str = "actor") -> S:
    """``request`` with its ``field`` (who acts) the caller pinned in the subject, after
    ``claim``: what each ``…_as`` operation does before the plain one."""
    who = claim(field, getattr(request, field), pinned_identity())
    return msgspec.structs.replace(request, **{field: who})


def is_identity(name: str) -> bool:
    """Whether a NATS user name can be pinned into a subject token."""
    try:
        check_name(name, "identity")
    except InvalidName:
        return False
    return True


__all__ = [
    "Forbidden",
    "as_caller",
    "bind_subject",
    "claim",
    "is_identity",
    "pinned_identity",
    "pinned_scope",
    "request_subject",
    "unbind_subject",
]
