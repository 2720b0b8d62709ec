"""NamespaceDisk against the real file system: the node's side of the 2PC
(docs/design.md §4, §5)."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from confbus.agent.disk import NamespaceDisk
from confbus.agent.record import SlotRecord
from confbus.agent.state import (
    CommitOutcome,
    IntegrityError,
    Refused,
    StateCorrupt,
    VersionNotOnDisk,
)
from confbus.agent.state_io import FileHash, FileMode
from confbus.schemas.names import Format
from confbus.schemas.txn import Prepare
from tests.agent.support import (
    NS,
    commit_version,
    content_for,
    make_prepare,
    open_disk,
    record_bytes,
    sha,
    state_record,
)


def open_disk_state(state_dir: Path) -> dict[str, Any]:
    """The namespace's state record as it is on disk now."""
    record: dict[str, Any] = msgspec.json.decode(record_bytes(state_dir / NS) or b"")
    return record


def leftovers(directory: Path) -> list[str]:
    """Names in ``directory`` that belong to confbus rather than to the app."""
    return sorted(n for n in os.listdir(directory) if ".confbus-" in n)


# --- first boot -------------------------------------------------------------------------


def test_first_boot_says_no_config_and_writes_nothing(root: Path, live: Path) -> None:
    state = open_disk(root).load()
    assert not state.has_config
    assert state.status == "no-config"
    assert state.applied_version is None and state.live_sha256 is None
    assert state.to_namespace_state().status == "no-config"
    assert list(root.iterdir()) == []  # not even the state dir was created


# --- the happy paths --------------------------------------------------------------------


def test_stage_seal_commit_switches_the_live_file_byte_for_byte(
    disk: NamespaceDisk, live: Path, state_dir: Path
) -> None:
    commit_version(disk, 1)
    body = '{"a": 1, "unicode": "é"}\r\n'.encode()  # exact bytes: CRLF, non-ASCII
    p = make_prepare(2, body, txid="t2")

    staged = disk.stage(p)
    assert not staged.already_prepared
    assert staged.path.parent == live.parent  # same directory: the rename never crosses fs
    assert staged.path.name == ".config.json.confbus-staged-t2"
    assert staged.path.read_bytes() == body
    assert not disk.snapshot().in_doubt  # no PREPARED record until sealed
    disk.seal("t2")
    assert disk.snapshot().in_doubt
    assert live.read_bytes() == content_for(1)  # while in doubt the app keeps the old file

    assert disk.commit("t2", 2, p.sha256) is CommitOutcome.APPLIED
    assert live.read_bytes() == body
    state = disk.snapshot()
    assert (state.applied_version, state.applied_sha256, state.live_sha256) == (
        2,
        p.sha256,
        p.sha256,
    )
    assert state.prepared is None and state.status == "ok" and not state.drifted
    assert state.history == (1, 2)
    assert disk.version_bytes(2) == body
    # On disk the PREPARED record stays the commit's record until the agent has announced
    # the apply and flushes (a reload meanwhile finishes the commit from it).
    assert open_disk_state(state_dir)["prepared"]["txid"] == "t2"
    assert disk.flush() == state
    assert open_disk_state(state_dir)["prepared"] is None
    assert open_disk_state(state_dir)["applied"]["version"] == 2
    assert (state_dir / NS / "versions" / "2").read_bytes() == body
    assert leftovers(live.parent) == []
    hb = state.to_namespace_state()
    assert (hb.applied_version, hb.sha256, hb.applied_sha256, hb.prepared_txid) == (
        2,
        p.sha256,
        p.sha256,
        None,
    )


def test_abort_drops_staged_file_and_record_and_keeps_the_live_file(
    disk: NamespaceDisk, live: Path
) -> None:
    commit_version(disk, 1)
    p = make_prepare(2, txid="t2")
    disk.stage(p)
    disk.seal("t2")
    assert disk.abort("t2") is True
    assert live.read_bytes() == content_for(1)
    assert leftovers(live.parent) == []
    assert disk.snapshot().prepared is None
    assert disk.abort("t2") is False  # idempotent
    assert disk.abort("never-seen") is False  # unknown txid: no-op
    # An aborted transaction can never be applied, even by a stray commit.
    assert disk.commit("t2", 2, p.sha256) is CommitOutcome.MISSING
    assert live.read_bytes() == content_for(1)


def test_commit_is_idempotent(disk: NamespaceDisk, live: Path) -> None:
    p = make_prepare(1, txid="t1")
    disk.stage(p)
    disk.seal("t1")
    assert disk.commit("t1", 1, p.sha256) is CommitOutcome.APPLIED
    before = (live.stat().st_ino, live.stat().st_mtime_ns)
    assert disk.commit("t1", 1, p.sha256) is CommitOutcome.NOT_NEWER
    assert (live.stat().st_ino, live.stat().st_mtime_ns) == before


