"""The version-store service end to end: a real nats-server, the service as a real subprocess
(SQLite store in a temp dir), and the Python client the CLI is built on."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from confbus.client import ChangeRejected, Client
from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus, connect, provision
from confbus.runtime.errors import Conflict, InvalidInput, NotFound
from confbus.schemas import subjects
from confbus.schemas.changes import ChangeProposed, msg_id
from confbus.schemas.events import (
    VersionApproved,
    VersionCreated,
    VersionLastGood,
    VersionPromoted,
    VersionRejected,
)
from confbus.schemas.policy import Policy
from confbus.schemas.streams import CFG_EVENTS
from tests.helpers import eventually
from tests.version_store.test_service_helpers import (
    Stack,
    drained,
    events_of,
    service_proc,
    stack,
)

pytestmark = pytest.mark.anyio
__all__ = ["stack"]  # the module-scoped fixture


def created(events: Sequence[object]) -> list[VersionCreated]:
    return [e for e in events if isinstance(e, VersionCreated)]


def rejected(events: Sequence[object]) -> list[VersionRejected]:
    return [e for e in events if isinstance(e, VersionRejected)]


async def test_200_concurrent_publishes_number_1_to_200(stack: Stack) -> None:
    ns = "concurrent"
    versions: list[int] = []

    async def publisher(k: int) -> None:
        async with stack.client() as client:

            async def one(i: int) -> None:
                info = await client.publish(
                    ns, f'{{"n": {i}}}'.encode(), change_id=f"c{i}", author=f"ci{k}"
                )
                assert info.change_id == f"c{i}"
                versions.append(info.version)

            async with anyio.create_task_group() as tg:
                for i in range(k, 200, 4):
                    tg.start_soon(one, i)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for k in range(4):
                tg.start_soon(publisher, k)
    assert sorted(versions) == list(range(1, 201))
    async with stack.client() as client:
        history = await client.history(ns, limit=500)
        assert [v.version for v in history] == list(range(200, 0, -1))
        assert len({v.change_id for v in history}) == 200
        assert all(v.parent == (v.version - 1 or None) for v in history)
        events = created(await events_of(client, ns))
    assert sorted(e.version for e in events) == list(range(1, 201))  # one event per version


async def test_same_change_id_one_version_per_namespace_and_other_bytes_refused(
    stack: Stack,
) -> None:
    async with stack.client() as client:
        first = await client.publish("dup-a", b'{"a": 1}', change_id="sha1")
        again = await client.publish("dup-a", b'{"a": 1}', change_id="sha1")
        other_ns = await client.publish("dup-b", b'{"a": 1}', change_id="sha1")
        assert first == again and first.version == 1
        assert (other_ns.namespace, other_ns.version) == ("dup-b", 1)

        # Within the stream's window the publish itself is a duplicate: the client sees
        # that the id holds other bytes and says so.
        with pytest.raises(ChangeRejected, match="already version 1 with other content"):
            await client.publish("dup-a", b'{"a": 2}', change_id="sha1")

        # Past the window (here: another message id), the store refuses it and says so.
        reused = ChangeProposed(namespace="dup-a", change_id="sha1", content=b'{"a": 3}')
        await client.bus.publish(subjects.change("dup-a"), reused, msg_id="dup-a:sha1:later")

        async def refusals() -> list[VersionRejected]:
            return rejected(await events_of(client, "dup-a"))

        (event,) = await eventually(refusals, what="the store's refusal of the reused id")
        assert "already version 1" in event.reason and event.where == "change_id"
        status = await client.change_status("dup-a", "sha1")
        assert (status.status, status.version) == ("stored", 1)
        assert [v.version for v in await client.history("dup-a")] == [1]
        assert len(created(await events_of(client, "dup-a"))) == 1  # the retry said nothing


@pytest.mark.parametrize(
    ("fmt", "content", "schema", "max_bytes", "reason", "where"),
    [
        ("json", b'{"port": ', None, None, "invalid JSON", "line 1, column 10"),
        ("yaml", b"a: [1, 2\nb: 3\n", None, None, "invalid YAML", "line"),
        ("toml", b"a = = 1\n", None, None, "invalid TOML", "line 1"),
        (
            "json",
            b'{"db": {"port": "x"}}',
            {"properties": {"db": {"properties": {"port": {"type": "integer"}}}}},
            None,
            "is not of type 'integer'",
            "$.db.port",
        ),
        ("json", b'{"big": "' + b"x" * 100 + b'"}', None, 64, "limit", "size"),
    ],
)
async def test_invalid_config_is_rejected_with_reason_and_nothing_stored(
    stack: Stack,
    fmt: str,
    content: bytes,
    schema: dict[str, object] | None,
    max_bytes: int | None,
    reason: str,
    where: str,
) -> None:
    ns = f"bad-{fmt}-{hashlib.sha256(content).hexdigest()[:8]}"
    async with stack.client() as client:
        policy = Policy(namespace=ns, format=fmt, json_schema=schema)  # type: ignore[arg-type]
        if max_bytes is not None:
            policy = Policy(namespace=ns, format=fmt, max_bytes=max_bytes)  # type: ignore[arg-type]
        await client.set_policy(policy)
        with pytest.raises(ChangeRejected) as caught:
            await client.publish(ns, content, change_id="c1")
        assert reason in caught.value.reason
        assert where in caught.value.where
        assert await client.history(ns) == []
        (event,) = rejected(await events_of(client, ns))
        assert reason in event.reason and where in event.where and event.change_id == "c1"
        status = await client.change_status(ns, "c1")
        assert status.status == "rejected" and reason in status.reason


async def test_stale_base_and_dry_run_store_nothing(stack: Stack) -> None:
    ns = "based"
    async with stack.client() as client:
        v1 = await client.publish(ns, b'{"v": 1}', base=0)
        assert v1.version == 1
        with pytest.raises(ChangeRejected, match="base 0 is stale: newest is 1"):
            await client.publish(ns, b'{"v": 2}', base=0)
        dry = await client.dry_run(
            ChangeProposed(namespace=ns, change_id="d1", content=b'{"v": 9}', base=1)
        )
        assert dry.ok and dry.would_be_version == 2 and '+{"v": 9}' in dry.diff
        dry = await client.dry_run(ChangeProposed(namespace=ns, change_id="d2", content=b"{"))
        assert not dry.ok and "invalid JSON" in dry.reason
        assert [v.version for v in await client.history(ns)] == [1]
        assert (await client.change_status(ns, "d1")).status == "unknown"
        v2 = await client.publish(ns, b'{"v": 2}', base=1)
        assert (v2.version, v2.parent) == (2, 1)


async def test_approval_flow_and_status_events(stack: Stack) -> None:
    ns = "approved-ns"
    async with stack.client() as client:
        await client.set_policy(Policy(namespace=ns, require_approval=True), actor="ops")
        with pytest.raises(ChangeRejected, match="needs an author"):
            await client.publish(ns, b"{}", change_id="anon")
        draft = await client.publish(ns, b'{"x": 1}', change_id="c1", author="alice")
        assert draft.status == "draft"
        with pytest.raises(Conflict, match="approved by someone else"):
            await client.approve(ns, 1, "alice")
        info = await client.approve(ns, 1, "bob")
        assert (info.status, info.approved_by) == ("approved", "bob")
        assert (await client.approve(ns, 1, "bob")).status == "approved"  # a retry: no-op
        promoted = await client.promote(ns, 1, actor="distributor")
        assert promoted.status == "production"
        await client.promote(ns, 1, actor="distributor")  # a retry: no-op
        good = await client.mark_good(ns, 1, actor="health")
        assert good.last_good
        assert (await client.get(ns, "last-good")).content == b'{"x": 1}'
        assert (await client.get(ns, "production", content=False)).info.version == 1
        with pytest.raises(NotFound):
            await client.get(ns, "7")
        events = await events_of(client, ns)
    kinds = Counter(type(e).__name__ for e in events)
    assert kinds == Counter(
        PolicyChanged=1,  # require_approval, set above
        VersionRejected=1,
        VersionCreated=1,
        VersionApproved=1,
        VersionPromoted=1,
        VersionLastGood=1,
    )
    (c,) = created(events)
    assert c.status == "draft" and c.actor == "alice"
    assert [e.actor for e in events if isinstance(e, VersionApproved)] == ["bob"]
    assert [e.previous for e in events if isinstance(e, VersionPromoted)] == [None]
    # With its sha256: each agent checks the copy in its own history against it.
    assert [(e.version, e.sha256) for e in events if isinstance(e, VersionLastGood)] == [
        (1, hashlib.sha256(b'{"x": 1}').hexdigest())
    ]


async def test_rollback_is_a_new_version_with_the_target_bytes(stack: Stack) -> None:
    ns = "rolled"
    async with stack.client() as client:
        await client.publish(ns, b'{"v": 1}')
        await client.publish(ns, b'{"v": 2}')
        # A later, stricter schema does not block the way back to bytes stored before it.
        await client.set_policy(
            Policy(namespace=ns, json_schema={"required": ["new_field"]}, strategy="canary:2")
        )
        back = await client.publish(ns, b'{"v": 1}', rollback_of=1, change_id="rb-1")
        assert (back.version, back.rollback_of, back.status) == (3, 1, "approved")
        with pytest.raises(ChangeRejected, match="exact bytes of version 2"):
            await client.publish(ns, b'{"v": 1}', rollback_of=2, change_id="rb-2")
        with pytest.raises(ChangeRejected, match="names no version"):
            await client.publish(ns, b'{"v": 1}', rollback_of=9, change_id="rb-9")
        with pytest.raises(ChangeRejected, match="unknown rollout strategy"):
            await client.publish(ns, b'{"v": 1}', rollback_of=1, strategy="fast", change_id="rs")


async def test_policy_is_checked(stack: Stack) -> None:
    async with stack.client() as client:
        with pytest.raises(InvalidInput, match="unknown rollout strategy"):
            await client.set_policy(Policy(namespace="pol", strategy="linear:150%"))
        with pytest.raises(InvalidInput, match="invalid JSON Schema"):
            await client.set_policy(Policy(namespace="pol", json_schema={"type": 5}))
        for strategy in ("all-at-once", "canary:1", "linear:25%", "exponential:10%"):
            await client.set_policy(Policy(namespace="pol", strategy=strategy))
            assert (await client.policy("pol")).strategy == strategy


async def _short_event_window(bus: Bus) -> None:
    """Give ``CFG_EVENTS`` a 0.2 s duplicate window (the services then run with
    ``--no-provision`` to keep it), so a restart can come later than the window."""
    config = (await bus.js.stream_info(CFG_EVENTS.name)).config
    config.duplicate_window = 0.2
    await bus.js.update_stream(config)


async def _window_passed(bus: Bus) -> None:
    """Wait until ids published before now are forgotten by the stream: from then on only the
    service's own look at the stream keeps it from announcing a version twice."""
    probe = subjects.event("probe", "version.probe")
    await bus.publish(probe, b"{}", msg_id="probe")

    async def passed() -> bool:
        return not (await bus.publish(probe, b"{}", msg_id="probe")).duplicate

    await eventually(passed, what="the duplicate window to pass")


