"""Versions as the version-store holds and announces them, for the in-memory stand-ins of the
store in the service tests (``tests/distributor/harness.py``, ``tests/rollbacker/fakes.py``):
JSON content, each version's parent the one before it."""

from __future__ import annotations

import hashlib
from typing import Any

from confbus.schemas.base import utcnow
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.events import VersionCreated
from confbus.schemas.versions import VersionInfo, VersionStatus
from confbus.version_store.changes import created_event


def version_info(
    ns: str,
    version: int,
    content: bytes,
    *,
    change_id: str,
    author: str,
    status: VersionStatus = "approved",
    rollback_of: int | None = None,
) -> VersionInfo:
    """What the store keeps of ``content`` stored as ``version`` of ``ns``."""
    return VersionInfo(
        namespace=ns,
        version=version,
        sha256=hashlib.sha256(content).hexdigest(),
        size=len(content),
        format="json",
        parent=version - 1 or None,
        author=author,
        message="",
        change_id=change_id,
        created_at=utcnow(),
        status=status,
        rollback_of=rollback_of,
    )


def created(info: VersionInfo, content: bytes, **rollout: Any) -> VersionCreated:
    """The ``version.created`` the version-store emits for ``info``, stored from ``content``
    proposed with ``rollout`` (its strategy and selector)."""
    change = ChangeProposed(
        namespace=info.namespace, change_id=info.change_id, content=content, **rollout
    )
    return created_event(change, info)
