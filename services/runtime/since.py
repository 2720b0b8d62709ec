"""How a reader says where in the audit log to start: ``30s``, ``10m``, ``2h``, ``7d`` ago, or an
ISO-8601 time (UTC unless it has an offset) — ``confbus replay --since`` and the console's
timeline take the same words. A moment of the past (``status --at``, ``why``, ``diff-fleet``
and their console routes) is one of those, or a stream sequence."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

# A moment of the past: a stream sequence, a time (every event stored at or before it), or how
# long ago.
Moment = int | datetime | timedelta

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> datetime | timedelta:
    """A duration (how long ago) or an aware time; ``ValueError`` saying what is expected."""
    if m := _DURATION_RE.fullmatch(text.strip()):
        return timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r}: expected a duration (30s, 10m, 2h, 7d) or an ISO-8601 time "
            "(2026-11-26T16:40:00Z)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def parse_moment(text: str) -> Moment:
    """A stream sequence (``1234``), or what ``parse_since`` takes; ``ValueError`` saying what
    is expected."""
    if text.strip().isdigit():
        return int(text)
    try:
        return parse_since(text)
    except ValueError:
        raise ValueError(
            f"{text!r}: expected a duration (30s, 10m, 2h, 7d), an ISO-8601 time "
            "(2026-11-26T16:40:00Z) or a stream sequence (1234)"
        ) from None