def test_redelivered_prepare_votes_yes_again(disk: NamespaceDisk) -> None:
    p = make_prepare(1, txid="t1")
    disk.stage(p)
    disk.seal("t1")
    again = disk.stage(p)
    assert again.already_prepared and again.version == 1
    disk.seal("t1")  # idempotent too


def test_replaced_live_file_keeps_its_mode(disk: NamespaceDisk, live: Path) -> None:
    commit_version(disk, 1)
    live.chmod(0o640)  # e.g. a config holding a password, readable by the app's group only
    commit_version(disk, 2)
    assert stat.S_IMODE(live.stat().st_mode) == 0o640


def test_state_dir_is_private(disk: NamespaceDisk, state_dir: Path) -> None:
    commit_version(disk, 1)
    assert stat.S_IMODE((state_dir / NS).stat().st_mode) == 0o700
    for slot in ("state.a", "state.b"):
        assert stat.S_IMODE((state_dir / NS / slot).stat().st_mode) == 0o600
    assert stat.S_IMODE((state_dir / NS / "versions" / "1").stat().st_mode) == 0o600


def test_a_history_copy_spoilt_by_a_power_cut_is_never_trusted(
    root: Path, live: Path, state_dir: Path
) -> None:
    """``flush`` copies an applied version into the history without fsync: after a power cut
    the copy may hold anything. Every reader checks it against the version's sha256."""
    disk = open_disk(root)
    disk.load()
    commit_version(disk, 1)
    commit_version(disk, 2)
    kept = state_dir / NS / "versions" / "2"
    kept.write_bytes(b"\0" * 7)  # what a power cut may leave of an unsynced write
    with pytest.raises(IntegrityError):
        disk.mark_last_good(2)  # never records spoilt bytes as the last known good
    disk = open_disk(root)
    assert disk.load().history == (1, 2)
    assert kept.read_bytes() == content_for(2)  # a restart copies it back from the live file
    disk.mark_last_good(2)
    live.write_bytes(b"{}")  # an edit by hand (in place)
    assert disk.restore_last_good() == 2 and live.read_bytes() == content_for(2)
    # A kept version that is not the applied one: only with the sha256 to check it against.
    with pytest.raises(VersionNotOnDisk):
        disk.mark_last_good(1)
    disk.mark_last_good(1, sha256=sha(content_for(1)))


# --- refusals ---------------------------------------------------------------------------


def refusal(disk: NamespaceDisk, prepare: Prepare) -> Refused:
    with pytest.raises(Refused) as info:
        disk.stage(prepare)
    return info.value


def test_sha256_mismatch_is_refused_and_nothing_is_staged(disk: NamespaceDisk, live: Path) -> None:
    no = refusal(disk, make_prepare(1, sha256="0" * 64))
    assert no.kind == "sha256" and "0" * 64 in no.reason
    assert not live.parent.exists() or leftovers(live.parent) == []


@pytest.mark.parametrize(
    ("fmt", "content", "expected"),
    [
        ("json", b'{"a": 1,}', "invalid JSON"),
        ("json", b"", "invalid JSON"),
        ("yaml", b"a: [1, 2\nb: 3\n", "invalid YAML"),
        ("yaml", b"a: 1\n---\nb: 2\n", "invalid YAML"),  # one document per config
        ("toml", b'a = "x"\na = "y"\n', "invalid TOML"),
        ("toml", b"[section\n", "invalid TOML"),
        ("text", b"caf\xe9\n", "not UTF-8 at byte 3"),
        ("yaml", b"\xff\xfe", "not UTF-8"),
    ],
)
def test_content_that_does_not_parse_is_refused_with_the_parser_error(
    disk: NamespaceDisk, fmt: Format, content: bytes, expected: str
) -> None:
    no = refusal(disk, make_prepare(1, content, fmt=fmt))
    assert no.kind == "format"
    assert expected in no.reason


@pytest.mark.parametrize(
    ("fmt", "content"),
    [
        ("json", b'{"a": [1, 2, {"b": null}]}'),
        ("yaml", b"a: 1\nb: [x, y]\n"),
        ("toml", b'[server]\nport = 8080\nname = "x"\n'),
        ("text", "héllo\n".encode()),
    ],
)
def test_each_format_accepts_well_formed_content(
    disk: NamespaceDisk, live: Path, fmt: Format, content: bytes
) -> None:
    p = make_prepare(1, content, fmt=fmt)
    disk.stage(p)
    disk.seal(p.txid)
    assert disk.commit(p.txid, 1, p.sha256) is CommitOutcome.APPLIED
    assert live.read_bytes() == content


