"""What changed between two policies, field by field: the ``policy.changed`` event's
``changes``, and what ``confbus policy`` shows before and after it stores one.

A change names its field by its path (``bake_s``, ``rollback.strategy``,
``json_schema.properties.pool.minimum``) and gives both values as JSON, clipped to
``MAX_VALUE_CHARS``. A list of named records (trusted keys, data keys) is compared record by
record, by name (``signing.keys[bob].until_version``), so a revocation reads as one; any
other list is compared whole. A URL shows only its scheme and host: a webhook's path
or query often is its secret, and the audit log is read by CI.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import msgspec

from confbus.schemas.policy import Policy

MAX_VALUE_CHARS = 200
ABSENT = "(none)"
_URL = re.compile(r"\b([a-z][a-z0-9+.-]*://[^/\s\"?#]+)[^\s\"]*", re.IGNORECASE)


class FieldChange(msgspec.Struct, frozen=True, kw_only=True):
    field: str  # its path in the policy: "bake_s", "rollback.strategy"
    before: str = ABSENT  # JSON of the value, or "(none)" where there was none
    after: str = ABSENT

    def line(self) -> str:
        return f"{self.field}: {self.before} → {self.after}"


def policy_changes(before: Policy, after: Policy) -> list[FieldChange]:
    """Every field whose value differs, in the order the policy declares its fields."""
    out: list[FieldChange] = []
    _diff("", msgspec.to_builtins(before), msgspec.to_builtins(after), out)
    return out


def _diff(path: str, a: Any, b: Any, out: list[FieldChange]) -> None:
    if a == b:
        return
    if isinstance(a, dict) and isinstance(b, dict) and ((a and b) or not path):
        _diff_keyed(a, b, lambda key: f"{path}.{key}" if path else str(key), out)
        return
    named_a, named_b = _by_name(a), _by_name(b)
    if named_a and named_b:  # both non-empty, as for records above
        _diff_keyed(named_a, named_b, lambda name: f"{path}[{name}]", out)
        return
    out.append(FieldChange(field=path, before=_shown(a), after=_shown(b)))


def _diff_keyed(
    a: dict[Any, Any], b: dict[Any, Any], at: Callable[[Any], str], out: list[FieldChange]
) -> None:
    """Entries by key, ``a``'s order first and then what only ``b`` has; ``at(key)`` is the
    path of an entry."""
    for key in [*a, *(k for k in b if k not in a)]:
        sub = at(key)
        if key not in a:
            out.append(FieldChange(field=sub, after=_shown(b[key])))
        elif key not in b:
            out.append(FieldChange(field=sub, before=_shown(a[key])))
        else:
            _diff(sub, a[key], b[key], out)


_IDENTITY = ("name", "id")


def _by_name(value: Any) -> dict[str, Any] | None:
    """A list of records that each carry a distinct ``name`` (or ``id``), keyed by it; else None."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        return None
    for field in _IDENTITY:
        names = [v.get(field) for v in value]
        if all(isinstance(n, str) for n in names) and len(set(names)) == len(names):
            return dict(zip(names, value, strict=True))
    return None


def _host_only(m: re.Match[str]) -> str:
    return m.group(1) + ("/…" if m.group(0) != m.group(1) else "")


def _shown(value: Any) -> str:
    text = _URL.sub(_host_only, json.dumps(value, ensure_ascii=False))
    if len(text) > MAX_VALUE_CHARS:
        return text[: MAX_VALUE_CHARS - 1] + "…"
    return text
