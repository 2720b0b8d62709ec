"""What changed between two policies, field by field: the ``policy.changed`` event's
``changes``, and what ``confbus policy`` shows before and after it stores one.

A change names its field by its path (``bake_s``, ``rollback.strategy``,
``json_schema.properties.pool.minimum``; a list is compared whole) and gives both values as
JSON, clipped to ``MAX_VALUE_CHARS``. A URL shows only its scheme and host: a webhook's path
or query often is its secret, and the audit log is read by CI.
"""

from __future__ import annotations

import json
import re
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
        for key in [*a, *(k for k in b if k not in a)]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in a:
                out.append(FieldChange(field=sub, after=_shown(b[key])))
            elif key not in b:
                out.append(FieldChange(field=sub, before=_shown(a[key])))
            else:
                _diff(sub, a[key], b[key], out)
        return
    out.append(FieldChange(field=path, before=_shown(a), after=_shown(b)))


def _host_only(m: re.Match[str]) -> str:
    return m.group(1) + ("/…" if m.group(0) != m.group(1) else "")


def _shown(value: Any) -> str:
    text = _URL.sub(_host_only, json.dumps(value, ensure_ascii=False))
    if len(text) > MAX_VALUE_CHARS:
        return text[: MAX_VALUE_CHARS - 1] + "…"
    return text