async def _kill_between(
    tmp_path: Path, nats_server: NatsServer, failpoint: str, forget_ids: bool = False
) -> None:
    """Publish 30 changes, let the service die at ``failpoint`` in its first batch, restart it:
    every change ends stored exactly once and announced exactly once."""
    ns = "crash"
    bus = await connect(nats_server.url, name="test")
    try:
        # Accepted while no version-store runs (nothing accepted is lost: it waits); the one
        # that starts finds all 30 and commits them in its first batch.
        await provision(bus)
        extra: tuple[str, ...] = ()
        if forget_ids:
            await _short_event_window(bus)
            extra = ("--no-provision",)

        async def propose(i: int) -> None:
            change = ChangeProposed(namespace=ns, change_id=f"c{i}", content=f"{i}".encode())
            await bus.publish(subjects.change(ns), change, msg_id=msg_id(ns, change.change_id))

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(propose, i)
        armed = {"CONFBUS_FAILPOINTS": f"{failpoint}=kill"}
        crashing = service_proc(nats_server.url, tmp_path, *extra, env=armed, name="vs2")
        crashing.start(wait_ready=False)
        assert crashing.wait_exit(timeout=20) == -9  # SIGKILL, at the failpoint
        assert f'"failpoint": "{failpoint}"' in crashing.log_tail()
        if forget_ids:
            await _window_passed(bus)
        survivor = service_proc(nats_server.url, tmp_path, *extra, name="vs3").start()
        try:
            async with Client(nats_server.url) as client:

                async def all_created() -> bool:
                    return len(created(await events_of(client, ns, settle=False))) >= 30

                await eventually(all_created, timeout=20, what="30 version.created events")
                await drained(bus)
                events = created(await events_of(client, ns))
                history = await client.history(ns, limit=100)
        finally:
            survivor.stop()
    finally:
        await bus.close()
    assert sorted(e.version for e in events) == list(range(1, 31))  # exactly one each
    assert [v.version for v in history] == list(range(30, 0, -1))
    assert sorted(v.change_id for v in history) == sorted(f"c{i}" for i in range(30))
    for v in history:
        assert v.sha256 == hashlib.sha256(v.change_id[1:].encode()).hexdigest()


