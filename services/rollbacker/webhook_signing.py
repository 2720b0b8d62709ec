"""The signature on every outgoing webhook, so a receiver can tell confbus's posts from anyone's
and refuse an old one replayed.

Header ``Confbus-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``
(the shape Stripe and others use). A receiver recomputes the HMAC with the shared secret
(``confbus rollbacker --webhook-secret-file``), compares in constant time, and refuses a ``t``
more than a few minutes from its own clock — ``verify`` below does all three. Each attempt of a
retried delivery is signed afresh.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Confbus-Signature"
DEFAULT_TOLERANCE_S = 300.0


def _mac(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, body: bytes, now: float | None = None) -> str:
    """The header's value for ``body`` sent now."""
    t = int(time.time() if now is None else now)
    return f"t={t},v1={_mac(secret, t, body)}"


def verify(
    secret: bytes,
    body: bytes,
    header: str,
    now: float | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within ``tolerance_s`` of ``now``."""
    fields = dict(part.partition("=")[::2] for part in header.split(","))
    try:
        t = int(fields.get("t", ""))
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - t) > tolerance_s:
        return False
    return hmac.compare_digest(fields.get("v1", ""), _mac(secret, t, body))
