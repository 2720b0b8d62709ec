"""Is this content acceptable as a version of its namespace? And how does it differ from another?

``validate`` checks, in order: the size limit, UTF-8, that the bytes parse in their format, and
then the namespace's JSON Schema (YAML and TOML are checked against it after parsing; plain
text is not). Every failure is an ``InvalidConfig`` whose ``where`` points at the problem
(``line 3, column 5``, ``$.limits.max_conn``, ``byte 17``); nothing else may escape, whatever the
bytes are — a bad config is refused, never fatal (docs/design.md §8.9).

For a namespace marked ``secret`` the messages never quote the content: JSON Schema messages
normally repeat the offending value, and that value may be the password.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Iterator
from typing import Any

import referencing
import referencing.exceptions
import referencing.jsonschema
import yaml
from jsonschema.exceptions import SchemaError

from confbus.runtime.jsonschema_check import (
    SchemaViolation,
    check_document,
    clip,
    json_path,
    validator_class,
)
from confbus.schemas.names import FORMATS, Format, InvalidName, check_name
from confbus.schemas.policy import Policy
from confbus.version_store.errors import InvalidConfig

# A YAML document of a few KiB can expand to billions of nodes through aliases ("billion
# laughs"); the parser shares them, but a schema walk would not. Refuse such documents early.
_MAX_EXPANDED_NODES = 1_000_000
_NAMES: dict[str, str] = {"json": "JSON", "yaml": "YAML", "toml": "TOML", "text": "text"}


def validate(content: bytes, fmt: Format, policy: Policy | None = None) -> None:
    """Raise ``InvalidConfig`` unless ``content`` is acceptable for ``policy``'s namespace."""
    policy = policy or Policy(namespace="default")
    if len(content) > policy.max_bytes:
        raise InvalidConfig(
            f"config is {len(content)} bytes; the limit for namespace {policy.namespace!r} "
            f"is {policy.max_bytes} bytes (policy max_bytes)",
            "size",
        )
    text = _decode_utf8(content)
    doc = parse(text, fmt)
    if fmt != "text" and policy.json_schema is not None:
        _check_schema(doc, policy)


def parse(text: str, fmt: Format) -> Any:
    """Parse ``text`` in ``fmt``; raise ``InvalidConfig`` with the line and column on error."""
    try:
        if fmt == "json":
            return _parse_json(text)
        if fmt == "yaml":
            return _parse_yaml(text)
        if fmt == "toml":
            return _parse_toml(text)
        if fmt == "text":
            return text
    except RecursionError:
        # Every parser here recurses per nesting level; 100k "[" is a valid attack, not a crash.
        raise InvalidConfig(f"{_NAMES.get(fmt, fmt)} nests too deeply", "nesting") from None
    except (ValueError, TypeError, OverflowError) as e:
        # Constructors raise these for values the grammar allows but Python cannot hold, e.g.
        # an integer of 5,000 digits or an out-of-range YAML timestamp.
        raise InvalidConfig(
            f"invalid {_NAMES.get(fmt, fmt)} value: {clip(str(e), 160)}", ""
        ) from None
    raise InvalidConfig(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}", "format")


def check_policy(policy: Policy) -> None:
    """Refuse a policy that could never validate anything: a bad JSON Schema, silly limits."""
    try:
        check_name(policy.namespace, "namespace")
    except InvalidName as e:
        raise InvalidConfig(str(e), "namespace") from None
    if policy.format not in FORMATS:
        raise InvalidConfig(f"unknown format {policy.format!r}", "policy.format")
    if policy.max_bytes <= 0:
        raise InvalidConfig(f"max_bytes must be positive, got {policy.max_bytes}", "max_bytes")
    if policy.json_schema is None:
        return
    try:
        cls = validator_class(policy.json_schema)
        cls.check_schema(policy.json_schema)
    except SchemaError as e:
        raise InvalidConfig(
            f"invalid JSON Schema: {clip(e.message)}", f"json_schema{json_path(e.absolute_path)}"
        ) from None
    except RecursionError:
        raise InvalidConfig("JSON Schema nests too deeply", "json_schema") from None
    _check_local_refs(policy.json_schema)


def diff(a: bytes, b: bytes, a_label: str = "a", b_label: str = "b") -> str:
    """A unified diff of two versions, as ``diff -u`` would print it.

    Bytes that are not UTF-8 are shown as ``\\xNN`` escapes rather than failing: an operator
    comparing two versions wants to see *where* they differ even if one is broken.
    """
    a_lines = a.decode("utf-8", "backslashreplace").splitlines(keepends=True)
    b_lines = b.decode("utf-8", "backslashreplace").splitlines(keepends=True)
    out: list[str] = []
    for line in difflib.unified_diff(a_lines, b_lines, a_label, b_label):
        if line.endswith("\n"):
            out.append(line)
        else:
            out.append(line + "\n\\ No newline at end of file\n")
    return "".join(out)


