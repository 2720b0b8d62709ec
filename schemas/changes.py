"""``CFG_CHANGES``: change proposals from CI and operators, on ``cfg.change.<ns>``.

The message id is ``<namespace>:<change_id>``, so a CI retry is a no-op for the stream, and
the version-store maps the same id to the same version (and the same id with other bytes
to a clear rejection). A retry the stream takes as a duplicate is answered from the
version-store's record of the change; a recorded rejection answers it only while the policy
that rejected it is in force. After a policy change the change is sent again under
``<namespace>:<change_id>@<policy digest>`` and judged afresh (``msg_id``).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from confbus.schemas.base import LazyDecoder, Message
from confbus.schemas.names import MAX_INT, ChangeId, Format, Label, Namespace, VersionNumber
from confbus.schemas.signing import Signature


class ChangeProposed(Message, tag="change.proposed", kw_only=True, frozen=True):
    namespace: Namespace
    change_id: ChangeId
    content: bytes
    format: Format | None = None  # None: the namespace policy's format
    author: str = ""
    message: str = ""
    # Refuse unless this is the namespace's newest version (0: unless the namespace is empty).
    base: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)] | None = None
    rollback_of: VersionNumber | None = None
    strategy: str | None = None  # overrides the policy's rollout strategy for this version
    selector: dict[Label, Label] | None = None
    # Authors' signatures (for version ``base + 1``); a rollback's carry the restored version's
    # and the rollbacker's (confbus.schemas.signing).
    signatures: list[Signature] = []


ChangeMessage = ChangeProposed
decode_change: LazyDecoder[ChangeMessage] = LazyDecoder(ChangeMessage)


def msg_id(namespace: str, change_id: str, judged_under: str = "") -> str:
    """The stream's message id of a change; ``judged_under`` (a policy digest) when it is sent
    again because the rejection recorded for it came from a policy since replaced."""
    base = f"{namespace}:{change_id}"
    return f"{base}@{judged_under}" if judged_under else base
