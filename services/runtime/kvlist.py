"""Listing the keys of a KV bucket with one request.

nats-py's ``KeyValue.keys`` creates a consumer on the bucket's stream: a round trip more, and a
permission a read-only user does not have (docs/security.md). The stream's info, asked with a
subject filter, names every subject that holds a message: the keys, in one answer. Keys whose
last message is a delete marker are listed too (the caller's ``get`` then says so); the server
answers at most 100,000 subjects, far more than the callers keep.
"""

from __future__ import annotations

import nats.js.errors

from confbus.runtime.bus import Bus


async def kv_keys(bus: Bus, bucket: str, pattern: str = ">") -> list[str]:
    """Keys of ``bucket`` matching ``pattern`` (NATS wildcards), in no particular order; none
    when the bucket does not exist."""
    prefix = f"$KV.{bucket}."
    try:
        info = await bus.js.stream_info(f"KV_{bucket}", subjects_filter=prefix + pattern)
    except nats.js.errors.NotFoundError:
        return []
    return [subject.removeprefix(prefix) for subject in info.state.subjects or {}]


async def kv_forget(bus: Bus, bucket: str, key: str) -> None:
    """Remove every message of ``key``, leaving no delete marker (which ``kv_keys`` would list)."""
    await bus.js.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}")