def test_lower_epoch_is_refused_and_the_epoch_survives_a_restart(root: Path) -> None:
    disk = open_disk(root)
    disk.load()
    assert disk.observe_epoch(3) is True
    assert disk.observe_epoch(2) is False  # monotonic
    no = refusal(disk, make_prepare(1, epoch=2))
    assert no.kind == "stale-epoch"
    fresh = open_disk(root)
    assert fresh.load().highest_epoch == 3
    assert refusal(fresh, make_prepare(1, epoch=2)).kind == "stale-epoch"
    fresh.stage(make_prepare(1, epoch=3))  # the current epoch is fine


def test_a_prepare_raises_the_highest_epoch(disk: NamespaceDisk) -> None:
    disk.stage(make_prepare(1, epoch=5))
    assert disk.snapshot().highest_epoch == 5


def test_one_prepared_transaction_per_namespace(disk: NamespaceDisk) -> None:
    disk.stage(make_prepare(1, txid="t1"))
    disk.seal("t1")
    no = refusal(disk, make_prepare(2, txid="t2"))
    assert no.kind == "busy" and "t1" in no.reason
    conflict = refusal(disk, make_prepare(2, txid="t1"))  # same txid, other version
    assert conflict.kind == "conflict"
    disk.abort("t1")
    disk.stage(make_prepare(2, txid="t2"))  # free again


def test_an_unsealed_staging_is_replaced_by_a_newer_prepare(
    disk: NamespaceDisk, live: Path
) -> None:
    # Staged but never sealed (its validation failed or the agent stopped): no yes vote was
    # sent, so the next prepare replaces it.
    disk.stage(make_prepare(1, txid="t1"))
    disk.stage(make_prepare(2, txid="t2"))
    assert leftovers(live.parent) == [".config.json.confbus-staged-t2"]
    with pytest.raises(Refused):
        disk.seal("t1")
    disk.seal("t2")


def test_version_not_higher_than_applied_is_refused(disk: NamespaceDisk) -> None:
    commit_version(disk, 2)
    assert refusal(disk, make_prepare(2, txid="again")).kind == "not-newer"
    assert refusal(disk, make_prepare(1)).kind == "not-newer"


def test_wrong_namespace_is_refused(disk: NamespaceDisk) -> None:
    assert refusal(disk, make_prepare(1, namespace="billing")).kind == "wrong-namespace"


def test_seal_is_fenced_by_an_epoch_seen_during_validation(disk: NamespaceDisk, live: Path) -> None:
    disk.stage(make_prepare(1, txid="t1", epoch=1))
    disk.observe_epoch(2)  # a new coordinator took over while the validator ran
    with pytest.raises(Refused) as info:
        disk.seal("t1")
    assert info.value.kind == "stale-epoch"
    assert leftovers(live.parent) == []


def test_seal_refuses_a_staged_file_changed_on_disk(disk: NamespaceDisk) -> None:
    staged = disk.stage(make_prepare(1, txid="t1"))
    staged.path.write_bytes(b'{"rewritten": "by a validator"}')
    with pytest.raises(Refused) as info:
        disk.seal("t1")
    assert info.value.kind == "sha256"
    assert not staged.path.exists()


# --- restart ----------------------------------------------------------------------------


def test_restart_recovers_the_in_doubt_transaction(root: Path, live: Path) -> None:
    first = open_disk(root)
    first.load()
    commit_version(first, 1)
    p = make_prepare(2, txid="t2", epoch=4)
    first.stage(p)
    first.seal("t2")
    first.save_stream_seq(41)
    del first  # "crash": nothing is closed or flushed beyond what the calls made durable

    again = open_disk(root)
    state = again.load()
    assert state.in_doubt and state.status == "in-doubt"
    assert state.prepared is not None
    assert (state.prepared.txid, state.prepared.version, state.prepared.epoch) == ("t2", 2, 4)
    assert (state.applied_version, state.stream_seq, state.highest_epoch) == (1, 41, 4)
    assert state.to_namespace_state().prepared_txid == "t2"
    assert live.read_bytes() == content_for(1)
    assert again.stage(p).already_prepared  # redelivered prepare: still yes
    assert again.commit("t2", 2, p.sha256) is CommitOutcome.APPLIED
    assert live.read_bytes() == content_for(2)


def test_restart_sweeps_stale_staged_and_temp_files_but_not_the_apps(
    root: Path, live: Path, state_dir: Path
) -> None:
    disk = open_disk(root)
    disk.load()
    commit_version(disk, 1)
    disk.stage(make_prepare(2, txid="t2"))  # staged, never sealed: no vote went out
    (live.parent / ".config.json.confbus-tmp-deadbeef").write_bytes(b"torn")
    (live.parent / "..config.json.confbus-staged-t9.confbus-tmp-0a").write_bytes(b"torn")
    (state_dir / NS / ".state.json.confbus-tmp-0b").write_bytes(b"{")
    (state_dir / NS / "versions" / ".7.confbus-tmp-0c").write_bytes(b"x")
    (live.parent / "other.conf").write_bytes(b"the app's own file")
    (live.parent / ".other.conf.confbus-tmp-1").write_bytes(b"another agent's")

    state = open_disk(root).load()
    assert not state.in_doubt and state.applied_version == 1
    assert leftovers(live.parent) == [".other.conf.confbus-tmp-1"]
    assert (live.parent / "other.conf").exists()
    assert leftovers(state_dir / NS) == []
    assert leftovers(state_dir / NS / "versions") == []


