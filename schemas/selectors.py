"""Label selectors: ``{"dc": "eu1"}`` or ``"dc=eu1,tier=web"`` — every pair must match.

One grammar and one matching rule for everything that picks nodes by their labels: a rollout's
targets (``confbus.distributor.strategy``) and a version's variants (``confbus.schemas.variants``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from confbus.schemas.names import LABEL_PATTERN

_LABEL_RE = re.compile(LABEL_PATTERN)
EXAMPLE = "dc=eu1,tier=web"


class SelectorError(ValueError):
    """A selector that does not parse; the message says what is wrong and what would be right."""

    def __init__(self, text: object, why: str) -> None:
        self.text = text
        self.why = why
        super().__init__(f"invalid selector {text!r}: {why}; expected labels like {EXAMPLE}")


def parse_selector(value: Mapping[str, str] | str | None) -> dict[str, str]:
    """A selector as a dict; ``None`` or empty selects every node."""
    if value is None:
        return {}
    pairs: list[tuple[str, str]] = []
    if isinstance(value, str):
        for item in filter(None, (s.strip() for s in value.split(","))):
            key, sep, val = item.partition("=")
            if not sep:
                raise SelectorError(value, f"{item!r} is not KEY=VALUE")
            pairs.append((key.strip(), val.strip()))
    elif isinstance(value, Mapping):
        pairs = [(k, v) for k, v in value.items()]
    else:
        raise SelectorError(value, "a selector is a mapping of label to value")
    out: dict[str, str] = {}
    for key, val in pairs:
        if not isinstance(key, str) or not _LABEL_RE.fullmatch(key):
            raise SelectorError(value, f"label name {key!r} must match {LABEL_PATTERN}")
        if not isinstance(val, str) or not _LABEL_RE.fullmatch(val):
            raise SelectorError(value, f"label value {val!r} must match {LABEL_PATTERN}")
        if key in out and out[key] != val:
            raise SelectorError(value, f"label {key!r} given twice")
        out[key] = val
    return out


def matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """Whether a node with ``labels`` is selected (the empty selector selects every node)."""
    return all(labels.get(k) == v for k, v in selector.items())


def selector_text(selector: Mapping[str, str]) -> str:
    """``dc=eu1,tier=web`` — the selector as a user writes it, keys in order."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
