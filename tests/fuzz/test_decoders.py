"""Every decoder of the wire contract, fed garbage: it decodes, or it raises msgspec's
``ValidationError``/``DecodeError`` — never anything else (docs/design.md §8.9: bad input is
refused, never fatal). What decodes survives a round trip through the encoder unchanged.

The targets are found, not listed: every ``decode_*`` in ``schemas`` and every Struct defined
there, so a message added tomorrow is fuzzed without touching this file.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import pkgutil
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import confbus.schemas as schemas
from confbus.schemas import fleet, sealing
from confbus.schemas.base import DECODE_ERRORS, LazyDecoder
from tests.fuzz.strategies import DEEP, garbage, wire

Decode = Callable[[bytes], Any]


def _modules() -> list[Any]:
    return [
        importlib.import_module(m.name)
        for m in pkgutil.walk_packages(schemas.__path__, "confbus.schemas.")
    ]


def decoders() -> dict[str, tuple[Decode, Any]]:
    """``module.decode_x`` → (the function, the type it decodes)."""
    found: dict[str, tuple[Decode, Any]] = {}
    for mod in _modules():
        for name, obj in vars(mod).items():
            if isinstance(obj, LazyDecoder):  # a decoder built at its first call
                found[f"{mod.__name__}.{name}"] = (obj, obj.type)
            elif name.startswith("decode_") and callable(obj):
                # A decoder's own method, or a function over one (``__wrapped__``).
                decoder = getattr(inspect.unwrap(obj), "__self__", None)
                assert isinstance(decoder, msgspec.json.Decoder), f"{mod.__name__}.{name}"
                found[f"{mod.__name__}.{name}"] = (obj, decoder.type)
    return found


def structs() -> dict[str, type[msgspec.Struct]]:
    found: dict[str, type[msgspec.Struct]] = {}
    for mod in _modules():
        for obj in vars(mod).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, msgspec.Struct)
                and obj.__module__ == mod.__name__
            ):
                found[f"{mod.__name__}.{obj.__name__}"] = obj
    return found


DECODERS = decoders()
STRUCTS = structs()
TARGETS: dict[str, tuple[Decode, Any]] = {
    **DECODERS,
    **{name: (msgspec.json.Decoder(t).decode, t) for name, t in STRUCTS.items()},
}

FUZZ = settings(
    # Per target; CI keeps the whole fuzz suite under a minute. More: CONFBUS_FUZZ_EXAMPLES=500.
    max_examples=int(os.environ.get("CONFBUS_FUZZ_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=False,
)


def test_the_targets_are_found() -> None:
    # A check that cannot fail is not a check: the discovery really finds the contract.
    assert "confbus.schemas.events.decode_event" in DECODERS
    assert "confbus.schemas.txn.decode_txn" in DECODERS
    assert "confbus.schemas.policy.Policy" in STRUCTS
    assert len(DECODERS) >= 13 and len(STRUCTS) >= 90


def decodes_or_refuses(decode: Decode, t: Any, data: bytes) -> None:
    try:
        value = decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return
    # Whatever was accepted must encode, and read back as itself.
    again = msgspec.json.decode(msgspec.json.encode(value), type=t)
    assert again == value, (data, value, again)


@pytest.mark.parametrize("name", sorted(TARGETS))
@FUZZ
@given(data=st.data())
def test_garbage_is_decoded_or_refused_with_a_msgspec_error(name: str, data: st.DataObject) -> None:
    decode, t = TARGETS[name]
    # Two thirds look like the message (they reach the constraints), a third is any garbage.
    doc = data.draw(st.one_of(wire(t), wire(t), garbage()), label="document")
    decodes_or_refuses(decode, t, doc)


def test_deep_nesting_is_refused_with_an_error_every_decode_site_catches() -> None:
    """msgspec raises RecursionError, not DecodeError, for a document nested ~1000 deep; every
    decode site catches ``confbus.schemas.base.DECODE_ERRORS``, which includes it."""
    escaped = []
    for name, (decode, _) in sorted(TARGETS.items()):
        try:
            decode(DEEP)
        except DECODE_ERRORS:
            pass
        except Exception as exc:
            escaped.append((name, repr(exc)))
    assert escaped == []


def test_no_service_catches_the_msgspec_errors_alone() -> None:
    """A site catching ``(ValidationError, DecodeError)`` lets RecursionError kill its task."""
    narrow = re.compile(r"except \(msgspec\.(ValidationError|DecodeError), msgspec\.\w+\)")
    root = Path(__file__).resolve().parents[2] / "services"
    sites = [
        f"{path.relative_to(root)}:{n}"
        for path in sorted(root.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if narrow.search(line)
    ]
    assert sites == []


# Parsers of framed bytes that are not plain msgspec decoders: each refuses garbage with its one
# declared error, never anything else (a checkpoint or an envelope read from a bucket or the
# store may be any bytes at all). Half the inputs start with the real header, to get past it.
PARSERS: dict[str, tuple[Callable[[bytes], Any], type[Exception], bytes]] = {
    "parse_checkpoint": (fleet.parse_checkpoint, fleet.CheckpointCorrupt, b"confbus-fleet 1 "),
    "parse_sealed": (sealing.parse_sealed, ValueError, sealing.SEALED_MAGIC),
}


@pytest.mark.parametrize("name", sorted(PARSERS))
@FUZZ
@given(data=st.binary(max_size=512), framed=st.booleans())
def test_framed_garbage_is_refused_with_the_parsers_error(
    name: str, data: bytes, framed: bool
) -> None:
    parse, error, header = PARSERS[name]
    with contextlib.suppress(error):
        parse(header + data if framed else data)
