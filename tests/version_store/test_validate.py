"""Validation: what a bad config looks like to the person who published it, and that no bytes
at all can make ``validate`` raise anything but ``InvalidConfig``."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confbus.schemas.names import FORMATS, Format
from confbus.schemas.policy import Policy
from confbus.version_store.errors import InvalidConfig
from confbus.version_store.validate import check_policy, diff, validate

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "limits": {
            "type": "object",
            "properties": {"max_conn": {"type": "integer", "maximum": 100}},
        },
        "servers": {"type": "array", "items": {"type": "string", "format": "ipv4"}},
        "since": {"type": "string", "format": "date"},
    },
    "required": ["limits"],
    "additionalProperties": False,
}
POLICY = Policy(namespace="ns", json_schema=SCHEMA)


def refused(content: bytes, fmt: Format, policy: Policy | None = None) -> InvalidConfig:
    with pytest.raises(InvalidConfig) as caught:
        validate(content, fmt, policy)
    return caught.value


@pytest.mark.parametrize(
    ("content", "fmt", "policy", "where", "reason"),
    [
        # Unparseable: where in the text, and the parser's reason.
        (b'{\n  "a": 1,\n  "b": \n}', "json", None, "line 4, column 1", "Expecting value"),
        (b'{"a": 1, "a": 2}', "json", None, "", "duplicate key 'a'"),
        (b'{"a": NaN}', "json", None, "", "NaN is not valid JSON"),
        (b"a: [1, 2\nb: 3\n", "yaml", None, "line 2, column 2", "expected ',' or ']'"),
        (b"a: 1\n---\nb: 2\n", "yaml", None, "line 2, column 1", "expected a single document"),
        (b"a: \x00\n", "yaml", None, "line 1, column 4", "unacceptable character #x0000"),
        (b"a: &a [*a]\n", "yaml", None, "aliases", "recursive alias"),
        (b"[t]\na = 1\n[t]\n", "toml", None, "line 3, column 3", "Cannot declare"),
        (b"a = \n", "toml", None, "line 1, column 5", "Invalid value"),
        (b"ok\n\xc3\x28", "text", None, "line 2, column 1", "not valid UTF-8"),
        (b"[" * 100_000, "json", None, "nesting", "nests too deeply"),
        (b"a: " + b"[" * 100_000, "yaml", None, "nesting", "nests too deeply"),
        (b"a = " + b"[" * 100_000, "toml", None, "nesting", "nests too deeply"),
        (b'{"n": ' + b"9" * 5000 + b"}", "json", None, "", "digits"),
        # Parsed, but against the policy's schema: the path to the value, and why.
        (b'{"limits": {"max_conn": 1000}}', "json", POLICY, "$.limits.max_conn", "greater than"),
        (
            b'{"limits": {}, "servers": ["a", "b", 3]}',
            "json",
            POLICY,
            "$.servers[2]",
            "not of type",
        ),
        (b'{"limits": {}, "servers": ["10.0.0.999"]}', "json", POLICY, "$.servers[0]", "ipv4"),
        (b"{}", "json", POLICY, "$", "'limits' is a required property"),
        (b"limits:\n  max_conn: x\n", "yaml", POLICY, "$.limits.max_conn", "not of type 'integer'"),
        (b"[limits]\nmax_conn = 5000\n", "toml", POLICY, "$.limits.max_conn", "greater than"),
        # YAML reads `on` as true; the schema sees the key the way YAML understood it.
        (b"limits: {}\non: 1\n", "yaml", POLICY, "$", "'true' was unexpected"),
    ],
)
def test_a_refusal_says_where_and_why(
    content: bytes, fmt: Format, policy: Policy | None, where: str, reason: str
) -> None:
    error = refused(content, fmt, policy)
    assert error.where == where
    assert reason in error.reason


def test_size_limit_names_size_and_limit() -> None:
    error = refused(b"x" * 11, "text", Policy(namespace="ns", max_bytes=10))
    assert error.where == "size"
    assert "11 bytes" in error.reason and "10 bytes" in error.reason


def test_dates_from_yaml_and_toml_are_checked_as_strings() -> None:
    validate(b"limits: {}\nsince: 2024-05-01\n", "yaml", POLICY)
    validate(b"since = 2024-05-01\n[limits]\n", "toml", POLICY)


def test_secret_namespaces_never_quote_the_value() -> None:
    secret = Policy(namespace="ns", json_schema=SCHEMA, secret=True)
    error = refused(b'{"limits": {"max_conn": "hunter2"}}', "json", secret)
    assert "hunter2" not in str(error)
    assert error.where == "$.limits.max_conn"


def test_counts_further_errors() -> None:
    schema = {"type": "array", "items": {"type": "integer"}}
    error = refused(b'["a", "b", "c"]', "json", Policy(namespace="ns", json_schema=schema))
    assert error.reason.endswith("(and 2 more)")


def test_billion_laughs_is_refused_quickly() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    error = refused("\n".join(lines).encode(), "yaml", POLICY)
    assert error.where == "aliases"


def test_text_is_not_checked_against_the_schema() -> None:
    validate(b"anything at all\n", "text", POLICY)


def test_check_policy() -> None:
    check_policy(POLICY)
    with pytest.raises(InvalidConfig, match="invalid JSON Schema") as caught:
        check_policy(Policy(namespace="ns", json_schema={"properties": {"a": {"type": 5}}}))
    assert caught.value.where == "json_schema.properties.a.type"
    with pytest.raises(InvalidConfig, match="points at nothing"):
        check_policy(Policy(namespace="ns", json_schema={"$ref": "#/$defs/missing"}))
    with pytest.raises(InvalidConfig, match="max_bytes"):
        check_policy(Policy(namespace="ns", max_bytes=0))


def test_unresolvable_remote_ref_is_a_policy_problem() -> None:
    policy = Policy(namespace="ns", json_schema={"$ref": "https://example.invalid/s.json"})
    error = refused(b"{}", "json", policy)
    assert error.where == "policy.json_schema"


def test_diff() -> None:
    out = diff(b"a\nb\nc\n", b"a\nB\nc\n", "payments@1", "payments@2")
    assert out.splitlines() == [
        "--- payments@1",
        "+++ payments@2",
        "@@ -1,3 +1,3 @@",
        " a",
        "-b",
        "+B",
        " c",
    ]
    assert diff(b"same", b"same") == ""
    odd = diff(b"x", b"\xff\xfe", "a", "b")
    assert "\\xff\\xfe" in odd and "\\ No newline at end of file" in odd


# -- properties ---------------------------------------------------------------------------------

POLICIES = st.sampled_from([None, POLICY, Policy(namespace="ns", max_bytes=64, secret=True)])
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(content=st.binary(max_size=512), fmt=st.sampled_from(FORMATS), policy=POLICIES)
def test_garbage_bytes_raise_only_invalid_config(
    content: bytes, fmt: Format, policy: Policy | None
) -> None:
    try:
        validate(content, fmt, policy)
    except InvalidConfig as e:
        assert e.reason


# Text built from the characters that matter to the parsers reaches deeper than random bytes.
_SYNTAX = "{}[]()\"':,=#&*!|>-?%@`\n\t .0123456789abcdeftrunlTFNx\\\x00\u00e9\ufeff"


@settings(max_examples=300, deadline=None, database=None)
@given(
    text=st.text(alphabet=st.sampled_from(_SYNTAX), max_size=200),
    fmt=st.sampled_from(FORMATS),
    policy=POLICIES,
)
def test_syntax_soup_raises_only_invalid_config(
    text: str, fmt: Format, policy: Policy | None
) -> None:
    try:
        validate(text.encode("utf-8", "surrogatepass"), fmt, policy)
    except InvalidConfig as e:
        assert e.reason


@settings(max_examples=200, deadline=None, database=None)
@given(value=json_values)
def test_any_json_document_parses_and_meets_or_fails_the_schema(value: Any) -> None:
    validate(json.dumps(value).encode(), "json")
    validate(yaml.safe_dump(value).encode(), "yaml")
    try:
        validate(json.dumps(value).encode(), "json", POLICY)
    except InvalidConfig as e:
        assert e.where.startswith("$")
