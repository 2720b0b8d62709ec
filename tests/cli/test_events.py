"""``confbus replay`` and ``confbus tail`` as real processes against a real nats-server."""

from __future__ import annotations

import json
import re
import signal
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from confbus.cli.commands.events import parse_since, subject_filter
from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus
from confbus.runtime.events import event_type
from confbus.schemas import subjects
from confbus.schemas.events import (
    Event,
    RolloutStarted,
    TxnAborted,
    VersionApproved,
    VersionCreated,
    VoteRecord,
)
from confbus.schemas.streams import CFG_EVENTS
from tests.cli.procs import arun_confbus, assert_unreachable, dead_nats_url, start_confbus

pytestmark = pytest.mark.anyio

SHA = "ab12cd34ef56" + "0" * 52


def created(ns: str, version: int) -> VersionCreated:
    return VersionCreated(
        namespace=ns, version=version, sha256=SHA, size=12, format="json",
        parent=version - 1 or None, change_id=f"c{version}", status="approved",
        actor="ci", message="raise the pool size",
    )  # fmt: skip


async def publish(bus: Bus, *events: Event) -> list[int]:
    seqs = []
    for ev in events:
        ack = await bus.publish(subjects.event(ev.namespace, event_type(ev)), ev)
        seqs.append(ack.seq)
    return seqs


async def stored_time(bus: Bus, seq: int) -> str:
    msg = await bus.js.get_msg(CFG_EVENTS.name, seq)
    assert msg.time is not None
    return msg.time.isoformat()


async def test_replay_prints_every_event_one_per_line(bus: Bus, nats_server: NatsServer) -> None:
    await publish(
        bus,
        created("payments", 1),
        VersionApproved(namespace="payments", version=1, actor="bob"),
        TxnAborted(
            namespace="orders", txid="tx-1", version=4, epoch=2, participants=["n1", "n2"],
            votes=[VoteRecord(node="n1", vote="yes"), VoteRecord(node="n2", vote="no",
                                                                 reason="disk full")],
        ),
    )  # fmt: skip

    done = await arun_confbus("--nats-url", nats_server.url, "replay")

    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    assert re.fullmatch(
        r"1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ version\.created payments v1 sha=ab12cd34ef56… "
        r'size=12 format=json change_id=c1 status=approved by ci: "raise the pool size"',
        lines[0],
    ), lines[0]
    assert lines[1].endswith("version.approved payments v1 by bob")
    assert lines[2].endswith(
        "txn.aborted orders tx-1 v4 epoch=2 participants=n1,n2 votes=no:n2(disk full)"
    )


async def test_replay_filters_by_namespace_and_by_subject(
    bus: Bus, nats_server: NatsServer
) -> None:
    await publish(
        bus,
        created("payments", 1),
        created("orders", 1),
        RolloutStarted(namespace="payments", rollout_id="r1", version=1, strategy="canary",
                       waves=[["n1"], ["n2", "n3"]]),
    )  # fmt: skip

    by_ns = await arun_confbus("--nats-url", nats_server.url, "replay", "payments")
    by_subject = await arun_confbus("--nats-url", nats_server.url, "replay", "*.rollout.>")
    by_full = await arun_confbus("--nats-url", nats_server.url, "replay", "cfg.event.orders.>")

    assert [line.split()[0] for line in by_ns.stdout.splitlines()] == ["1", "3"]
    assert [line.split(" ", 2)[2] for line in by_subject.stdout.splitlines()] == [
        "rollout.started payments r1 v1 strategy=canary waves=1+2"
    ]
    assert [line.split()[3] for line in by_full.stdout.splitlines()] == ["orders"]


async def test_replay_since_a_time_or_a_duration(bus: Bus, nats_server: NatsServer) -> None:
    await publish(bus, created("payments", 1), created("payments", 2))
    later = await publish(bus, created("payments", 3), created("payments", 4))
    since = await stored_time(bus, later[0])  # everything stored from this moment on
    url = nats_server.url

    from_time = await arun_confbus("--nats-url", url, "replay", "--since", since)
    recent = await arun_confbus("--nats-url", url, "replay", "payments", "--since", "10m")
    future = await arun_confbus("--nats-url", url, "replay", "--since", "2999-01-01T00:00:00Z")

    assert [line.split()[0] for line in from_time.stdout.splitlines()] == ["3", "4"]
    assert len(recent.stdout.splitlines()) == 4
    assert future.returncode == 0 and future.stdout == ""


async def test_replay_from_a_sequence_as_json(bus: Bus, nats_server: NatsServer) -> None:
    await publish(bus, *(created("payments", v) for v in (1, 2, 3)))

    done = await arun_confbus("--nats-url", nats_server.url, "replay", "--from-seq", "2", "--json")

    assert done.returncode == 0, done
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["seq"], r["subject"], r["type"], r["version"]) for r in rows] == [
        (2, "cfg.event.payments.version.created", "version.created", 2),
        (3, "cfg.event.payments.version.created", "version.created", 3),
    ]
    assert rows[0]["sha256"] == SHA and rows[0]["message"] == "raise the pool size"


