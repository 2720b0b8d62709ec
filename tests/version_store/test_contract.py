"""The storage contract, run against every backend (see conftest: SQLite and etcd)."""

from __future__ import annotations

import contextlib
import random
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec
import pytest

from confbus.runtime.sealing import new_data_key, new_kek, seal
from confbus.runtime.signing import SigningKey
from confbus.schemas.policy import Policy
from confbus.schemas.sealing import content_sha256
from confbus.schemas.signing import Statement
from confbus.version_store.errors import (
    InvalidConfig,
    InvalidTransition,
    NotFound,
    VersionConflict,
)
from confbus.version_store.storage import (
    AppendResult,
    NamespaceExport,
    NewVersion,
    Store,
)
from tests.version_store.conftest import Backend

pytestmark = pytest.mark.anyio


def nv(ns: str, change_id: str, content: bytes, *, author: str = "ci", **kw: Any) -> NewVersion:
    return NewVersion.build(ns, change_id, content, author=author, **kw)


async def one(store: Store, item: NewVersion) -> AppendResult:
    (result,) = await store.append([item])
    return result


async def stored(store: Store, item: NewVersion) -> int:
    result = await one(store, item)
    assert result.outcome == "stored", result
    assert result.info is not None
    return result.info.version


# -- append -------------------------------------------------------------------------------------


async def test_append_and_get_round_trip(store: Store) -> None:
    at = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    item = NewVersion.build(
        "payments",
        "abc123",
        b'{"a": 1}',
        author="alice",
        message="first",
        created_at=at,
        strategy="canary:2",
        selector={"dc": "eu1"},
        status="draft",
    )
    result = await one(store, item)
    assert result.outcome == "stored" and result.version == 1
    got = await store.get("payments", 1)
    assert got.content == b'{"a": 1}'
    assert got.strategy == "canary:2" and got.selector == {"dc": "eu1"}
    info = got.info
    assert (info.version, info.parent, info.sha256, info.size) == (1, None, item.sha256, 8)
    assert (info.author, info.message, info.change_id, info.status) == (
        "alice",
        "first",
        "abc123",
        "draft",
    )
    assert info.created_at == at
    assert info == result.info
    assert await stored(store, nv("payments", "def456", b'{"a": 2}')) == 2
    assert (await store.get("payments", 2)).info.parent == 1
    head = await store.head("payments")
    assert (head.newest, head.production, head.last_good) == (2, None, None)


async def test_200_concurrent_appends_number_without_gap_or_duplicate(backend: Backend) -> None:
    clients = [backend.make() for _ in range(4)]
    versions: dict[str, int] = {}
    async with contextlib.AsyncExitStack() as stack:
        for c in clients:
            await stack.enter_async_context(c)

        async def publish(i: int) -> None:
            result = await one(clients[i % len(clients)], nv("busy", f"c{i}", b"%d" % i))
            assert result.outcome == "stored", result
            assert result.info is not None
            versions[f"c{i}"] = result.info.version

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(publish, i)
        history = await clients[0].history("busy", limit=500)
    assert sorted(versions.values()) == list(range(1, 201))
    assert [v.version for v in history] == list(range(200, 0, -1))
    for info in history:
        assert info.parent == (info.version - 1 or None)
        assert versions[info.change_id] == info.version


async def test_group_commit_across_namespaces(store: Store) -> None:
    results = await store.append(
        [
            nv("alpha", "x1", b"a1"),
            nv("beta", "x1", b"b1"),  # the same change id in another namespace: its own version
            nv("alpha", "x2", b"a2"),
            nv("alpha", "x1", b"a1"),  # repeated inside the batch: the first one's version
        ]
    )
    assert [(r.outcome, r.info.namespace if r.info else None, r.version) for r in results] == [
        ("stored", "alpha", 1),
        ("stored", "beta", 1),
        ("stored", "alpha", 2),
        ("duplicate", "alpha", 1),
    ]
    assert await store.namespaces() == ["alpha", "beta"]


async def test_duplicate_change_id_same_content_is_the_same_version(store: Store) -> None:
    first = await one(store, nv("ns", "build-7", b"same"))
    await stored(store, nv("ns", "build-8", b"other"))
    again = await one(store, nv("ns", "build-7", b"same", message="retried by CI"))
    assert again.outcome == "duplicate"
    assert again.info == first.info
    assert (await store.head("ns")).newest == 2


async def test_same_change_id_other_content_is_a_conflict_naming_the_version(store: Store) -> None:
    await stored(store, nv("ns", "build-7", b"one"))
    result = await one(store, nv("ns", "build-7", b"two"))
    assert result.outcome == "conflict"
    assert isinstance(result.error, VersionConflict)
    assert result.error.existing == 1
    assert "already version 1" in str(result.error)
    assert (await store.head("ns")).newest == 1
    assert (await store.get("ns", 1)).content == b"one"


