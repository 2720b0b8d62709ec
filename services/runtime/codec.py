"""One JSON encoder for every message (msgspec: ~3 µs for a 1 KiB Struct)."""

from __future__ import annotations

from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()


def encode(msg: Any) -> bytes:
    return _encoder.encode(msg)
