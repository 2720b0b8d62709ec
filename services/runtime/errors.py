"""The error tree every service and the client share.

```
ConfbusError
 ├── Permanent            the message or request can never succeed as it is
 │    ├── InvalidInput    malformed or invalid (a config, a name, a request); says where
 │    ├── Conflict        someone else got there first (a stale --base, a reused change id)
 │    └── NotFound
 └── Unavailable          retryable: the bus, the store or a peer is down or timed out
```

A consumer decides per error: ``Unavailable`` → nak with backoff; ``Permanent`` → term and
dead-letter with the reason. Request/reply endpoints map them to HTTP-like codes.
"""

from __future__ import annotations


class ConfbusError(Exception):
    code = 500

    def __init__(self, message: str, *, where: str = "") -> None:
        self.message = message
        self.where = where
        super().__init__(f"{message} (at {where})" if where else message)


class Permanent(ConfbusError):
    code = 400


class InvalidInput(Permanent):
    code = 400


class Conflict(Permanent):
    code = 409


class NotFound(Permanent):
    code = 404


class Unavailable(ConfbusError):
    code = 503


def from_code(code: int, message: str, where: str = "") -> ConfbusError:
    """Rebuild the error a remote endpoint raised, from its code."""
    kind: type[ConfbusError] = {
        400: InvalidInput,
        404: NotFound,
        409: Conflict,
        503: Unavailable,
    }.get(code, ConfbusError)
    return kind(message, where=where)
