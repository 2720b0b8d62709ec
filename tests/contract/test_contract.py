"""The wire contract: round trips, evolution (unknown fields), refused names, the JSON Schema
snapshot, and the stream table's explicit limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from confbus.runtime.codec import encode
from confbus.schemas import export, streams, subjects
from confbus.schemas.base import SCHEMA_VERSION, decode_envelope
from confbus.schemas.changes import ChangeProposed, decode_change
from confbus.schemas.events import AnyEvent, NodeApplied, VersionCreated
from confbus.schemas.names import MAX_INT
from confbus.schemas.txn import Decision, Prepare, TxnMessage, decode_txn_for_agent

PREPARE = Prepare(
    txid="t1",
    namespace="payments",
    version=3,
    content=b'{"pool": 10}',
    sha256="0" * 64,
    format="json",
    participants=["n1", "n2"],
    epoch=1,
    timeout_s=5.0,
)
DECISION = Decision(
    txid="t1",
    namespace="payments",
    version=3,
    sha256="0" * 64,
    outcome="commit",
    participants=["n1", "n2"],
    epoch=1,
    decided_at=datetime(2026, 1, 1, tzinfo=UTC),
)


def test_every_message_round_trips_with_its_tag_and_schema_version() -> None:
    dec = msgspec.json.Decoder(TxnMessage)
    for msg in (PREPARE, DECISION):
        wire = encode(msg)
        doc = json.loads(wire)
        assert doc["schema_version"] == SCHEMA_VERSION
        assert doc["type"] in ("txn.prepare", "txn.decision")
        assert dec.decode(wire) == msg


@given(
    ns=st.from_regex(r"^[a-z0-9][a-z0-9_-]{0,63}$", fullmatch=True),
    content=st.binary(max_size=256),
    change_id=st.from_regex(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,20}$", fullmatch=True),
)
def test_changes_round_trip_for_any_valid_name(ns: str, content: bytes, change_id: str) -> None:
    msg = ChangeProposed(namespace=ns, change_id=change_id, content=content)
    assert decode_change(encode(msg)) == msg


def test_unknown_fields_from_a_newer_writer_are_ignored() -> None:
    doc = json.loads(encode(PREPARE))
    doc["added_in_v2"] = {"anything": [1, 2]}
    assert msgspec.json.decode(json.dumps(doc), type=TxnMessage) == PREPARE


@pytest.mark.parametrize(
    ("name", "field"),
    [("pay.ments", "namespace"), ("Payments", "namespace"), ("a>", "namespace"), ("", "namespace")],
)
def test_bad_names_are_refused_with_msgspec_path(name: str, field: str) -> None:
    doc = json.loads(encode(PREPARE))
    doc[field] = name
    with pytest.raises(msgspec.ValidationError, match=rf"at `\$\.{field}`"):
        msgspec.json.decode(json.dumps(doc), type=TxnMessage)


def test_bad_node_ids_are_refused_where_they_sit() -> None:
    doc = json.loads(encode(PREPARE))
    doc["participants"] = ["n1", "n*"]
    with pytest.raises(msgspec.ValidationError, match=r"at `\$\.participants\[1\]`"):
        msgspec.json.decode(json.dumps(doc), type=TxnMessage)


def test_the_agents_decoder_reads_the_same_records_but_not_the_participant_ids() -> None:
    for msg in (PREPARE, DECISION):
        seen = decode_txn_for_agent(encode(msg))
        assert isinstance(seen, type(msg))
        assert msgspec.structs.asdict(seen) == msgspec.structs.asdict(msg)
        assert json.loads(encode(seen)) == json.loads(encode(msg))
        doc = json.loads(encode(msg))
        doc["participants"] = ["n1", "n*"]  # the coordinator checked them; the agent looks
        assert decode_txn_for_agent(json.dumps(doc).encode()).participants == ["n1", "n*"]
        doc["namespace"] = "Pay*"  # everything else is checked as before
        with pytest.raises(msgspec.ValidationError, match=r"at `\$\.namespace`"):
            decode_txn_for_agent(json.dumps(doc).encode())


def test_agents_of_one_process_share_the_record_they_decode() -> None:
    # A host of many agents reads each record once per agent: one decoded copy while any
    # agent holds it, not one list of a thousand participants per agent.
    for msg in (PREPARE, DECISION):
        data = encode(msg)
        first = decode_txn_for_agent(data)
        again = decode_txn_for_agent(bytes(bytearray(data)))  # equal bytes, another object
        assert again is first
        assert msgspec.structs.asdict(again) == msgspec.structs.asdict(msg)


def test_versions_beyond_what_json_readers_keep_exact_are_refused() -> None:
    doc = json.loads(encode(PREPARE))
    doc["version"] = MAX_INT + 1
    with pytest.raises(msgspec.ValidationError, match=r"at `\$\.version`"):
        msgspec.json.decode(json.dumps(doc), type=TxnMessage)


def test_an_unknown_tag_is_told_apart_from_garbage() -> None:
    env = decode_envelope(b'{"type": "txn.from_the_future", "schema_version": 9, "x": 1}')
    assert env.type == "txn.from_the_future" and env.schema_version == 9
    with pytest.raises(msgspec.DecodeError):
        decode_envelope(b"not json")


def test_events_union_decodes_each_tag() -> None:
    created = VersionCreated(
        namespace="payments",
        version=2,
        sha256="a" * 64,
        size=10,
        format="json",
        parent=1,
        change_id="c1",
        status="draft",
    )
    applied = NodeApplied(namespace="payments", version=2, node="n1", sha256="a" * 64)
    dec = msgspec.json.Decoder(AnyEvent)
    assert dec.decode(encode(created)) == created
    assert dec.decode(encode(applied)) == applied


def test_the_json_schema_snapshot_is_current() -> None:
    """If this fails, run ``python -m confbus.schemas.export`` and commit schemas/jsonschema/."""
    want = export.documents()
    have = {p.name: p.read_text() for p in export.OUT.glob("*.json")}
    stale = sorted(n for n in want.keys() | have.keys() if want.get(n) != have.get(n))
    assert not stale, f"stale JSON Schema files (run python -m confbus.schemas.export): {stale}"


def test_the_snapshot_validates_real_messages() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = json.loads((export.OUT / "CFG_TXN.json").read_text())
    jsonschema.validate(json.loads(encode(PREPARE)), doc)
    bad = json.loads(encode(PREPARE)) | {"namespace": "Bad.Name"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, doc)


def test_every_stream_has_explicit_limits_and_a_subject_from_subjects_py() -> None:
    names = {s.name for s in streams.STREAMS}
    assert names == {"CFG_CHANGES", "CFG_TXN", "CFG_EVENTS", "CFG_HEALTH", "CFG_ALERTS", "CFG_DLQ"}
    spelled = {v for k, v in vars(subjects).items() if k.isupper() and isinstance(v, str)}
    for spec in streams.STREAMS:
        assert spec.max_age_s > 0 and spec.max_bytes > 0 and spec.max_msg_size > 0, spec.name
        assert spec.duplicate_window_s > 0, spec.name
        assert set(spec.subjects) <= spelled, spec.name
    for b in streams.BUCKETS:
        assert b.max_bytes > 0 and b.max_value_size > 0 and b.history >= 1, b.name
