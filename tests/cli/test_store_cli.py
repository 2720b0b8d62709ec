"""``confbus publish/history/show/diff/approve/policy/backup/restore``: the real command (a
subprocess) against a real nats-server and version-store."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from confbus.procs.nats import NatsServer
from confbus.runtime.bus import connect, provision
from confbus.runtime.errors import InvalidInput
from confbus.schemas import subjects
from confbus.schemas.api import store as store_api
from confbus.schemas.streams import CFG_CHANGES
from tests.version_store.test_service_helpers import Stack, cli, stack, start_stack

pytestmark = pytest.mark.anyio
__all__ = ["stack"]


def write(tmp: Path, name: str, data: bytes) -> str:
    path = tmp / name
    path.write_bytes(data)
    return str(path)


async def test_publish_show_history_diff(stack: Stack, tmp_path: Path) -> None:
    ns = "cli-basic"
    contents = [
        b'{"a": 1}\n',
        b'{"a": 2, "name": "caf\xc3\xa9"}',  # no final newline, not ASCII
        b'{\r\n  "a": 3\r\n}\r\n',  # CRLF
        b"[]",
    ]
    for i, content in enumerate(contents, start=1):
        res = await cli(
            stack.url, "publish", ns, write(tmp_path, f"c{i}.json", content), "-m", f"m{i}"
        )
        sha = hashlib.sha256(content).hexdigest()
        assert res.code == 0, res.err
        assert res.text == f"{ns} v{i} sha256={sha} (approved)\n"
    # The same publish again (a CI retry) is the same version, not a new one.
    again = await cli(stack.url, "publish", ns, str(tmp_path / "c4.json"))
    assert again.code == 0 and again.text.startswith(f"{ns} v4 ")
    # The same content as an older version, published again later, is a new version.
    back = await cli(stack.url, "publish", ns, str(tmp_path / "c1.json"))
    assert back.code == 0 and back.text.startswith(f"{ns} v5 ")
    contents.append(contents[0])

    history = await cli(stack.url, "history", ns, "--json")
    versions = json.loads(history.out)
    assert [v["version"] for v in versions] == [5, 4, 3, 2, 1]
    for v in versions:
        shown = await cli(stack.url, "show", ns, str(v["version"]))
        assert shown.code == 0
        assert hashlib.sha256(shown.out).hexdigest() == v["sha256"]  # the exact bytes
    # And through a real process's stdout, for the one without a final newline.
    shown = await cli(stack.url, "show", ns, "2", subprocess_=True)
    assert shown.code == 0 and shown.out == contents[1]
    latest = await cli(stack.url, "show", ns)
    assert latest.out == contents[-1]
    human = await cli(stack.url, "history", ns, "--limit", "2")
    lines = human.text.splitlines()
    assert len(lines) == 2 and lines[0].startswith("v5") and lines[1].startswith("v4")
    assert "m4" in lines[1] and "auto-" in lines[0]

    diff = await cli(stack.url, "diff", ns, "1", "2")
    assert diff.code == 0
    assert f"--- {ns} v1" in diff.text and '-{"a": 1}' in diff.text and "+" in diff.text
    missing = await cli(stack.url, "show", ns, "production")
    assert missing.code == 1 and "not found" in missing.err


async def test_rejections_are_clear_and_store_nothing(stack: Stack, tmp_path: Path) -> None:
    schema = write(
        tmp_path,
        "schema.json",
        b'{"type": "object", "properties": {"db": {"properties": {"port": {"type": "integer"}}}}}',
    )
    res = await cli(stack.url, "policy", "cli-schema", "--schema", schema, "--max-bytes", "64")
    assert res.code == 0, res.err
    assert json.loads(res.text)["json_schema"]["type"] == "object"

    cases = [
        ("bad.json", b'{"db": ', "invalid JSON", "line 1"),
        ("port.json", b'{"db": {"port": "5432"}}', "is not of type 'integer'", "$.db.port"),
        ("big.json", b'{"pad": "' + b"x" * 100 + b'"}', "limit", "size"),
    ]
    for name, content, reason, where in cases:
        res = await cli(stack.url, "publish", "cli-schema", write(tmp_path, name, content))
        assert res.code == 1, res.err
        assert reason in res.err and where in res.err and res.out == b""
    as_json = await cli(stack.url, "publish", "cli-schema", str(tmp_path / "port.json"), "--json")
    assert as_json.code == 1
    out = json.loads(as_json.out)
    assert out["rejected"] is True and out["where"] == "$.db.port"

    assert (await cli(stack.url, "policy", "cli-yaml", "--format", "yaml")).code == 0
    res = await cli(stack.url, "publish", "cli-yaml", write(tmp_path, "c.yaml", b"a: [1,\nb"))
    assert res.code == 1 and "invalid YAML" in res.err
    assert (await cli(stack.url, "policy", "cli-toml", "--format", "toml")).code == 0
    res = await cli(stack.url, "publish", "cli-toml", write(tmp_path, "c.toml", b"a = \n"))
    assert res.code == 1 and "invalid TOML" in res.err
    # A file whose extension says another format than the namespace's is refused, with the fix.
    res = await cli(stack.url, "publish", "cli-toml", write(tmp_path, "c.json", b"{}"))
    assert res.code == 1 and "confbus policy cli-toml --format json" in res.err

    for ns in ("cli-schema", "cli-yaml", "cli-toml"):
        assert json.loads((await cli(stack.url, "history", ns, "--json")).out) == []

    # A bad namespace is refused before anything is published.
    async with stack.client() as client:
        before = (await client.bus.js.stream_info(CFG_CHANGES.name)).state.last_seq
        res = await cli(stack.url, "publish", "Bad.NS", str(tmp_path / "c.json"))
        assert res.code == 2 and "invalid namespace 'Bad.NS'" in res.err
        res = await cli(stack.url, "publish", "ok", str(tmp_path / "c.json"), "--id", "no spaces")
        assert res.code == 2 and "invalid change id" in res.err
        assert (await client.bus.js.stream_info(CFG_CHANGES.name)).state.last_seq == before
    res = await cli(stack.url, "policy", "cli-schema", "--strategy", "sometimes")
    assert res.code == 1 and "unknown rollout strategy" in res.err


async def test_publish_reads_the_store_once_before_the_change(stack: Stack, tmp_path: Path) -> None:
    # Without --id the change id comes from the newest version; that one read also tells a
    # new namespace (a CI step pays each round trip before its change even leaves).
    ns = "cli-one-read"
    seen: list[str] = []

    async def note(msg: Msg) -> None:
        seen.append(msg.subject)

    async with stack.client() as client:
        for read in (store_api.GET, store_api.HISTORY):
            await client.bus.nc.subscribe(read.pattern, cb=note)
        await client.bus.nc.subscribe(subjects.change(ns), cb=note)
        for i, said in ((1, True), (2, False)):
            seen.clear()
            res = await cli(
                stack.url, "publish", ns, write(tmp_path, f"{i}.json", b'{"i": %d}' % i)
            )
            assert res.code == 0 and res.text.startswith(f"{ns} v{i} "), res.err
            assert ("does not exist yet: creating it" in res.err) is said, res.err
            await client.bus.nc.flush()
            sent = seen.index(subjects.change(ns))
            assert seen[:sent] == [store_api.GET.address], seen


async def test_stale_base_and_dry_run_store_nothing(stack: Stack, tmp_path: Path) -> None:
    ns = "cli-base"
    one = write(tmp_path, "one.json", b'{"v": 1}\n')
    two = write(tmp_path, "two.json", b'{"v": 2}\n')
    assert (await cli(stack.url, "publish", ns, one, "--base", "0")).code == 0
    stale = await cli(stack.url, "publish", ns, two, "--base", "0")
    assert stale.code == 1 and "base 0 is stale: newest is 1" in stale.err

    dry = await cli(stack.url, "publish", ns, two, "--dry-run")
    assert dry.code == 0, dry.err
    assert '-{"v": 1}' in dry.text and '+{"v": 2}' in dry.text
    assert "nothing was stored" in dry.err
    bad = await cli(stack.url, "publish", ns, write(tmp_path, "bad.json", b"{"), "--dry-run")
    assert bad.code == 1 and "invalid JSON" in bad.err
    stale_dry = await cli(stack.url, "publish", ns, two, "--dry-run", "--base", "0")
    assert stale_dry.code == 1 and "stale" in stale_dry.err
    history = json.loads((await cli(stack.url, "history", ns, "--json")).out)
    assert [v["version"] for v in history] == [1]


async def test_approval_needs_someone_else(stack: Stack, tmp_path: Path) -> None:
    ns = "cli-approve"
    assert (await cli(stack.url, "policy", ns, "--require-approval")).code == 0
    res = await cli(stack.url, "publish", ns, write(tmp_path, "c.json", b"{}"), "--author", "alice")
    assert res.code == 0, res.err
    assert "(draft: waiting for approval by someone other than alice)" in res.text
    self_approval = await cli(stack.url, "approve", ns, "1", "--as", "alice")
    assert self_approval.code == 1 and "approved by someone else" in self_approval.err
    approved = await cli(stack.url, "approve", ns, "1", env={"CONFBUS_IDENTITY": "bob"})
    assert approved.code == 0 and approved.text.endswith("(approved)\n")
    info = json.loads((await cli(stack.url, "show", ns, "1", "--info", "--json")).out)
    assert (info["status"], info["approved_by"]) == ("approved", "bob")


async def test_backup_and_restore_round_trip_and_refuse_tampering(
    stack: Stack, tmp_path: Path
) -> None:
    src = "cli-backup"
    assert (
        await cli(stack.url, "policy", src, "--require-approval", "--strategy", "canary:2")
    ).code == 0
    for i in range(3):
        res = await cli(
            stack.url,
            "publish",
            src,
            write(tmp_path, f"b{i}.json", f'{{"i": {i}}}'.encode()),
            "--author",
            "al",
        )
        assert res.code == 0, res.err
    assert (await cli(stack.url, "approve", src, "2", "--as", "bo")).code == 0
    async with stack.client() as client:
        await client.promote(src, 2, actor="t")
        await client.mark_good(src, 2, actor="t")
    out = tmp_path / "backup.json"
    res = await cli(stack.url, "backup", "--out", str(out))
    assert res.code == 0, res.err
    assert (out.stat().st_mode & 0o777) == 0o600

    tampered = json.loads(out.read_bytes())
    victim = next(n for n in tampered["namespaces"] if n["namespace"] == src)
    victim["versions"][1]["content"] = base64.b64encode(b'{"i": 666}').decode()
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(tampered))

    fresh = start_stack(tmp_path / "fresh")
    try:
        refused = await cli(fresh.url, "restore", str(bad))
        assert refused.code == 1 and "does not match its recorded hash" in refused.err
        async with fresh.client() as client:
            assert await client.namespaces() == []  # nothing half restored
        res = await cli(fresh.url, "restore", str(out))
        assert res.code == 0, res.err
        assert f"{src}: 3 version(s) restored" in res.text
        again = await cli(fresh.url, "restore", str(out))
        assert again.code == 0 and f"{src}: already there, unchanged" in again.text
        async with stack.client() as a, fresh.client() as b:
            names = await a.namespaces()
            assert await b.namespaces() == names
            for ns in names:
                assert await a.export_namespace(ns) == await b.export_namespace(ns)
            # The store checks hashes itself too, not only the CLI.
            original = await a.export_namespace(src)
            forged = original.versions[0]
            forged = type(forged)(info=forged.info, content=b"forged")
            broken = type(original)(
                namespace=src, versions=[forged, *original.versions[1:]], policy=original.policy
            )
            with pytest.raises(InvalidInput, match="does not match"):
                await b.import_namespace(broken)
            # And restoring continues numbering where the backup ended.
            info = await b.publish(src, b'{"i": 3}', author="al")
            assert info.version == 4
    finally:
        fresh.stop()


async def test_unreachable_is_exit_3(tmp_path: Path) -> None:
    res = await cli("nats://127.0.0.1:9", "history", "anything", subprocess_=True)
    assert res.code == 3 and "unreachable" in res.err
    # NATS is up, but no version store answers: the publish cannot learn its outcome.
    nats = NatsServer(data_dir=tmp_path / "nats").start()
    try:
        bus = await connect(nats.url, name="test")
        try:
            await provision(bus)
            c = write(tmp_path, "c.json", b"{}")
            res = await cli(nats.url, "publish", "ns", c, "--id", "c1", "--timeout", "1")
            assert res.code == 3, res.err
            assert "no outcome for change c1" in res.err and "--id c1" in res.err
            info = await bus.js.stream_info(CFG_CHANGES.name)
            assert info.state.messages == 1  # it is queued, and kept for the store
        finally:
            await bus.close()
    finally:
        nats.stop()