def test_stream_sequence_is_persisted(root: Path) -> None:
    disk = open_disk(root)
    disk.load()
    disk.save_stream_seq(7)
    disk.save_stream_seq(9)
    assert open_disk(root).load().stream_seq == 9


def test_noting_the_stream_sequence_does_not_wait_for_a_disk_step(root: Path) -> None:
    """The event loop notes every message's sequence while a worker may hold the namespace's
    disk for a whole step (a fsync): every agent of a host would wait with it."""
    disk = open_disk(root)
    disk.load()
    holding, release = threading.Event(), threading.Event()
    waited_out: list[bool] = []

    def disk_step() -> None:
        with disk._lock:
            holding.set()
            waited_out.append(not release.wait(10))

    worker = threading.Thread(target=disk_step)
    worker.start()
    assert holding.wait(10)
    disk.note_stream_seq(12)  # before the fix: back only when the step gave up, 10 s later
    release.set()
    worker.join()
    assert waited_out == [False]
    disk.observe_epoch(3)  # the next state write carries the sequence
    assert open_disk(root).load().stream_seq == 12


def test_unreadable_state_is_reported_not_overwritten(root: Path, state_dir: Path) -> None:
    commit_version(open_disk(root), 1)
    slots = [state_dir / NS / "state.a", state_dir / NS / "state.b"]
    for slot in slots:
        slot.write_bytes(b"garbage")
    with pytest.raises(StateCorrupt) as info:
        open_disk(root).load()
    assert str(state_dir / NS / "state.{a,b}") in str(info.value)
    assert [slot.read_bytes() for slot in slots] == [b"garbage", b"garbage"]


def test_a_torn_slot_falls_back_to_the_previous_record(root: Path, state_dir: Path) -> None:
    """A crash mid-write spoils the slot being written; the other holds the state before it."""
    disk = open_disk(root)
    disk.load()
    commit_version(disk, 1)
    disk.save_stream_seq(7)
    disk.save_stream_seq(9)
    ns_dir = state_dir / NS
    newest = max(("state.a", "state.b"), key=lambda n: int((ns_dir / n).read_bytes().split()[2]))
    data = (ns_dir / newest).read_bytes()
    (ns_dir / newest).write_bytes(data[: len(data) - 5])  # the write of seq 9, cut short
    state = open_disk(root).load()
    assert (state.applied_version, state.stream_seq) == (1, 7)


def test_a_write_without_fsync_never_overwrites_the_newest_durable_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = SlotRecord(tmp_path, "state", FileMode(0o600))
    a, b = record.paths

    def body(path: Path) -> bytes:
        return path.read_bytes().partition(b"\n")[2]

    record.write(b"one")  # → a
    record.write(b"two")  # → b: the newest durable record
    spy = FsSpy(monkeypatch)
    record.write(b"three", durable=False)
    record.write(b"four", durable=False)
    assert (body(a), body(b), spy.events) == (b"four", b"two", [])
    assert record.read() == b"four"  # a restart takes it, and makes it durable first
    assert spy.events == [("fsync", str(a.resolve()), "")]
    record.write(b"five", durable=False)  # so now b is the one to write
    assert (body(a), body(b)) == (b"four", b"five")
    # A power cut loses what was never fsynced (here: torn); the durable record is whole.
    b.write_bytes(b.read_bytes()[:-2])
    assert SlotRecord(tmp_path, "state", FileMode(0o600)).read() == b"four"
    record.write(b"six")  # durable, into the slot the lost write went to
    assert (body(a), body(b)) == (b"four", b"six")


