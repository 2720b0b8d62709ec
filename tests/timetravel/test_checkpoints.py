"""Checkpoints cost time, never correctness: the historian writes them as events arrive, readers
start from them, and a reader given damaged, misplaced or missing ones still gets the answer the
stream alone gives — real nats-server, a real historian process, a generated log of two
interleaved namespaces whose truth is known."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest

from confbus.client import Client
from confbus.client import _timeline as timeline
from confbus.client._fleet import fleet_at
from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus
from confbus.runtime.http import http_get
from confbus.runtime.kvlist import kv_forget, kv_keys
from confbus.schemas.fleet import (
    checkpoint_key,
    checkpoint_seq,
    encode_checkpoint,
    parse_checkpoint,
)
from confbus.schemas.streams import CFG_CHECKPOINTS, CFG_EVENTS
from tests.timetravel.support import applied_of, cursor_reaches, publish_log, start_historian

pytestmark = pytest.mark.anyio

SIZES = {"web": 2400, "api": 1200}


async def answers(client: Client, seqs: list[int]) -> dict[int, bytes]:
    """status --at each seq, as JSON, without where it was reconstructed from."""
    out = {}
    for seq in seqs:
        view = await client.status_at("web", seq)
        out[seq] = msgspec.json.encode(
            msgspec.structs.replace(view, checkpoint_seq=0, events_read=0)
        )
    return out


async def test_answers_start_from_checkpoints_and_match_the_truth(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    truth = await publish_log(bus, SIZES)
    historian = start_historian(nats_server.url, tmp_path)
    try:
        await cursor_reaches(bus)
    finally:
        historian.stop()
    rng = random.Random(3)
    last = sum(SIZES.values())
    async with Client(nats_server.url) as client:
        for seq in [*sorted(rng.sample(range(1, last + 1), 60)), last]:
            for ns in SIZES:
                view = await client.status_at(ns, seq)
                assert applied_of(view) == truth.applied(ns, seq), (ns, seq)
                assert view.seq == seq
                # Bounded cost: never more than about twice --every events of the namespace.
                assert view.checkpoint_seq > 0 or seq < 200, (ns, seq, view.checkpoint_seq)
                assert view.events_read <= 2 * 97, (ns, seq, view.events_read)
        # A time is the sequence of the last event stored at or before it.
        for seq in rng.sample(range(1, last), 10):
            stored = await timeline.stored_time(client, seq)
            assert stored is not None
            view = await client.status_at("web", stored)
            assert view.seq >= seq and applied_of(view) == truth.applied("web", view.seq)


async def test_damaged_misplaced_and_deleted_checkpoints_change_no_answer(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    await publish_log(bus, SIZES)
    historian = start_historian(nats_server.url, tmp_path)
    try:
        await cursor_reaches(bus)
    finally:
        historian.stop()
    last = sum(SIZES.values())
    seqs = [*sorted(random.Random(5).sample(range(1, last + 1), 40)), last]
    kv = await bus.kv(CFG_CHECKPOINTS.name)
    web_keys = sorted(
        await kv_keys(bus, CFG_CHECKPOINTS.name, "web.*"), key=lambda k: checkpoint_seq(k) or 0
    )
    api_key = sorted(await kv_keys(bus, CFG_CHECKPOINTS.name, "api.*"))[-1]
    # One kept checkpoint every 97 events of the namespace, and at most one tail beside them.
    assert 2400 // 97 <= len(web_keys) <= 2400 // 97 + 1, web_keys
    async with Client(nats_server.url) as client:
        with_checkpoints = await answers(client, seqs)
        edges = await timeline.bounds(client)
        from_scratch = {}
        for seq in seqs:
            rec = await timeline.reconstruct(client, "web", seq, edges, checkpoints=False)
            assert rec.checkpoint_seq == 0
            view = fleet_at(rec.state, at=await timeline.stored_time(client, seq))
            from_scratch[seq] = msgspec.json.encode(view)
        assert with_checkpoints == from_scratch

        # Damage every one of them, each in its own way.
        api_state = parse_checkpoint((await kv.get(api_key)).value or b"")
        reasons = {}
        for i, key in enumerate(web_keys):
            data = (await kv.get(key)).value or b""
            state = parse_checkpoint(data)
            kind = i % 7
            if kind == 0:  # bit rot
                damaged = bytearray(data)
                damaged[len(damaged) // 2] ^= 0x55
                await kv.put(key, bytes(damaged))
                reasons[key] = "checksum mismatch"
            elif kind == 1:  # cut short
                await kv.put(key, data[: len(data) // 3])
                reasons[key] = "checksum mismatch"
            elif kind == 2:  # another namespace's checkpoint under this key
                await kv.put(key, encode_checkpoint(api_state))
                reasons[key] = "holds namespace 'api'"
            elif kind == 3:  # intact, but of another sequence than its key names
                other = msgspec.structs.replace(state, seq=state.seq - 1)
                await kv.put(key, encode_checkpoint(other))
                reasons[key] = "not the one its key names"
            elif kind == 4:  # of a stream deleted and created again
                other = msgspec.structs.replace(state, stream_created="2020-01-01T00:00:00+00:00")
                await kv.put(key, encode_checkpoint(other))
                reasons[key] = "of another CFG_EVENTS"
            elif kind == 5:  # deleted (a marker left)
                await kv.delete(key)
                reasons[key] = "gone"
            else:  # purged without a trace
                await kv_forget(bus, CFG_CHECKPOINTS.name, key)
        # A checkpoint that claims a sequence past the end of the stream (another stream's).
        beyond = msgspec.structs.replace(api_state, namespace="web", seq=last + 50)
        await kv.put(checkpoint_key("web", last + 50), encode_checkpoint(beyond))

        assert await answers(client, seqs) == with_checkpoints
        # And the reader says what it passed over, and why.
        rec = await timeline.reconstruct(client, "web", last, edges)
        assert rec.skipped_checkpoints, "no damaged checkpoint was even tried"
        for line in rec.skipped_checkpoints:
            key = line.split(":", 1)[0]
            assert reasons[key] in line, line

        # None at all: the stream alone, the same answers.
        for key in await kv_keys(bus, CFG_CHECKPOINTS.name, "web.*"):
            await kv_forget(bus, CFG_CHECKPOINTS.name, key)
        assert await answers(client, seqs) == with_checkpoints


async def test_the_historian_resumes_from_its_cursor_after_a_crash(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    truth = await publish_log(bus, SIZES)
    historian = start_historian(nats_server.url, tmp_path)
    first = await cursor_reaches(bus)
    historian.kill()
    truth = await publish_log(bus, {"web": 500, "api": 300, "new": 200}, seed=11, truth=truth)
    historian.start()
    try:
        await cursor_reaches(bus)
        ready = historian.ready or {}
        _, body = await http_get("127.0.0.1", int(ready["http_port"]), "/metrics")
    finally:
        historian.stop()
    # It went on from its cursor: only the events published since were folded again.
    assert historian.log_path is not None
    assert f'"from_seq": {first + 1}' in historian.log_path.read_text(), historian.log_tail()
    assert "confbus_historian_events_total 1000.0" in body.decode(), body.decode()
    last = (await bus.js.stream_info(CFG_EVENTS.name)).state.last_seq
    async with Client(nats_server.url) as client:
        for ns in ("web", "api", "new"):
            for seq in (first, first + 7, last - 3, last):
                view = await client.status_at(ns, seq)
                assert applied_of(view) == truth.applied(ns, seq), (ns, seq)
