"""Variants (confbus.schemas.variants): the merge patch's laws, and render as every user sees it."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from confbus.schemas.selectors import SelectorError, parse_selector
from confbus.schemas.variants import (
    Overlay,
    VariantError,
    VariantSet,
    each_overlay_alone,
    encode_variants,
    merge_patch,
    render,
    variant_set,
    variants_for,
)

KEYS = st.sampled_from(["a", "b", "c", "d"])
SCALARS = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3)
DOCS = st.recursive(SCALARS, lambda inner: st.dictionaries(KEYS, inner, max_size=4), max_leaves=6)
OBJECTS = st.dictionaries(KEYS, DOCS, max_size=3)


def _nulls(doc: Any) -> bool:
    if doc is None:
        return True
    return isinstance(doc, dict) and any(_nulls(v) for v in doc.values())


@given(OBJECTS, OBJECTS)
def test_reapplying_a_patch_changes_nothing(target: dict[str, Any], patch: dict[str, Any]) -> None:
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once


@given(OBJECTS, OBJECTS)
def test_null_deletes_and_leaves_no_null_behind(
    target: dict[str, Any], patch: dict[str, Any]
) -> None:
    out = merge_patch(target, patch)
    for key, value in patch.items():
        if value is None:
            assert key not in out
        elif not isinstance(value, dict):
            assert out[key] == value
    if not _nulls(target):
        assert not _nulls(out)  # a patch's null only ever deletes, it is never written


@given(OBJECTS, OBJECTS)
def test_keys_the_patch_does_not_name_are_kept(
    target: dict[str, Any], patch: dict[str, Any]
) -> None:
    out = merge_patch(target, patch)
    for key, value in target.items():
        if key not in patch:
            assert out[key] == value


@given(OBJECTS)
def test_patch_leaves_its_inputs_alone(target: dict[str, Any]) -> None:
    before = json.dumps(target, sort_keys=True)
    merge_patch(target, {"a": None, "b": {"c": 1}})
    assert json.dumps(target, sort_keys=True) == before


def test_rfc7396_appendix_a_examples() -> None:
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": "b", "b": "c"}, {"a": None}) == {"b": "c"}
    assert merge_patch({"a": ["b"]}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch([1, 2], {"a": "b", "c": None}) == {"a": "b"}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}


BASE = {"db": {"host": "db.local", "port": 5432}, "workers": 4, "debug": False}
EU = Overlay(selector={"dc": "eu1"}, content='{"db": {"host": "db.eu1"}, "debug": null}')
WEB = Overlay(selector={"tier": "web"}, content='{"workers": 16, "db": {"host": "db.web"}}')


def _json_set() -> VariantSet:
    return VariantSet(format="json", base=json.dumps(BASE), overlays=[EU, WEB])


def test_a_node_gets_the_base_with_every_matching_overlay_later_ones_winning() -> None:
    vs = _json_set()
    both = json.loads(render(vs, {"dc": "eu1", "tier": "web", "rack": "3"}))
    assert both == {"db": {"host": "db.web", "port": 5432}, "workers": 16}
    eu = json.loads(render(vs, {"dc": "eu1", "tier": "db"}))
    assert eu == {"db": {"host": "db.eu1", "port": 5432}, "workers": 4}


def test_a_node_no_overlay_matches_gets_the_stored_base_bytes_exactly() -> None:
    vs = _json_set()
    assert render(vs, {"dc": "us1"}) == vs.base.encode()
    assert render(vs, {}) == vs.base.encode()


def test_distinct_variants_are_rendered_once_each_and_named_by_their_overlays() -> None:
    labels = [{"dc": dc, "tier": t} for dc in ("eu1", "us1") for t in ("web", "db")]
    found = variants_for(_json_set(), labels * 3)
    assert sorted(found) == ["base", "dc=eu1", "dc=eu1+tier=web", "tier=web"]
    assert len({v.sha256 for v in found.values()}) == 4
    assert [v.name for v in each_overlay_alone(_json_set())] == ["dc=eu1", "tier=web"]


def test_the_envelope_round_trips_and_plain_content_is_a_base_alone() -> None:
    vs = _json_set()
    assert variant_set(encode_variants(vs), "json") == vs
    plain = variant_set(b'{"a": 1}', "json")
    assert plain.overlays == [] and render(plain, {"dc": "eu1"}) == b'{"a": 1}'
    assert encode_variants(VariantSet(format="json", base='{"a": 1}')) == b'{"a": 1}'
    with pytest.raises(VariantError, match="envelope says format json"):
        variant_set(encode_variants(vs), "yaml")


def test_yaml_and_toml_merge_and_text_replaces() -> None:
    y = VariantSet(
        format="yaml",
        base="db:\n  host: a\n  port: 1\nlog: info\n",
        overlays=[Overlay(selector={"dc": "eu1"}, content="db:\n  host: b\nlog: null\n")],
    )
    assert yaml.safe_load(render(y, {"dc": "eu1"})) == {"db": {"host": "b", "port": 1}}
    t = VariantSet(
        format="toml",
        base='[db]\nhost = "a"\nport = 1\n',
        overlays=[Overlay(selector={"dc": "eu1"}, content='[db]\nhost = "b"\n')],
    )
    assert tomllib.loads(render(t, {"dc": "eu1"}).decode()) == {"db": {"host": "b", "port": 1}}
    x = VariantSet(
        format="text",
        base="base\n",
        overlays=[
            Overlay(selector={"dc": "eu1"}, content="eu\n"),
            Overlay(selector={"tier": "web"}, content="web\n"),
        ],
    )
    assert render(x, {"dc": "eu1", "tier": "web"}) == b"web\n"
    assert render(x, {"dc": "eu1"}) == b"eu\n"


def test_an_overlay_that_does_not_parse_is_named() -> None:
    bad = VariantSet(
        format="json",
        base="{}",
        overlays=[EU, Overlay(selector={"tier": "web"}, content='{"workers": ')],
    )
    with pytest.raises(VariantError) as exc:
        render(bad, {"dc": "eu1", "tier": "web"})
    assert exc.value.variant == "dc=eu1+tier=web"
    assert "overlay tier=web is not json" in str(exc.value)
    assert render(bad, {"dc": "eu1"})  # the other variant is fine


def test_the_selector_grammar_is_the_rollouts() -> None:
    assert parse_selector("dc=eu1, tier=web") == {"dc": "eu1", "tier": "web"}
    with pytest.raises(SelectorError, match="is not KEY=VALUE"):
        parse_selector("dc")