async def test_stale_base_is_refused_and_nothing_stored(store: Store) -> None:
    assert await stored(store, nv("ns", "c1", b"1", base=0)) == 1
    assert await stored(store, nv("ns", "c2", b"2", base=1)) == 2
    result = await one(store, nv("ns", "c3", b"3", base=1))
    assert result.outcome == "conflict"
    assert isinstance(result.error, VersionConflict)
    assert "base 1 is stale: newest is 2" in str(result.error)
    assert (result.error.base, result.error.newest) == (1, 2)
    assert await store.by_change_id("ns", "c3") is None
    assert (await store.head("ns")).newest == 2
    # A base is checked against earlier items of the same batch too.
    results = await store.append([nv("ns", "c4", b"4", base=2), nv("ns", "c5", b"5", base=2)])
    assert [r.outcome for r in results] == ["stored", "conflict"]
    empty = await one(store, nv("other", "c1", b"1", base=3))
    assert empty.outcome == "conflict" and "no versions" in str(empty.error)


async def test_retry_of_stored_change_with_stale_base_is_a_duplicate(store: Store) -> None:
    first = await one(store, nv("ns", "c1", b"1", base=0))
    await stored(store, nv("ns", "c2", b"2"))
    again = await one(store, nv("ns", "c1", b"1", base=0))
    assert again.outcome == "duplicate" and again.info == first.info


async def test_invalid_items_are_refused_alone(store: Store) -> None:
    good = nv("ns", "ok", b"fine")
    tampered = msgspec.structs.replace(nv("ns", "bad-sha", b"x"), content=b"y")
    results = await store.append(
        [
            tampered,
            nv("Not/A/Namespace", "c", b"x"),
            nv("ns", "bad id with spaces", b"x"),
            nv("ns", "rb", b"x", rollback_of=5),
            good,
        ]
    )
    assert [r.outcome for r in results] == ["invalid"] * 4 + ["stored"]
    assert all(isinstance(r.error, InvalidConfig) for r in results[:4])
    assert results[0].error is not None and results[0].error.where == "sha256"
    assert results[4].version == 1


async def test_rollback_of_is_kept(store: Store) -> None:
    await stored(store, nv("ns", "c1", b"good"))
    await stored(store, nv("ns", "c2", b"bad"))
    assert await stored(store, nv("ns", "rollback-1", b"good", rollback_of=1)) == 3
    info = (await store.get("ns", 3)).info
    assert info.rollback_of == 1 and info.sha256 == (await store.get("ns", 1)).info.sha256


async def test_signatures_and_sealed_content_are_kept_and_exported(store: Store) -> None:
    key = SigningKey.generate("alice")
    kek = new_kek("ops")
    sealed = seal(b'{"secret": 1}', "json", new_data_key(kek), {kek.id: kek})
    sha = content_sha256(sealed)
    sig = key.sign(Statement("ns", 1, sha, "json", "c1"))
    assert await stored(store, nv("ns", "c1", sealed, signatures=[sig])) == 1
    got = await store.get("ns", 1)
    assert got.signatures == [sig] and got.content == sealed
    # A sealed version's sha256 is its plaintext's; the store checks the envelope with it.
    assert got.info.sha256 == sha and (await store.check_integrity("ns")).ok
    assert (await store.export("ns")).versions[0].signatures == [sig]


# -- reads --------------------------------------------------------------------------------------


async def test_history_pages_newest_first(store: Store) -> None:
    await store.append([nv("ns", f"c{i}", b"%d" % i) for i in range(1, 26)])
    pages: list[list[int]] = []
    before: int | None = None
    while True:
        page = await store.history("ns", before=before, limit=10)
        if not page:
            break
        pages.append([v.version for v in page])
        before = page[-1].version
    assert pages == [list(range(25, 15, -1)), list(range(15, 5, -1)), list(range(5, 0, -1))]
    assert await store.history("ns", before=1) == []
    assert await store.history("nothing-here") == []


async def test_resolve_refs(store: Store) -> None:
    await store.append([nv("ns", f"c{i}", b"%d" % i) for i in range(1, 4)])
    assert (await store.resolve("ns", "latest")).version == 3
    assert (await store.resolve("ns", 2)).version == 2
    assert (await store.resolve("ns", "2")).version == 2
    for missing in ("production", "last-good", 9, "9", "0", "yesterday"):
        with pytest.raises(NotFound):
            await store.resolve("ns", missing)
    await store.promote("ns", 2)
    await store.mark_last_good("ns", 1)
    assert (await store.resolve("ns", "production")).version == 2
    assert (await store.resolve("ns", "last-good")).version == 1
    with pytest.raises(NotFound):
        await store.resolve("empty", "latest")