async def test_kill_after_commit_loses_nothing_and_announces_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    await _kill_between(tmp_path, nats_server, "version_store.after_commit")


async def test_kill_after_events_announces_once(tmp_path: Path, nats_server: NatsServer) -> None:
    await _kill_between(tmp_path, nats_server, "version_store.after_events", forget_ids=True)


async def test_secret_content_stays_out_of_events_logs_and_dry_runs(stack: Stack) -> None:
    ns = "vault"
    secret = "hunter2-correct-horse"
    async with stack.client() as client:
        schema = {"properties": {"password": {"type": "string", "maxLength": 8}}}
        await client.set_policy(Policy(namespace=ns, json_schema=schema, secret=True))
        with pytest.raises(ChangeRejected) as caught:
            await client.publish(ns, f'{{"password": "{secret}"}}'.encode(), change_id="c1")
        assert caught.value.where == "$.password" and secret not in caught.value.reason
        ok = await client.publish(ns, b'{"password": "s3cret"}', change_id="c2")
        dry = await client.dry_run(
            ChangeProposed(namespace=ns, change_id="c3", content=b'{"password": "other"}')
        )
        assert dry.ok and dry.diff == "" and "secret" in dry.reason
        # An operator allowed to ask still gets the bytes.
        assert (await client.get(ns, ok.version)).content == b'{"password": "s3cret"}'
        raw = b"".join(
            [s.raw async for s in client.events(f"cfg.event.{ns}.>")]  # every event, as stored
        )
    assert secret.encode() not in raw and b"s3cret" not in raw
    log = stack.service.log_text()
    assert secret not in log and "s3cret" not in log