@pytest.mark.parametrize("loss", ["lost", "torn", "next write torn"])
def test_a_power_cut_that_loses_the_applied_record_loses_no_commit(
    root: Path, live: Path, state_dir: Path, loss: str
) -> None:
    """``flush`` records a commit without fsync; if a power cut takes that record (and the
    history's unsynced name), the PREPARED record finishes the install on restart. Also when
    the cut comes in the middle of the next (durable) write."""
    disk = open_disk(root)
    disk.load()
    commit_version(disk, 1)
    p = make_prepare(2, epoch=1)
    disk.stage(p)
    disk.seal(p.txid)
    ns_dir = state_dir / NS
    slots = {path: path.read_bytes() for path in (ns_dir / "state.a", ns_dir / "state.b")}
    assert disk.commit(p.txid, 2, p.sha256) is CommitOutcome.APPLIED
    disk.note_announced(2)
    disk.flush()
    assert open_disk_state(state_dir)["applied"]["version"] == 2
    flushed = {path: path.read_bytes() for path in slots}
    if loss == "next write torn":
        disk.save_stream_seq(99)
    for path, before in slots.items():  # the power cut
        now = path.read_bytes()
        if now != flushed[path]:
            path.write_bytes(now[: len(now) // 2])  # the next write, under way: cut short
        elif now != before:  # written by ``flush`` only, never fsynced: lost or torn
            path.write_bytes(before if loss == "lost" else now[: len(now) // 2])
    (ns_dir / "versions" / "2").unlink()
    state = open_disk(root).load()
    assert state.applied_version == 2 and state.prepared is None
    assert state.live_sha256 == state.applied_sha256 == sha(content_for(2))
    assert state.unannounced  # node.applied goes out again (same id: a no-op if it did)
    assert 2 in state.history and open_disk(root).version_bytes(2) == content_for(2)


def test_the_single_file_record_of_an_older_agent_is_read_and_replaced(
    root: Path, state_dir: Path
) -> None:
    disk = open_disk(root)
    disk.load()
    commit_version(disk, 1)
    ns_dir = state_dir / NS
    body = record_bytes(ns_dir)
    assert body is not None
    for slot in ("state.a", "state.b"):
        (ns_dir / slot).unlink()
    (ns_dir / "state.json").write_bytes(body)  # how agents before the slots kept it
    again = open_disk(root)
    assert again.load().applied_version == 1
    again.save_stream_seq(5)
    assert not (ns_dir / "state.json").exists()
    assert open_disk(root).load().stream_seq == 5


def test_a_newer_agents_record_stays_readable(root: Path, state_dir: Path) -> None:
    commit_version(open_disk(root), 1)
    record = state_record(state_dir / NS)
    data = msgspec.json.decode(record.read() or b"")
    data["field_from_the_future"] = {"x": 1}
    record.write(msgspec.json.encode(data))
    assert open_disk(root).load().applied_version == 1


# --- history and the last known good -----------------------------------------------------


def test_history_keeps_the_last_n_versions(root: Path, state_dir: Path) -> None:
    disk = open_disk(root, keep=3)
    disk.load()
    for v in range(1, 7):
        commit_version(disk, v)
    assert disk.history() == [4, 5, 6]
    for v in (4, 5, 6):
        assert disk.version_bytes(v) == content_for(v)


def test_a_commit_shows_the_pruned_history_before_its_deferred_copy_is_written(
    root: Path,
) -> None:
    # Found by the disk model: a stray decision right after a commit "changed" the history,
    # because the commit's history copy (deferred to ``flush``) prunes the oldest version.
    disk = open_disk(root, keep=3)
    disk.load()
    for v in (1, 2, 3):
        commit_version(disk, v)
    p = make_prepare(4, epoch=1)
    disk.stage(p)
    disk.seal(p.txid)
    assert disk.commit(p.txid, 4, p.sha256) is CommitOutcome.APPLIED
    before = disk.snapshot()
    assert before.history == (2, 3, 4)
    assert disk.commit(p.txid, 4, p.sha256) is CommitOutcome.NOT_NEWER  # runs the deferred work
    assert disk.snapshot() == before
    assert sorted(os.listdir(root / "state" / NS / "versions")) == ["2", "3", "4"]


def test_the_copy_of_a_new_version_takes_the_inode_of_the_one_it_pushes_out(root: Path) -> None:
    # No inode created or freed per switch for the history (on ext4 without a journal,
    # creating a file costs a search past every recently deleted inode).
    disk = open_disk(root, keep=3)
    disk.load()
    for v in (1, 2, 3):
        commit_version(disk, v)
    versions = root / "state" / NS / "versions"
    oldest = (versions / "1").stat().st_ino
    commit_version(disk, 4)
    assert sorted(os.listdir(versions)) == ["2", "3", "4"]
    assert (versions / "4").stat().st_ino == oldest
    assert (versions / "4").read_bytes() == content_for(4)  # only the new bytes, whole
    assert stat.S_IMODE((versions / "4").stat().st_mode) == 0o600
    # The file to reuse is gone (removed by hand): a new one is written instead.
    (versions / "2").unlink()
    commit_version(disk, 5)
    assert sorted(os.listdir(versions)) == ["3", "4", "5"]
    assert disk.version_bytes(5) == content_for(5) and disk.snapshot().history == (3, 4, 5)
    assert leftovers(versions) == []


def test_history_always_keeps_the_last_known_good(root: Path) -> None:
    disk = open_disk(root, keep=3)
    disk.load()
    commit_version(disk, 1)
    commit_version(disk, 2)
    disk.mark_last_good(2)
    for v in range(3, 8):
        commit_version(disk, v)
    assert disk.history() == [2, 5, 6, 7]
    assert disk.snapshot().last_good == 2


def test_restore_last_good_writes_it_as_the_live_file(root: Path, live: Path) -> None:
    disk = open_disk(root)
    disk.load()
    assert disk.restore_last_good() is None  # none yet: nothing happens
    commit_version(disk, 1)
    commit_version(disk, 2)
    disk.mark_last_good(2, sha256=sha(content_for(2)))
    commit_version(disk, 3)
    ino = live.stat().st_ino
    assert disk.restore_last_good() == 2
    assert live.read_bytes() == content_for(2)
    assert live.stat().st_ino != ino  # replaced whole, never rewritten in place
    state = open_disk(root).load()
    assert (state.applied_version, state.applied_sha256, state.live_sha256) == (
        2,
        sha(content_for(2)),
        sha(content_for(2)),
    )
    assert state.history == (1, 2, 3)  # what it ran before is still there
    # The node is behind its target now: the next version goes in as usual.
    commit_version(disk, 4)
    assert live.read_bytes() == content_for(4)


def test_last_good_for_a_version_never_run_here_needs_its_bytes(root: Path) -> None:
    disk = open_disk(root)
    disk.load()
    commit_version(disk, 5)
    with pytest.raises(VersionNotOnDisk):
        disk.mark_last_good(4, sha256=sha(content_for(4)))
    with pytest.raises(IntegrityError):
        disk.mark_last_good(4, sha256=sha(content_for(4)), content=b"other")
    disk.mark_last_good(4, sha256=sha(content_for(4)), content=content_for(4))
    assert disk.restore_last_good() == 4


def test_an_old_last_good_given_by_content_is_not_pruned(root: Path) -> None:
    disk = open_disk(root, keep=2)
    disk.load()
    for v in range(3, 7):
        commit_version(disk, v)
    disk.mark_last_good(2, sha256=sha(content_for(2)), content=content_for(2))
    assert disk.history() == [2, 5, 6]
    assert disk.restore_last_good() == 2


def test_restore_refuses_a_damaged_last_good(root: Path, state_dir: Path, live: Path) -> None:
    disk = open_disk(root)
    disk.load()
    commit_version(disk, 1)
    disk.mark_last_good(1)
    commit_version(disk, 2)
    (state_dir / NS / "versions" / "1").write_bytes(b"bit rot")
    with pytest.raises(IntegrityError):
        disk.restore_last_good()
    assert live.read_bytes() == content_for(2)


# --- catch-up, MISSING and drift ---------------------------------------------------------


def test_live_file_hash_follows_every_change_even_right_after_it_was_read(
    tmp_path: Path,
) -> None:
    """The heartbeat's drift check re-reads the live file only when its stat moved; a file
    changed within a second of being hashed is read again each time (its times may not move
    within the clock's granularity), so a same-size rewrite right after a read still shows."""
    path = tmp_path / "app.conf"
    path.write_bytes(b"one")
    hashes = FileHash()
    assert hashes.current(path) == sha(b"one")
    with path.open("r+b") as f:  # same size, same inode, within the same clock tick
        f.write(b"two")
    assert hashes.current(path) == sha(b"two")
    new = tmp_path / "new"
    new.write_bytes(b"six")
    os.replace(new, path)  # another inode at the name
    assert hashes.current(path) == sha(b"six")
    path.unlink()
    assert hashes.current(path) is None
    path.write_bytes(b"one")
    assert hashes.current(path) == sha(b"one")


def test_commit_without_staged_bytes_is_missing_then_apply_installs(
    disk: NamespaceDisk, live: Path
) -> None:
    commit_version(disk, 1)
    # Away during the prepare: the decision names bytes this node never staged.
    assert disk.commit("t2", 2, sha(content_for(2))) is CommitOutcome.MISSING
    with pytest.raises(IntegrityError):
        disk.apply(2, sha(content_for(2)), b"not the version's bytes")
    assert live.read_bytes() == content_for(1)
    assert disk.apply(2, sha(content_for(2)), content_for(2)) is True
    assert live.read_bytes() == content_for(2)
    assert disk.apply(2, sha(content_for(2)), content_for(2)) is False  # already there
    assert disk.apply(1, sha(content_for(1)), content_for(1)) is False  # never backward
    assert disk.snapshot().applied_version == 2


def test_lost_staged_file_makes_commit_missing(disk: NamespaceDisk, live: Path) -> None:
    commit_version(disk, 1)
    p = make_prepare(2, txid="t2")
    staged = disk.stage(p)
    disk.seal("t2")
    staged.path.write_bytes(b'{"corrupted": true}')  # never rename bytes that are not v2's
    assert disk.commit("t2", 2, p.sha256) is CommitOutcome.MISSING
    assert live.read_bytes() == content_for(1)
    assert disk.apply(2, p.sha256, p.content) is True
    assert disk.snapshot().prepared is None  # applied: the prepared record is done with
    assert leftovers(live.parent) == []


def test_drift_is_visible_and_repaired_by_apply(disk: NamespaceDisk, live: Path) -> None:
    commit_version(disk, 1)
    live.write_bytes(b"edited by hand")
    state = disk.snapshot()
    assert state.drifted and state.live_sha256 == sha(b"edited by hand")
    assert state.to_namespace_state().sha256 == sha(b"edited by hand")
    assert disk.apply(1, sha(content_for(1)), content_for(1)) is True
    assert not disk.snapshot().drifted
    live.unlink()
    assert disk.snapshot().drifted and disk.live_sha256() is None


def test_a_switch_reports_what_it_wrote_and_a_full_snapshot_rereads_the_disk(
    root: Path, live: Path
) -> None:
    # The state each 2PC step returns is built from what the step itself wrote (no re-read
    # of the live file and the history per step); the heartbeat's full snapshot re-reads.
    disk = open_disk(root, keep=3)
    disk.load()
    for v in (1, 2, 3):
        commit_version(disk, v)
    p = make_prepare(4)
    prepared = disk.prepare_sealed(p)
    assert prepared.prepared is not None and prepared.live_sha256 == sha(content_for(3))
    _, state = disk.decide(p.txid, "commit", 4, p.sha256, 1)
    assert state.applied_version == 4 and state.live_sha256 == sha(content_for(4))
    assert live.read_bytes() == content_for(4)
    flushed = disk.flush()
    assert flushed.history == (2, 3, 4) == disk.snapshot().history
    assert sorted(os.listdir(root / "state" / NS / "versions")) == ["2", "3", "4"]
    # Changed behind the agent's back: the next full snapshot sees both.
    live.write_bytes(b"edited by hand")
    (root / "state" / NS / "versions" / "2").unlink()
    full = disk.snapshot()
    assert full.drifted and full.live_sha256 == sha(b"edited by hand")
    assert full.history == (3, 4)
    # And the next switch prunes from what is really there.
    for v in (5, 6):
        commit_version(disk, v)
    assert sorted(os.listdir(root / "state" / NS / "versions")) == ["4", "5", "6"]
    assert disk.snapshot().history == (4, 5, 6) and not disk.snapshot().drifted


def test_catch_up_over_a_prepared_older_version_drops_it(disk: NamespaceDisk) -> None:
    disk.stage(make_prepare(2, txid="t2"))
    disk.seal("t2")
    disk.apply(3, sha(content_for(3)), content_for(3))
    assert disk.snapshot().prepared is None
    assert disk.commit("t2", 2, sha(content_for(2))) is CommitOutcome.NOT_NEWER


# --- file systems and durability ----------------------------------------------------------


def test_state_dir_on_another_file_system(root: Path, live: Path, other_fs: Path) -> None:
    disk = NamespaceDisk(NS, live, other_fs / "state", keep=2)
    disk.load()
    commit_version(disk, 1)  # creates the live dir on the first install
    assert live.parent.stat().st_dev != (other_fs / "state").stat().st_dev
    commit_version(disk, 2)
    disk.mark_last_good(1, sha256=sha(content_for(1)))
    commit_version(disk, 3)
    p = make_prepare(4, txid="t4")
    disk.stage(p)
    disk.seal("t4")
    state = NamespaceDisk(NS, live, other_fs / "state", keep=2).load()
    assert state.in_doubt and state.applied_version == 3
    assert disk.restore_last_good() == 1
    assert live.read_bytes() == content_for(1)
    assert disk.commit("t4", 4, p.sha256) is CommitOutcome.APPLIED
    assert live.read_bytes() == content_for(4)
    disk.flush()
    assert disk.history() == [1, 3, 4]


class FsSpy:
    """Record fsync and rename calls; they still happen (a spy, not a mock)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # (op, path, target); for fsync the path is what the fd names at that moment.
        self.events: list[tuple[str, str, str]] = []
        self.synced: set[tuple[int, int]] = set()  # (st_dev, st_ino) of every file fsynced
        self.unsynced: set[str] = set()  # targets that took bytes never fsynced
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            st = os.fstat(fd)
            self.synced.add((st.st_dev, st.st_ino))
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), ""))
            real_fsync(fd)

        def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
            st = os.stat(src)
            # Was the data fsynced, under whatever name it had then (a temp name, the staged
            # name), before it takes the target's name? (``since`` says whether it must be.)
            if (st.st_dev, st.st_ino) not in self.synced:
                self.unsynced.add(os.fspath(dst))
            self.events.append(("replace", os.fspath(src), os.fspath(dst)))
            real_replace(src, dst)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def since(self, mark: int, lazy: str = "") -> list[tuple[str, str, str]]:
        """Events since ``mark``; ``lazy``: a rename target allowed without any fsync."""
        events = self.events[mark:]
        for i, (op, _, dst) in enumerate(events):
            if op == "replace" and dst != lazy:
                assert dst not in self.unsynced, f"{dst} took bytes never fsynced"
                # Every rename is made durable by fsyncing its directory afterwards.
                assert ("fsync", os.path.dirname(dst), "") in events[i + 1 :], dst
        return events


def test_fsync_discipline(
    disk: NamespaceDisk, live: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit_version(disk, 1)
    spy = FsSpy(monkeypatch)
    slots = {str(state_dir.resolve() / NS / f"state.{s}") for s in "ab"}
    live_path, live_dir = str(live.resolve()), str(live.parent.resolve())

    p = make_prepare(2, txid="t2", epoch=1)
    staged = disk.stage(p)
    # The staged file is written at its own name (no rename), fsynced with its directory.
    assert spy.since(0) == [
        ("fsync", str(staged.path.resolve()), ""),
        ("fsync", live_dir, ""),
    ]

    mark = len(spy.events)
    disk.seal("t2")
    # The PREPARED record: one slot rewritten in place, one fsync (confbus.agent.record).
    (seal,) = spy.since(mark)
    assert seal[0] == "fsync" and seal[1] in slots

    mark = len(spy.events)
    assert disk.commit("t2", 2, p.sha256) is CommitOutcome.APPLIED
    # The commit itself: one rename (the PREPARED record is its intent), durable at once.
    assert spy.since(mark) == [
        ("replace", str(staged.path.resolve()), live_path),
        ("fsync", live_dir, ""),
    ]
    mark = len(spy.events)
    # Then the applied record, without fsync (the PREPARED record is the install's intent
    # until the next durable write; services.agent.record keeps it), and the history's copy,
    # without fsync either (load checks the applied version's copy against its sha256, and
    # copies it back from the live file).
    disk.flush()
    copy = f"{state_dir.resolve()}/{NS}/versions/2"
    events = spy.since(mark, lazy=copy)
    assert [e[0] for e in events] == ["replace"] and events[0][2] == copy
    assert copy in spy.unsynced
    mark = len(spy.events)
    disk.mark_last_good(2)  # now its bytes and its name must survive a power cut
    events = spy.since(mark)
    # Its bytes and its name are durable before the record that names it as last good.
    assert events[:2] == [("fsync", copy, ""), ("fsync", str(Path(copy).parent), "")]
    assert events[2][0] == "fsync" and events[2][1] in slots

    mark = len(spy.events)
    disk.mark_last_good(2)
    disk.restore_last_good()
    disk.apply(3, sha(content_for(3)), content_for(3))
    assert disk.abort("none") is False
    spy.since(mark)


def test_readers_only_ever_see_a_whole_file(disk: NamespaceDisk, live: Path) -> None:
    """A reader racing the switches sees one complete version or another, never a mix."""
    bodies = {v: content_for(v) * 4000 for v in range(1, 41)}  # ~150 KiB each
    by_bytes = {b: v for v, b in bodies.items()}
    disk.apply(1, sha(bodies[1]), bodies[1])
    done = threading.Event()
    seen: list[int] = []
    bad: list[int] = []

    def reader() -> None:
        while not done.is_set():
            data = live.read_bytes()
            (seen if data in by_bytes else bad).append(by_bytes.get(data, len(data)))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for v in range(2, 41):
            p = make_prepare(v, bodies[v], fmt="text")
            disk.stage(p)
            disk.seal(p.txid)
            disk.commit(p.txid, v, p.sha256)
    finally:
        done.set()
        t.join()
    assert bad == []
    assert seen and seen == sorted(seen)  # versions only move forward


def test_disk_is_safe_to_share_between_worker_threads(disk: NamespaceDisk, live: Path) -> None:
    """The agent calls through to_thread; concurrent calls must not interleave steps."""
    errors: list[BaseException] = []

    def run(fn: Callable[[], object]) -> None:
        try:
            fn()
        except Refused:
            pass  # losing a race for the one PREPARED slot is a legitimate refusal
        except BaseException as exc:
            errors.append(exc)

    def worker(v: int) -> Callable[[], object]:
        def go() -> None:
            p = make_prepare(v, txid=f"w{v}")
            disk.stage(p)
            disk.seal(p.txid)
            disk.commit(p.txid, v, p.sha256)

        return go

    threads = [threading.Thread(target=run, args=(worker(v),)) for v in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    state = open_disk(live.parents[2]).load()
    assert state.applied_version is not None
    assert state.live_sha256 == state.applied_sha256 == sha(content_for(state.applied_version))
