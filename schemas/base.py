"""The base of every message: frozen, tagged by ``type``, versioned by ``schema_version``.

Evolution rules (msgspec ``schema-evolution``): new fields get defaults, fields are never
reordered or retyped, and readers ignore fields they do not know. A message whose ``type``
tag a reader does not know comes from a newer confbus: it is skipped, not dead-lettered.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import msgspec

T = TypeVar("T")

SCHEMA_VERSION = 1


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    schema_version: int = SCHEMA_VERSION


class Envelope(msgspec.Struct):
    """Just enough of any message to tell an unknown newer tag from garbage."""

    type: str
    schema_version: int = SCHEMA_VERSION


# What a decoder of untrusted bytes may raise. msgspec raises RecursionError, not DecodeError,
# for JSON nested ~1000 deep: every decode site catches this tuple, never the two msgspec
# errors alone (tests/fuzz/test_decoders.py checks both).
DECODE_ERRORS: tuple[type[Exception], ...] = (
    msgspec.ValidationError,
    msgspec.DecodeError,
    RecursionError,
)


class LazyDecoder(Generic[T]):
    """``msgspec.json.Decoder(type).decode``, the decoder built at the first call. Building
    one evaluates the annotations of every struct the type reaches: for the union of every
    event and the operations' replies, ~14 M instructions (a few ms) that each process paid at
    import, most of them never decoding one (``confbus publish`` pays it later, while it waits
    for the rollout, and only for what it decodes)."""

    __slots__ = ("_decode", "type")

    def __init__(self, type: Any) -> None:  # a struct, or a union of them (not a ``type[T]``)
        self.type = type  # what it decodes, as ``msgspec.json.Decoder.type`` says
        self._decode: Any = None

    @property
    def built(self) -> bool:
        """Whether it was called: what tests/cli/test_startup.py checks a command's imports
        did not do."""
        return self._decode is not None

    def __call__(self, data: bytes | bytearray | memoryview | str) -> T:
        decode = self._decode
        if decode is None:
            decode = self._decode = msgspec.json.Decoder(self.type).decode
        result: T = decode(data)
        return result


decode_envelope: LazyDecoder[Envelope] = LazyDecoder(Envelope)


def utcnow() -> datetime:
    return datetime.now(UTC)


S = TypeVar("S", bound=msgspec.Struct)
_ABSENT = object()


def project(src: object, target: type[S], /, **differing: Any) -> S:
    """A ``target`` built from ``src``'s attributes of the same names, but for the fields named
    in ``differing``, which take the values given there; a field ``src`` has no attribute for
    takes its default. Built by ``msgspec.convert``, so every value is checked against
    ``target``'s types and constraints, as if decoded.

    Use it only where a same-named attribute means the same thing in both; name a field whose
    meaning changes in ``differing``. (A dict, not ``from_attributes`` over a wrapper that
    overlays ``differing``: that costs about ten times as much per call.)
    """
    values = {
        name: value
        for name in target.__struct_fields__
        if name not in differing and (value := getattr(src, name, _ABSENT)) is not _ABSENT
    }
    return msgspec.convert(values | differing, target)
