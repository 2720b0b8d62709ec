"""The error tree every service and the client share.

```
ConfbusError
 ├── Permanent            the message or request can never succeed as it is
 │    ├── InvalidInput    malformed or invalid (a config, a name, a request); says where
 │    ├── Conflict        someone else got there first (a stale --base, a reused change id)
 │    │    ├── Stale      a compare-and-set lost: the key moved on since it was read
 │    │    └── Fenced     a newer lease holder owns it now: stop acting on it
 │    ├── Forbidden       the caller may not do this (an identity it cannot claim, a role)
 │    └── NotFound
 └── Unavailable          retryable: the bus, the store or a peer is down or timed out
```

A consumer decides per error: ``Unavailable`` → nak with backoff; ``Permanent`` → term and
dead-letter with the reason. Request/reply endpoints map them to HTTP-like codes.
"""

from __future__ import annotations


class ConfbusError(Exception):
    """Every error confbus raises: ``message`` says what happened, ``where`` where (a path in a
    config, a field of a request), ``code`` its HTTP-like code on the wire."""

    code = 500

    def __init__(self, message: str, *, where: str = "") -> None:
        self.message = message
        self.where = where
        super().__init__(f"{message} (at {where})" if where else message)


class Permanent(ConfbusError):
    """The message or request can never succeed as it is: do not retry it."""

    code = 400


class InvalidInput(Permanent):
    """Malformed or invalid input (a config, a name, a request); ``where`` says where."""

    code = 400


class Conflict(Permanent):
    """Someone else got there first: a stale ``--base``, a change id reused for other bytes."""

    code = 409


class Stale(Conflict):
    """A compare-and-set lost: the key moved on since it was read (read it again and decide
    again on what is there now)."""


class Fenced(Conflict):
    """A newer holder owns it now (a higher lease epoch, or a write of theirs came first): stop
    acting on it. ``holder`` is who owns it, as far as we know."""

    def __init__(self, message: str, *, holder: str = "") -> None:
        self.holder = holder
        super().__init__(message)


class Forbidden(Permanent):
    """The caller may not do this: it claims an identity (or scope) its subject does not give
    (``confbus.runtime.identity``), or its role does not allow it (the console)."""

    code = 403


class NotFound(Permanent):
    """No such namespace, version, rollout or node."""

    code = 404


class Unavailable(ConfbusError):
    """Retryable: the bus, the store or a peer is down, electing, or did not answer in time."""

    code = 503


def from_code(code: int, message: str, where: str = "") -> ConfbusError:
    """Rebuild the error a remote endpoint raised, from its code."""
    kind: type[ConfbusError] = {
        400: InvalidInput,
        403: Forbidden,
        404: NotFound,
        409: Conflict,
        503: Unavailable,
    }.get(code, ConfbusError)
    return kind(message, where=where)
