"""Backup and restore travel in pages (a namespace's history can be far larger than one
message), but each must be *one* consistent thing: an export is one snapshot of the store, an
import is written all at once or not at all. These sessions hold the snapshot (export) or the
pages received so far (import) between calls — in memory, few, bounded and short-lived.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from confbus.runtime.errors import InvalidInput, NotFound, Unavailable
from confbus.schemas.api.store import ExportedVersion
from confbus.version_store.storage import NamespaceExport


class _OfNamespace(Protocol):
    @property
    def namespace(self) -> str: ...


T = TypeVar("T", bound=_OfNamespace)

MAX_SESSIONS = 8
IDLE_S = 300.0
MAX_IMPORT_BYTES = 512 * 1024 * 1024


class Sessions(Generic[T]):
    """At most ``MAX_SESSIONS`` live sessions; one idle for ``IDLE_S`` is forgotten."""

    def __init__(self, kind: str, limit: int = MAX_SESSIONS, idle_s: float = IDLE_S) -> None:
        self.kind = kind
        self.limit = limit
        self.idle_s = idle_s
        self._items: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s for s, (t, _) in self._items.items() if now - t > self.idle_s]:
            del self._items[sid]

    def new(self, value: T) -> str:
        self._expire()
        if len(self._items) >= self.limit:
            raise Unavailable(
                f"{len(self._items)} {self.kind} sessions are running; try again in a few minutes"
            )
        sid = secrets.token_hex(12)
        self._items[sid] = (time.monotonic(), value)
        return sid

    def get(self, sid: str) -> T:
        self._expire()
        found = self._items.get(sid)
        if found is None:
            raise NotFound(
                f"no {self.kind} session {sid!r} here: it expired (idle over {self.idle_s:.0f}s) "
                "or another replica holds it — start again"
            )
        self._items[sid] = (time.monotonic(), found[1])
        return found[1]

    def of(self, sid: str, namespace: str) -> T:
        """``get``, refusing a session of another namespace than the request names."""
        value = self.get(sid)
        if value.namespace != namespace:
            raise InvalidInput(f"session {sid} {self.kind}s {value.namespace!r}", where="namespace")
        return value

    def drop(self, sid: str) -> None:
        self._items.pop(sid, None)


def page(snapshot: NamespaceExport, offset: int, max_bytes: int) -> list[ExportedVersion]:
    """Versions from ``offset`` whose content fits ``max_bytes`` (always at least one)."""
    if offset < 0 or offset > len(snapshot.versions):
        raise InvalidInput(
            f"offset {offset} is outside 0..{len(snapshot.versions)}", where="offset"
        )
    out: list[ExportedVersion] = []
    size = 0
    for sv in snapshot.versions[offset:]:
        if out and size + len(sv.content) > max_bytes:
            break
        size += len(sv.content)
        out.append(sv)
    return out


@dataclass
class Upload:
    namespace: str
    versions: list[ExportedVersion] = field(default_factory=list)
    size: int = 0

    def add(self, versions: list[ExportedVersion]) -> None:
        self.size += sum(len(v.content) for v in versions)
        if self.size > MAX_IMPORT_BYTES:
            raise InvalidInput(
                f"an import of more than {MAX_IMPORT_BYTES} bytes of content is refused",
                where="versions",
            )
        self.versions.extend(versions)