async def test_unknown_event_types_are_printed_raw(bus: Bus, nats_server: NatsServer) -> None:
    newer = b'{"type": "canary.judged", "namespace": "payments", "score": 0.93}'
    await bus.publish("cfg.event.payments.canary.judged", newer)
    await bus.publish("cfg.event.payments.garbage", b"\x00not json")
    await publish(bus, created("payments", 1))

    human = await arun_confbus("--nats-url", nats_server.url, "replay")
    as_json = await arun_confbus("--nats-url", nats_server.url, "replay", "--json")

    assert human.returncode == 0 and as_json.returncode == 0, (human, as_json)
    lines = human.stdout.splitlines()
    assert lines[0].endswith(f"canary.judged payments [unknown type] {newer.decode()}")
    assert "garbage payments [unknown type]" in lines[1]
    assert "version.created payments v1" in lines[2]
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert rows[0] == {
        "seq": 1, "subject": "cfg.event.payments.canary.judged", "type": "canary.judged",
        "namespace": "payments", "score": 0.93,
    }  # fmt: skip
    assert rows[1]["raw"].endswith("not json")


async def test_replay_of_an_empty_log_prints_nothing(bus: Bus, nats_server: NatsServer) -> None:
    done = await arun_confbus("--nats-url", nats_server.url, "replay", "payments")
    assert (done.returncode, done.stdout) == (0, "")


async def test_tail_prints_events_published_after_it_started(
    bus: Bus, nats_server: NatsServer
) -> None:
    await publish(bus, created("payments", 1))  # before: not tail's business
    tail = start_confbus("--nats-url", nats_server.url, "tail", "payments", "--json")
    try:
        await anyio.to_thread.run_sync(tail.err.wait_for, "following cfg.event.payments.>")
        await publish(bus, created("orders", 1), created("payments", 2))

        line = await anyio.to_thread.run_sync(tail.out.wait_for, "version.created")
        row = json.loads(line)
        assert (row["seq"], row["namespace"], row["version"]) == (3, "payments", 2)
        assert tail.out.lines == [line]
    finally:
        code = await anyio.to_thread.run_sync(tail.stop, signal.SIGINT)
    assert code == 130  # interrupted, like any command stopped with Ctrl-C


async def test_unreachable_nats_exits_3() -> None:
    url = dead_nats_url()
    for command in (["replay"], ["tail"]):
        assert_unreachable(await arun_confbus("--nats-url", url, *command, timeout=30))


async def test_nats_without_confbus_exits_3(nats_server: NatsServer) -> None:
    done = await arun_confbus("--nats-url", nats_server.url, "replay")
    assert done.returncode == 3, done
    assert "no CFG_EVENTS stream" in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "--since", "yesterday"],
        ["replay", "--from-seq", "0"],
        ["replay", "--since", "1h", "--from-seq", "3"],
        ["replay", "Payments!"],
        ["replay", "cfg.change.>"],
        ["tail", "payments", "extra"],
        ["no-such-command"],
    ],
)
async def test_usage_errors_exit_2(args: list[str]) -> None:
    # Usage is checked before anything connects: no NATS needed.
    done = await arun_confbus("--nats-url", dead_nats_url(), *args)
    assert done.returncode == 2, done
    assert "error" in done.stderr or "confbus:" in done.stderr


def test_filters_and_durations() -> None:
    assert subject_filter("cfg.event.>") == "cfg.event.>"
    assert subject_filter("payments") == "cfg.event.payments.>"
    assert subject_filter("payments.rollout.*") == "cfg.event.payments.rollout.*"
    assert subject_filter("*.version.created") == "cfg.event.*.version.created"
    assert parse_since("90s") == timedelta(seconds=90)
    assert parse_since("7d") == timedelta(days=7)
    assert parse_since("2026-11-26T16:40:00") == datetime(2026, 11, 26, 16, 40, tzinfo=UTC)


def test_a_completed_rollout_reads_as_wave_sizes_and_states() -> None:
    from confbus.cli.commands.events import describe
    from confbus.schemas.events import NodeOutcome, RolloutCompleted, WaveReport

    ev = RolloutCompleted(
        namespace="web",
        rollout_id="r1",
        version=2,
        report=[
            NodeOutcome(node="n1", outcome="applied"),
            NodeOutcome(node="n2", outcome="applied"),
        ],
        waves=[
            WaveReport(index=0, nodes=["n1"], state="done"),
            WaveReport(index=1, nodes=["n2"], state="done"),
        ],
    )
    line = describe(ev)
    assert "waves=1:done+1:done" in line and "report=applied:2" in line, line
    assert "WaveReport(" not in line
