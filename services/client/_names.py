"""Names checked before anything is sent: what the stream would only dead-letter, refused with
a clear ``InvalidInput`` instead."""

from __future__ import annotations

import re

from confbus.runtime.errors import InvalidInput
from confbus.schemas.names import CHANGE_ID_PATTERN, InvalidName, check_name

_CHANGE_ID_RE = re.compile(CHANGE_ID_PATTERN)


def check_namespace(namespace: str) -> str:
    """``namespace`` if it can be one (``[a-z0-9][a-z0-9_-]{0,63}``), else ``InvalidInput``."""
    try:
        return check_name(namespace, "namespace")
    except InvalidName as exc:
        raise InvalidInput(str(exc), where="namespace") from None


def check_node(node: str) -> str:
    """``node`` if it can be a node id (``[a-z0-9][a-z0-9_-]{0,63}``), else ``InvalidInput``."""
    try:
        return check_name(node, "node id")
    except InvalidName as exc:
        raise InvalidInput(str(exc), where="node") from None


def check_change_id(change_id: str) -> str:
    """``change_id`` if it can be one (a commit sha, a build id…), else ``InvalidInput``."""
    if not _CHANGE_ID_RE.fullmatch(change_id):
        raise InvalidInput(
            f"invalid change id {change_id!r}: letters, digits and ._:@+- (up to 128, starting "
            "with a letter or digit)",
            where="change_id",
        )
    return change_id
