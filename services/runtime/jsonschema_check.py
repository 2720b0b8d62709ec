"""A parsed config checked against its namespace's JSON Schema: one checker for the
version-store (at publish) and the agent (a variant nobody validated, in its prepare;
docs/design.md §2.6).

``check_document`` raises ``SchemaViolation`` whose ``where`` is the JSON path of the problem
(``$.limits.max_conn``). The jsonschema library is imported on the first check, not with this
module: an agent whose prepares carry no schema never loads it (tests/e2e/test_lean_imports.py).

For a secret namespace the messages never quote the content: JSON Schema messages normally
repeat the offending value, and that value may be the password.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError
    from jsonschema.protocols import Validator

# Schema messages can quote a whole subtree of the document; keep rejections readable.
MAX_MESSAGE = 300
_MAX_ERRORS_COUNTED = 100


class SchemaViolation(Exception):
    """The document does not satisfy the schema (or cannot be checked against it)."""

    def __init__(self, reason: str, where: str = "") -> None:
        self.reason = reason
        self.where = where
        super().__init__(f"{reason} at {where}" if where else reason)


def validator_class(schema: Any) -> type[Validator]:
    """An explicit ``"$schema"`` wins (jsonschema's recommendation); otherwise Draft 2020-12."""
    import jsonschema

    cls: type[Validator] = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft202012Validator
    )
    return cls


@functools.lru_cache(maxsize=256)
def _compiled(schema_json: str) -> Validator:
    # Policies change rarely and changes arrive in bursts: build each validator once.
    schema = json.loads(schema_json)
    cls = validator_class(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def check_document(doc: Any, schema: dict[str, Any], secret: bool = False) -> None:
    """Raise ``SchemaViolation`` unless ``doc`` (parsed JSON, YAML or TOML) satisfies
    ``schema``."""
    import referencing.exceptions
    from jsonschema.exceptions import best_match

    validator = _compiled(json.dumps(schema, sort_keys=True))
    try:
        errors = _first(validator.iter_errors(json_model(doc)), _MAX_ERRORS_COUNTED)
        error = best_match(errors)
    except referencing.exceptions.Unresolvable as e:
        raise SchemaViolation(
            f"the namespace's JSON Schema has an unresolvable $ref ({clip(str(e), 120)})",
            "policy.json_schema",
        ) from None
    except RecursionError:
        raise SchemaViolation("config nests too deeply to check against the schema") from None
    except Exception as e:
        # Last resort: a keyword implementation tripping over an odd value (a YAML binary, say)
        # must still end as a rejection with a reason, not a crash.
        raise SchemaViolation(
            f"could not check the config against the schema: {type(e).__name__}"
        ) from e
    if error is None:
        return
    more = len(errors) - 1
    plus = "+" if len(errors) >= _MAX_ERRORS_COUNTED else ""
    suffix = f" (and {more}{plus} more)" if more else ""
    raise SchemaViolation(_message(error, secret) + suffix, "$" + json_path(error.absolute_path))


def json_model(node: Any) -> Any:
    """Map YAML/TOML values onto JSON's data model, so the schema sees what the author wrote.

    YAML and TOML turn ``2024-05-01`` into a date and YAML turns the key ``on`` into ``True``;
    a JSON Schema can only speak of strings, so dates become ISO strings and scalar keys
    their YAML spelling.
    """
    if isinstance(node, dict):
        return {_json_key(k): json_model(v) for k, v in node.items()}
    if isinstance(node, list | tuple | set | frozenset):
        return [json_model(v) for v in node]
    if isinstance(node, datetime.date | datetime.time):  # datetime is a date
        return node.isoformat()
    return node


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    if isinstance(key, datetime.date | datetime.time):
        return key.isoformat()
    return str(key)


def _first(errors: Iterator[ValidationError], n: int) -> list[ValidationError]:
    out: list[ValidationError] = []
    for e in errors:
        out.append(e)
        if len(out) >= n:
            break
    return out


def _message(error: ValidationError, secret: bool) -> str:
    if secret:
        # Name the rule that failed, never the value that failed it.
        return f"value does not satisfy {error.validator!r}: {clip(repr(error.validator_value))}"
    return clip(error.message)


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def json_path(parts: Any) -> str:
    """``.a[0]["b c"]``: the path after ``$`` (jsonschema's ``json_path`` renders
    non-identifier keys as ``$.a b``; brackets keep them readable)."""
    out = []
    for p in parts:
        if isinstance(p, int):
            out.append(f"[{p}]")
        elif isinstance(p, str) and _IDENT.match(p):
            out.append(f".{p}")
        else:
            out.append(f"[{json.dumps(p) if isinstance(p, str) else repr(p)}]")
    return "".join(out)


def clip(s: str, n: int = MAX_MESSAGE) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"
