"""The AsyncAPI document (``schemas/asyncapi.json``): current with the Structs, valid AsyncAPI
3.0.0, every reference resolvable, every subject, stream and operation in it."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import msgspec
import pytest

from confbus.schemas import asyncapi, streams
from confbus.schemas.api import catalog
from confbus.schemas.api import store as store_api
from confbus.schemas.api.operation import Operation
from confbus.schemas.events import AnyEvent
from tests.contract import asyncapi_spec


def committed() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(asyncapi.OUT.read_text())
    return doc


def test_the_committed_document_is_current() -> None:
    """If this fails, run ``python -m confbus.schemas.export`` and commit schemas/asyncapi.json."""
    assert asyncapi.OUT.read_text() == asyncapi.text(), (
        "schemas/asyncapi.json is stale: run python -m confbus.schemas.export"
    )


def test_a_field_added_to_a_struct_makes_the_committed_document_stale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same check as above, run against a contract with one more field in one request.
    wider = msgspec.defstruct(
        "GetRequest",
        [("added_field", int, 0)],
        bases=(store_api.GetRequest,),
        frozen=True,
        kw_only=True,
    )
    get: Operation[Any, Any] = Operation(
        store_api.SERVICE,
        store_api.GET.name,
        wider,
        store_api.GET.reply,
        store_api.GET.deadline,
        store_api.GET.summary,
    )
    ops = tuple(get if op is store_api.GET else op for op in store_api.OPERATIONS)
    monkeypatch.setitem(catalog.SERVICES, store_api.SERVICE, ops)
    assert "added_field" in asyncapi.text()
    assert asyncapi.OUT.read_text() != asyncapi.text()


def test_the_document_is_valid_asyncapi_3() -> None:
    try:
        spec_path = asyncapi_spec.fetch()
    except asyncapi_spec.Unavailable as exc:
        pytest.skip(f"the AsyncAPI 3.0.0 JSON Schema is not available: {exc}")
    spec = json.loads(spec_path.read_text())
    assert spec["properties"]["asyncapi"]["const"] == "3.0.0"
    validator = jsonschema.Draft7Validator(spec)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in validator.iter_errors(committed())
    ]
    assert errors == []


def test_the_schema_catches_a_broken_document() -> None:
    # The validation above is not vacuous: an operation without its action is refused.
    try:
        spec = json.loads(asyncapi_spec.fetch().read_text())
    except asyncapi_spec.Unavailable as exc:
        pytest.skip(f"the AsyncAPI 3.0.0 JSON Schema is not available: {exc}")
    doc = committed()
    del doc["operations"]["api.store.get"]["action"]
    assert not jsonschema.Draft7Validator(spec).is_valid(doc)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: Any, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node = doc
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and token in node, f"{ref}: no {token!r}"
        node = node[token]
    return node


def test_every_reference_resolves() -> None:
    doc = committed()
    refs = _refs(doc)
    assert len(refs) > 100
    for ref in refs:
        _resolve(doc, ref)


def _as_pattern(address: str) -> list[str]:
    """A channel address as NATS tokens, each parameter a wildcard (``export_{replica}`` too)."""
    return ["*" if "{" in t else t for t in address.split(".")]


def _covers(pattern: list[str], subject: list[str]) -> bool:
    """Whether the stream subject pattern ``pattern`` takes every subject of ``subject``."""
    for i, p in enumerate(pattern):
        if p == ">":
            return len(subject) > i
        if i >= len(subject) or (p != "*" and p != subject[i]):
            return False
    return len(pattern) == len(subject)


def test_every_operation_event_and_stream_is_in_the_document() -> None:
    doc = committed()
    channels = doc["channels"]
    addresses = {ch["address"] for ch in channels.values() if ch.get("address")}
    for op in catalog.every_operation():
        assert asyncapi._api_address(op) in addresses, op.name
        operation = doc["operations"][f"api.{op.service}.{op.name.replace('{replica}', 'replica')}"]
        assert operation["x-deadline"] and operation["x-acts"] == op.acts
    tags = {m["name"] for m in doc["components"]["messages"].values()}
    for member in AnyEvent.__args__:
        assert member.__struct_config__.tag in tags
    for spec in streams.STREAMS:
        stored = [ch for ch in channels.values() if ch.get("x-stream") == spec.name]
        assert stored, f"no channel is stored in {spec.name}"
        for ch in stored:
            tokens = _as_pattern(ch["address"])
            assert any(_covers(s.split("."), tokens) for s in spec.subjects), ch["address"]
    assert set(doc["x-streams"]) == {s.name for s in streams.STREAMS}
    assert set(doc["x-kv-buckets"]) == {b.name for b in streams.BUCKETS}
