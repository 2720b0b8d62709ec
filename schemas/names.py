"""Constrained identifiers.

NATS does not validate subject tokens, so we do: a namespace or node id that could
smuggle a ``.``, ``*`` or ``>`` into a subject is refused at decode time, with
msgspec's path in the message (``Expected `str` matching regex ... - at `$.namespace```).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
# Change ids come from CI (git SHAs, build ids); they go into Nats-Msg-Id, never into a subject.
CHANGE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$"
TXID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$"

Namespace = Annotated[
    str,
    msgspec.Meta(pattern=NAME_PATTERN, description="namespace: [a-z0-9][a-z0-9_-]{0,63}"),
]
NodeId = Annotated[
    str,
    msgspec.Meta(pattern=NAME_PATTERN, description="node id: [a-z0-9][a-z0-9_-]{0,63}"),
]
ChangeId = Annotated[
    str,
    msgspec.Meta(pattern=CHANGE_ID_PATTERN, description="change id from CI, e.g. a commit sha"),
]
TxId = Annotated[str, msgspec.Meta(pattern=TXID_PATTERN, description="transaction id")]
Label = Annotated[str, msgspec.Meta(pattern=LABEL_PATTERN)]
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
# Bounded by the largest integer every JSON reader keeps exact (2^53 - 1): SQLite and etcd
# would take more, but a version a JavaScript dashboard rounds is a version mixed up.
MAX_INT = 2**53 - 1
VersionNumber = Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
Epoch = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
Format = Literal["json", "yaml", "toml", "text"]
FORMATS: tuple[Format, ...] = ("json", "yaml", "toml", "text")

_NAME_RE = re.compile(NAME_PATTERN)
_TXID_RE = re.compile(TXID_PATTERN)


class InvalidName(ValueError):
    """A namespace, node id or txid that may not appear in a subject."""

    def __init__(self, kind: str, value: str) -> None:
        self.kind = kind
        self.value = value
        super().__init__(f"invalid {kind} {value!r}: must match [a-z0-9][a-z0-9_-]{{0,63}}")


def check_name(value: str, kind: str = "name") -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise InvalidName(kind, value)
    return value


def check_txid(value: str) -> str:
    if not isinstance(value, str) or not _TXID_RE.fullmatch(value):
        raise InvalidName("txid", value)
    return value
