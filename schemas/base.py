"""The base of every message: frozen, tagged by ``type``, versioned by ``schema_version``.

Evolution rules (msgspec ``schema-evolution``): new fields get defaults, fields are never
reordered or retyped, and readers ignore fields they do not know. A message whose ``type``
tag a reader does not know comes from a newer confbus: it is skipped, not dead-lettered.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

SCHEMA_VERSION = 1


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    schema_version: int = SCHEMA_VERSION


class Envelope(msgspec.Struct):
    """Just enough of any message to tell an unknown newer tag from garbage."""

    type: str
    schema_version: int = SCHEMA_VERSION


decode_envelope = msgspec.json.Decoder(Envelope).decode

# What a decoder of untrusted bytes may raise. msgspec raises RecursionError, not DecodeError,
# for JSON nested ~1000 deep: every decode site catches this tuple, never the two msgspec
# errors alone (tests/fuzz/test_decoders.py checks both).
DECODE_ERRORS: tuple[type[Exception], ...] = (
    msgspec.ValidationError,
    msgspec.DecodeError,
    RecursionError,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Overlay:
    """``src``'s attributes, with some replaced: what ``project`` reads from."""

    __slots__ = ("_differing", "_src")

    def __init__(self, src: object, differing: dict[str, Any]) -> None:
        self._src = src
        self._differing = differing

    def __getattr__(self, name: str) -> Any:
        differing = self._differing
        return differing[name] if name in differing else getattr(self._src, name)


T = TypeVar("T")


def project(src: object, target: type[T], /, **differing: Any) -> T:
    """A ``target`` built from ``src``'s attributes of the same names (msgspec ``convert`` with
    ``from_attributes``, so each value is checked against ``target``'s types), but for the fields
    named in ``differing``, which take the values given there. A field that ``src`` lacks takes its
    default. Use it only where a same-named attribute means the same thing in both; name a field
    whose meaning changes in ``differing``.
    """
    source = _Overlay(src, differing) if differing else src
    return msgspec.convert(source, target, from_attributes=True)