async def test_get_and_by_change_id(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.get("ns", 1)
    await stored(store, nv("ns", "sha-abc", b"x"))
    found = await store.by_change_id("ns", "sha-abc")
    assert found is not None and found.version == 1
    assert await store.by_change_id("ns", "sha-zzz") is None
    assert await store.by_change_id("other", "sha-abc") is None
    with pytest.raises(NotFound):
        await store.get("ns", 2)


# -- status transitions -------------------------------------------------------------------------


async def test_approval_by_someone_else(store: Store) -> None:
    await stored(store, nv("ns", "c1", b"x", author="alice", status="draft"))
    with pytest.raises(InvalidTransition, match="author"):
        await store.approve("ns", 1, "alice")
    with pytest.raises(InvalidTransition):
        await store.approve("ns", 1, "")
    assert (await store.get("ns", 1)).info.status == "draft"
    info = await store.approve("ns", 1, "bob")
    assert (info.status, info.approved_by) == ("approved", "bob")
    assert await store.approve("ns", 1, "bob") == info  # a redelivered approval: no change
    with pytest.raises(InvalidTransition, match="only a draft"):
        await store.approve("ns", 1, "carol")
    with pytest.raises(NotFound):
        await store.approve("ns", 7, "bob")


async def test_promote_supersedes_the_previous_production(store: Store) -> None:
    await store.append(
        [nv("ns", "c1", b"1"), nv("ns", "c2", b"2"), nv("ns", "c3", b"3", status="draft")]
    )
    with pytest.raises(InvalidTransition, match="draft"):
        await store.promote("ns", 3)
    first = await store.promote("ns", 1)
    assert (first.info.status, first.previous) == ("production", None)
    second = await store.promote("ns", 2)
    assert (second.info.status, second.previous) == ("production", 1)
    assert (await store.get("ns", 1)).info.status == "superseded"
    assert (await store.head("ns")).production == 2
    again = await store.promote("ns", 2)  # idempotent
    assert again.info.status == "production"
    back = await store.promote("ns", 1)  # an operator may put a superseded version back
    assert back.previous == 2
    statuses = {v.version: v.status for v in await store.history("ns")}
    assert statuses == {1: "production", 2: "superseded", 3: "draft"}


async def test_concurrent_promotions_leave_exactly_one_production(backend: Backend) -> None:
    clients = [backend.make() for _ in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        for c in clients:
            await stack.enter_async_context(c)
        await clients[0].append([nv("ns", f"c{i}", b"%d" % i) for i in range(1, 7)])
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for round_ in range(3):
                    for v in range(1, 7):
                        tg.start_soon(clients[(v + round_) % 3].promote, "ns", v)
        history = await clients[0].history("ns")
        head = await clients[0].head("ns")
    production = [v.version for v in history if v.status == "production"]
    assert production == [head.production]
    assert {v.status for v in history if v.version != head.production} == {"superseded"}


async def test_reject(store: Store) -> None:
    await store.append([nv("ns", "c1", b"1", status="draft"), nv("ns", "c2", b"2")])
    assert (await store.reject("ns", 1)).status == "rejected"
    assert (await store.reject("ns", 1)).status == "rejected"
    with pytest.raises(InvalidTransition):
        await store.promote("ns", 1)
    with pytest.raises(InvalidTransition):
        await store.approve("ns", 1, "bob")
    await store.promote("ns", 2)
    with pytest.raises(InvalidTransition, match="history"):
        await store.reject("ns", 2)


async def test_last_good_is_one_pointer_per_namespace(store: Store) -> None:
    await store.append(
        [nv("ns", "c1", b"1"), nv("ns", "c2", b"2"), nv("ns", "c3", b"3", status="draft")]
    )
    assert (await store.mark_last_good("ns", 1)).last_good is True
    assert (await store.mark_last_good("ns", 2)).last_good is True
    flags = {v.version: v.last_good for v in await store.history("ns")}
    assert flags == {1: False, 2: True, 3: False}
    assert (await store.get("ns", 2)).info.last_good is True
    assert (await store.head("ns")).last_good == 2
    with pytest.raises(InvalidTransition):
        await store.mark_last_good("ns", 3)
    await store.reject("ns", 3)
    with pytest.raises(InvalidTransition):
        await store.mark_last_good("ns", 3)
    assert (await store.head("ns")).last_good == 2


# -- policies -----------------------------------------------------------------------------------


async def test_policy_default_and_round_trip(store: Store) -> None:
    assert await store.get_policy("ns") == Policy(namespace="ns")
    policy = Policy(
        namespace="ns",
        format="yaml",
        json_schema={"type": "object", "required": ["port"]},
        require_approval=True,
        max_bytes=4096,
        selector={"dc": "eu1"},
    )
    await store.set_policy(policy)
    assert await store.get_policy("ns") == policy
    assert await store.namespaces() == ["ns"]
    with pytest.raises(InvalidConfig, match="JSON Schema"):
        await store.set_policy(Policy(namespace="ns", json_schema={"type": "nonsense"}))
    assert await store.get_policy("ns") == policy


# -- backup, restore, integrity -----------------------------------------------------------------


async def _populated(store: Store) -> NamespaceExport:
    await store.set_policy(Policy(namespace="ns", format="text"))
    await store.append(
        [
            nv("ns", "c1", b"one\n", format="text", selector={"dc": "eu1"}),
            nv("ns", "c2", b"two\n", format="text", status="draft", author="alice"),
            nv("ns", "c3", b"one\n", format="text", rollback_of=1, strategy="linear:25%"),
            nv("ns", "c4", bytes(range(256)), format="text"),
        ]
    )
    await store.approve("ns", 2, "bob")
    await store.promote("ns", 1)
    await store.promote("ns", 2)
    await store.mark_last_good("ns", 1)
    return await store.export("ns")


async def test_export_import_round_trip_is_exact(backend: Backend, store: Store) -> None:
    exported = await _populated(store)
    assert [sv.info.status for sv in exported.versions] == [
        "superseded",
        "production",
        "approved",
        "approved",
    ]
    encoded = msgspec.json.encode(exported)  # backups travel as JSON
    restored = msgspec.json.decode(encoded, type=NamespaceExport)
    assert restored == exported
    async with backend.fresh() as other:
        assert await other.import_(restored) == 4
        assert await other.export("ns") == exported
        assert await other.import_(restored) == 0  # identical: nothing to do
        assert (await other.head("ns")).newest == 4
        assert await stored(other, nv("ns", "c5", b"five")) == 5
        with pytest.raises(VersionConflict, match="already has 5 versions"):
            await other.import_(restored)


async def test_import_refuses_tampered_bytes(backend: Backend, store: Store) -> None:
    exported = await _populated(store)
    versions = list(exported.versions)
    versions[1] = msgspec.structs.replace(versions[1], content=b"TWO\n")
    tampered = msgspec.structs.replace(exported, versions=versions)
    async with backend.fresh() as other:
        with pytest.raises(InvalidConfig, match="version 2: content sha256"):
            await other.import_(tampered)
        assert await other.namespaces() == []
        assert (await other.head("ns")).newest == 0


async def test_import_refuses_incoherent_exports(backend: Backend, store: Store) -> None:
    exported = await _populated(store)
    gap = msgspec.structs.replace(exported, versions=exported.versions[1:])
    two_prod = msgspec.structs.replace(exported, production=1)
    async with backend.fresh() as other:
        for bad in (gap, two_prod):
            with pytest.raises(InvalidConfig):
                await other.import_(bad)
        assert await other.namespaces() == []


async def test_integrity_check_finds_corrupt_bytes(backend: Backend, store: Store) -> None:
    await store.append([nv("ns", f"c{i}", b"content %d" % i) for i in range(1, 6)])
    report = await store.check_integrity("ns")
    assert report.ok and report.checked == 5
    await backend.corrupt("ns", 3)
    report = await store.check_integrity("ns")
    assert not report.ok
    assert report.corrupt == [3] and report.missing == []


async def test_random_batches_match_a_model(store: Store) -> None:
    """Random mixes of new, repeated, conflicting and conditional changes, checked against a
    plain-Python model of the rules (seeded; the seed is in the assertion message)."""
    seed = random.randrange(2**32)
    rnd = random.Random(seed)
    model: dict[str, list[tuple[str, bytes]]] = {"m1": [], "m2": []}
    for _ in range(15):
        batch = []
        for _ in range(rnd.randint(1, 8)):
            ns = rnd.choice(["m1", "m2"])
            cid = f"c{rnd.randint(0, 25)}"
            content = b"v%d" % rnd.randint(0, 3)
            base = rnd.choice([None, None, len(model[ns]), max(len(model[ns]) - 1, 0)])
            batch.append(nv(ns, cid, content, base=base))
        results = await store.append(batch)
        for item, result in zip(batch, results, strict=True):
            rows = model[item.namespace]
            prior = next((i for i, (c, _) in enumerate(rows) if c == item.change_id), None)
            if prior is not None:
                want = "duplicate" if rows[prior][1] == item.content else "conflict"
            elif item.base is not None and item.base != len(rows):
                want = "conflict"
            else:
                rows.append((item.change_id, item.content))
                want = "stored"
            assert result.outcome == want, f"seed={seed} item={item} result={result}"
    for ns, rows in model.items():
        history = list(reversed(await store.history(ns, limit=1000)))
        assert [(v.change_id, v.version) for v in history] == [
            (c, i) for i, (c, _) in enumerate(rows, start=1)
        ], f"seed={seed}"