async def test_reject_a_draft(stack: Stack) -> None:
    ns = "refused"
    async with stack.client() as client:
        await client.set_policy(Policy(namespace=ns, require_approval=True))
        await client.publish(ns, b"{}", change_id="c1", author="alice")
        info = await client.reject(ns, 1, actor="bob", reason="not today")
        assert info.status == "rejected"
        with pytest.raises(Conflict, match="only a draft can be approved"):
            await client.approve(ns, 1, "carol")
        (event,) = rejected(await events_of(client, ns))
    assert (event.change_id, event.actor, event.where) == ("c1", "bob", "version 1")
    assert "not today" in event.reason


async def test_two_replicas_share_the_work_and_export_in_pages(stack: Stack) -> None:
    """A second replica on the same store file: numbering stays gap-free across processes, and
    a paged export (its session lives on one replica) works whichever replica answers first."""
    ns = "replicated"
    second = service_proc(stack.url, stack.dir, name="vs-replica").start()
    try:
        async with stack.client() as client:

            async def one(i: int) -> None:
                await client.publish(ns, f"[{i}]".encode(), change_id=f"c{i}")

            async with anyio.create_task_group() as tg:
                for i in range(60):
                    tg.start_soon(one, i)
            history = await client.history(ns, limit=100)
            assert [v.version for v in history] == list(range(60, 0, -1))
            for _ in range(4):  # the first page may land on either replica
                backup = await client.export_namespace(ns, page_bytes=16)
                assert [v.info for v in backup.versions] == list(reversed(history))
    finally:
        second.stop()


async def test_an_undecodable_change_is_dead_lettered_and_its_publisher_told_why(
    stack: Stack,
) -> None:
    """A change whose selector is not made of labels does not decode: it is dead-lettered, and
    since it still names its namespace and change id, its publisher gets the rejection (with
    msgspec's path) instead of waiting for an outcome that never comes."""
    ns = "bad-selector"
    async with stack.client() as client:
        with anyio.fail_after(20):  # the wait for an outcome would be 30 s
            with pytest.raises(ChangeRejected) as caught:
                await client.publish(
                    ns, b'{"a": 1}', change_id="sel1", selector={"not a label!": "x"}
                )
        assert "selector" in caught.value.where, caught.value
        assert "invalid change" in caught.value.reason, caught.value
        assert await client.history(ns) == []
        (event,) = rejected(await events_of(client, ns))
        assert event.change_id == "sel1" and "selector" in event.where
        status = await client.change_status(ns, "sel1")
        assert status.status == "rejected"
