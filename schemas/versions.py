"""What the version-store knows about one version."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from confbus.schemas.names import ChangeId, Format, Namespace, Sha256

VersionStatus = Literal["draft", "approved", "production", "superseded", "rejected"]
VERSION_STATUSES: tuple[VersionStatus, ...] = (
    "draft",
    "approved",
    "production",
    "superseded",
    "rejected",
)


class VersionInfo(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    version: int
    sha256: Sha256
    size: int
    format: Format
    parent: int | None
    author: str
    message: str
    change_id: ChangeId
    created_at: datetime
    status: VersionStatus
    rollback_of: int | None = None
    approved_by: str | None = None
    last_good: bool = False
