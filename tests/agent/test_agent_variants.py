"""A prepare with variants at the node's disk (docs/design.md §2.6): each node stages its own
entry, checked against that entry's sha256; the decision names the version's sha256."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from confbus.agent.disk import NamespaceDisk
from confbus.agent.state import CommitOutcome, Refused
from confbus.schemas.txn import Prepare, PreparedVariant
from tests.agent.support import make_prepare, open_disk, sha

EU = b'{"db": "eu1"}\n'
US = b'{"db": "us1"}\n'
VERSION_SHA = sha(b"the version's envelope")


def variant_prepare(version: int = 1, *, eu: bytes = EU, eu_sha: str | None = None) -> Prepare:
    base = make_prepare(version, b"", sha256=VERSION_SHA)
    return msgspec.structs.replace(
        base,
        participants=["node-1", "node-2"],
        variants=[
            PreparedVariant(name="dc=eu1", sha256=eu_sha or sha(eu), content=eu, nodes=["node-1"]),
            PreparedVariant(name="base", sha256=sha(US), content=US, nodes=["node-2"]),
        ],
    )


def test_each_node_stages_and_commits_its_own_variant(root: Path, tmp_path: Path) -> None:
    other = open_disk(tmp_path / "other")
    for node, disk, want in (("node-1", open_disk(root), EU), ("node-2", other, US)):
        disk.load()
        state = disk.prepare_sealed(variant_prepare(), node)
        assert state.prepared is not None and state.prepared.sha256 == sha(want)
        # The decision names the version's sha256, not the node's bytes'.
        outcome, state = disk.decide("tx-v1", "commit", 1, VERSION_SHA, 1)
        assert outcome is CommitOutcome.APPLIED
        assert disk.live_path.read_bytes() == want
        assert state.applied_sha256 == sha(want) == state.live_sha256
        assert disk.version_bytes(1) == want  # the history keeps the node's own bytes


def test_a_decision_for_other_bytes_is_not_applied_from_the_staged_file(
    disk: NamespaceDisk,
) -> None:
    disk.prepare_sealed(variant_prepare(), "node-1")
    outcome, _ = disk.decide("tx-v1", "commit", 1, sha(EU), 1)  # not the version's sha256
    assert outcome is CommitOutcome.MISSING
    assert not disk.live_path.exists()


def test_bytes_that_are_not_the_entrys_sha256_are_refused(disk: NamespaceDisk) -> None:
    with pytest.raises(Refused) as no:
        disk.prepare_sealed(variant_prepare(eu_sha=sha(b"else")), "node-1")
    assert no.value.kind == "sha256"
    assert disk.snapshot().prepared is None


def test_a_node_without_an_entry_votes_no(disk: NamespaceDisk) -> None:
    with pytest.raises(Refused) as no:
        disk.prepare_sealed(variant_prepare(), "node-9")
    assert no.value.kind == "variant" and "node-9" in no.value.reason


def test_a_redelivered_variant_prepare_is_yes_again(disk: NamespaceDisk) -> None:
    disk.prepare_sealed(variant_prepare(), "node-1")
    again = disk.stage(variant_prepare(), "node-1")
    assert again.already_prepared


def moved(prepare: Prepare, txid: str, *, to: bytes) -> Prepare:
    """The same version again, node-1 now in the variant of ``to`` (its labels changed)."""
    entry = PreparedVariant(name="moved", sha256=sha(to), content=to, nodes=["node-1"])
    return msgspec.structs.replace(prepare, txid=txid, variants=[entry])


def test_a_node_moves_to_its_new_variant_of_the_applied_version(disk: NamespaceDisk) -> None:
    disk.prepare_sealed(variant_prepare(), "node-1")
    disk.decide("tx-v1", "commit", 1, VERSION_SHA, 1)
    disk.mark_last_good(1)
    state = disk.prepare_sealed(moved(variant_prepare(), "tx-move", to=US), "node-1")
    assert state.prepared is not None and state.prepared.version == 1
    outcome, state = disk.decide("tx-move", "commit", 1, VERSION_SHA, 1)
    assert outcome is CommitOutcome.APPLIED
    assert disk.live_path.read_bytes() == US
    assert state.applied_version == 1 and state.applied_sha256 == sha(US)
    disk.flush()
    assert disk.version_bytes(1) == US
    # The last known good of version 1 is now this node's own bytes of it, so a cold start
    # restores them (not an integrity error against the old variant's sha256).
    assert disk.restore_last_good() == 1 and disk.live_path.read_bytes() == US
    # The decision again (a redelivery) changes nothing.
    outcome, _ = disk.decide("tx-move", "commit", 1, VERSION_SHA, 1)
    assert outcome is CommitOutcome.NOT_NEWER


def test_the_applied_version_with_the_same_bytes_is_not_newer(disk: NamespaceDisk) -> None:
    disk.prepare_sealed(variant_prepare(), "node-1")
    disk.decide("tx-v1", "commit", 1, VERSION_SHA, 1)
    with pytest.raises(Refused) as no:
        disk.prepare_sealed(moved(variant_prepare(), "tx-again", to=EU), "node-1")
    assert no.value.kind == "not-newer"


def test_a_plain_prepare_of_the_applied_version_is_not_newer(disk: NamespaceDisk) -> None:
    first = make_prepare(1)
    disk.prepare_sealed(first, "node-1")
    assert disk.decide("tx-v1", "commit", 1, first.sha256, 1)[0] is CommitOutcome.APPLIED
    with pytest.raises(Refused) as no:
        disk.prepare_sealed(make_prepare(1, b'{"other": 1}\n', txid="tx-other"), "node-1")
    assert no.value.kind == "not-newer"


def test_an_older_version_is_not_newer_even_as_a_variant(disk: NamespaceDisk) -> None:
    disk.prepare_sealed(variant_prepare(2), "node-1")
    disk.decide("tx-v2", "commit", 2, VERSION_SHA, 1)
    with pytest.raises(Refused) as no:
        disk.prepare_sealed(moved(variant_prepare(1), "tx-old", to=US), "node-1")
    assert no.value.kind == "not-newer"
