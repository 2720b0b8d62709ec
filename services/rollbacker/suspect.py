"""A version that passed its bake stays *suspect* for the policy's ``rollback.window_s`` after
it became production (docs/design.md §6.4): an alert about it in that window rolls it back even
though it is the last known good — to the last known good *before* it, and it loses its mark.

The version-store keeps one last-good pointer; what it pointed at before is in the audit log,
the namespace's ``version.last_good`` events. The newest mark of a version older than the
suspect one is the one to go back to: a mark that was taken away was followed by a newer
event re-marking an older version, so walking the marks newest first never lands on it.
"""

from __future__ import annotations

from confbus.runtime.bus import Bus
from confbus.runtime.events import read_events
from confbus.schemas import subjects
from confbus.schemas.events import VersionLastGood


async def good_before(bus: Bus, namespace: str, version: int) -> int | None:
    """The version that was the last known good before ``version`` got the mark, if any."""
    marks = await read_events(bus, subjects.event(namespace, "version.last_good"))
    for ev in reversed(marks):
        if isinstance(ev, VersionLastGood) and ev.version < version:
            return ev.version
    return None


def revoke_reason(suspect: int, reason: str) -> str:
    """What the audit log says when the suspect version loses its mark."""
    return f"v{suspect} lost its last-known-good mark: {reason}"[:1000]
