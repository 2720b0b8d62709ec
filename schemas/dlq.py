"""``CFG_DLQ``: messages that can never succeed, kept with the reason (``cfg.dlq.<stream>``)."""

from __future__ import annotations

from datetime import datetime

import msgspec

from confbus.schemas.base import LazyDecoder, Message, utcnow


class DeadLetter(Message, tag="dead_letter", kw_only=True, frozen=True):
    stream: str
    subject: str
    stream_seq: int | None
    reason: str
    data: bytes  # the original bytes, untouched — or b"" where the stream may carry secrets
    data_sha256: str = ""  # of the original bytes, always (to match them with a publisher's file)
    data_size: int = -1
    headers: dict[str, str] = {}
    deliveries: int = 1
    consumer: str = ""
    at: datetime = msgspec.field(default_factory=utcnow)


decode_dead_letter: LazyDecoder[DeadLetter] = LazyDecoder(DeadLetter)