# -- parsing --------------------------------------------------------------------------------


def _decode_utf8(content: bytes) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as e:
        line = content.count(b"\n", 0, e.start) + 1
        col = e.start - (content.rfind(b"\n", 0, e.start) + 1) + 1
        raise InvalidConfig(
            f"not valid UTF-8 (byte 0x{content[e.start]:02x} at offset {e.start})",
            f"line {line}, column {col}",
        ) from None


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; RFC 8259 does not, and other languages' parsers fail.
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys mean different things to different parsers (first wins / last wins), so a
    # fleet of agents in several languages could read different configs from the same bytes.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _parse_json(text: str) -> Any:
    try:
        return json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys
        )
    except json.JSONDecodeError as e:
        raise InvalidConfig(
            f"invalid JSON: {e.msg}", f"line {e.lineno}, column {e.colno}"
        ) from None
    except _DuplicateKey as e:
        raise InvalidConfig(f"invalid JSON: duplicate key {clip(e.key, 80)!r}", "") from None
    except ValueError as e:  # NaN / Infinity
        raise InvalidConfig(f"invalid JSON: {e}", "") from None


def _parse_yaml(text: str) -> Any:
    try:
        doc = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        # str(e) quotes a snippet of the document; build the message from the parts that do not.
        mark = e.problem_mark or e.context_mark
        what = ", ".join(p for p in (e.context, e.problem) if p) or "syntax error"
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidConfig(f"invalid YAML: {what}", where) from None
    except yaml.reader.ReaderError as e:
        line, col = _line_col(text, e.position)
        raise InvalidConfig(
            f"invalid YAML: unacceptable character #x{e.character:04x}: {e.reason}",
            f"line {line}, column {col}",
        ) from None
    except yaml.YAMLError as e:
        raise InvalidConfig(f"invalid YAML: {type(e).__name__}", "") from None
    _check_expansion(doc)
    return doc


def _check_expansion(doc: Any) -> None:
    """Refuse documents whose aliases are recursive or expand to too many nodes."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, dict | list):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise InvalidConfig("invalid YAML: recursive alias", "aliases")
        active.add(key)
        children = node.values() if isinstance(node, dict) else node
        total = 1 + sum(size(c) for c in children)
        active.discard(key)
        if total > _MAX_EXPANDED_NODES:
            raise InvalidConfig(
                f"invalid YAML: aliases expand to more than {_MAX_EXPANDED_NODES} nodes",
                "aliases",
            )
        sizes[key] = total
        return total

    size(doc)


_TOML_POS = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _parse_toml(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = _TOML_POS.search(msg)
        where = f"line {m.group(1)}, column {m.group(2)}" if m else ""
        if m:
            msg = msg[: m.start()]
        raise InvalidConfig(f"invalid TOML: {msg}", where) from None


# -- JSON Schema ----------------------------------------------------------------------------


def _check_schema(doc: Any, policy: Policy) -> None:
    assert policy.json_schema is not None
    try:
        check_document(doc, policy.json_schema, policy.secret)
    except SchemaViolation as e:
        raise InvalidConfig(e.reason, e.where) from e.__cause__


def _check_local_refs(schema: Any) -> None:
    """Refuse a schema whose document-local ``$ref`` (``#/...``) points at nothing.

    Remote refs are never fetched (jsonschema does not retrieve by default); they fail at
    validation time with a message naming the policy.
    """
    resource = referencing.jsonschema.specification_with(
        schema.get("$schema", "https://json-schema.org/draft/2020-12/schema")
        if isinstance(schema, dict)
        else "https://json-schema.org/draft/2020-12/schema",
        default=referencing.jsonschema.DRAFT202012,
    ).create_resource(schema)
    resolver = (
        referencing.Registry()
        .with_resource("urn:confbus:policy", resource)
        .resolver("urn:confbus:policy")
    )
    if _has_nested_id(schema, top=True):
        return  # refs under a nested $id resolve against it; leave those to validation time
    for ref in _local_refs(schema):
        try:
            resolver.lookup(ref)
        except referencing.exceptions.Unresolvable:
            raise InvalidConfig(
                f"invalid JSON Schema: $ref {ref!r} points at nothing", "json_schema"
            ) from None


def _has_nested_id(node: Any, top: bool = False) -> bool:
    if isinstance(node, dict):
        if not top and "$id" in node:
            return True
        return any(_has_nested_id(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_nested_id(v) for v in node)
    return False


def _local_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#"):
                yield v
            else:
                yield from _local_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _local_refs(v)
