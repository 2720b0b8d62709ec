"""Validation of a version with overlays: what nodes will run, not only what was sent.

At publish (docs/design.md §2.6) the base alone, the base with each overlay alone, and every
variant that the namespace's current members produce are each checked against the policy like
any content (``validate``: size, UTF-8, format, JSON Schema). A rejection names the variant —
``base``, an overlay's selector, or the ``+``-joined overlays of a member's variant with the
nodes that would run it — and the place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from confbus.runtime.bus import Bus
from confbus.runtime.kv import StateKV
from confbus.runtime.nodelabels import members_of
from confbus.schemas.api.store import VariantDiff
from confbus.schemas.names import Format
from confbus.schemas.policy import Policy
from confbus.schemas.streams import CFG_STATE
from confbus.schemas.variants import (
    BASE,
    VariantError,
    applying,
    each_overlay_alone,
    render,
    variant_name,
    variant_set,
    variants_for,
)
from confbus.version_store.errors import InvalidConfig
from confbus.version_store.validate import diff, validate


@dataclass
class Members:
    """The current members of a namespace and their labels, read when a change has overlays."""

    bus: Bus
    _kv: StateKV | None = field(default=None, init=False)

    async def of(self, namespace: str) -> dict[str, dict[str, str]]:
        if self._kv is None:
            self._kv = await StateKV.open(self.bus, CFG_STATE)
        return await members_of(self._kv, namespace)


def validate_variants(
    content: bytes,
    fmt: Format,
    policy: Policy,
    members: Mapping[str, Mapping[str, str]],
) -> None:
    """``InvalidConfig`` naming the variant unless every variant is acceptable for ``policy``.

    ``members``: each current member's labels (node id → labels)."""
    ns = policy.namespace
    if policy.signing is not None and policy.signing.threshold > 0:
        raise InvalidConfig(
            f"namespace {ns!r} requires signed changes; a signature covers one content, and an "
            "agent receives only its own variant, so overlays cannot be signed yet",
            "variants",
        )
    if policy.secret or policy.data_keys:
        raise InvalidConfig(
            f"namespace {ns!r} is secret; overlays are not sealed yet, so a secret namespace "
            "takes no overlays",
            "variants",
        )
    try:
        vs = variant_set(content, fmt)
        _check(BASE, vs.base.encode(), fmt, policy)
        for alone in each_overlay_alone(vs):
            _check(f"{alone.name} (the base with this overlay alone)", alone.content, fmt, policy)
        nodes: dict[str, list[str]] = {}
        for node, labels in sorted(members.items()):
            nodes.setdefault(variant_name(applying(vs, labels)), []).append(node)
        for name, variant in variants_for(vs, members.values()).items():
            _check(f"{name} (nodes {_few(nodes[name])})", variant.content, fmt, policy)
    except VariantError as exc:
        raise InvalidConfig(str(exc), "variants") from None


def _check(name: str, content: bytes, fmt: Format, policy: Policy) -> None:
    try:
        validate(content, fmt, policy)
    except InvalidConfig as exc:
        raise InvalidConfig(f"variant {name}: {exc.reason}", exc.where) from None


def _few(nodes: list[str], n: int = 5) -> str:
    more = f" and {len(nodes) - n} more" if len(nodes) > n else ""
    return ", ".join(nodes[:n]) + more


def variant_diffs(
    namespace: str,
    old: bytes | None,
    old_label: str,
    new: bytes,
    fmt: Format,
    members: Mapping[str, Mapping[str, str]],
) -> list[VariantDiff]:
    """Each variant ``new`` makes for the current members (grouped by the variant they would
    run and the one they run now), with the diff from ``old``; then the base and each overlay
    alone that no member would run. For ``confbus publish --dry-run``."""
    vs = variant_set(new, fmt)
    before = variant_set(old, fmt) if old is not None else None
    groups: dict[tuple[str, str], list[str]] = {}
    for node, labels in sorted(members.items()):
        now = variant_name(applying(before, labels)) if before is not None else ""
        groups.setdefault((variant_name(applying(vs, labels)), now), []).append(node)
    out: list[VariantDiff] = []
    seen: set[str] = set()
    for (name, _), nodes in groups.items():
        labels = members[nodes[0]]
        content = render(vs, labels)
        was = render(before, labels) if before is not None else b""
        text = diff(was, content, f"{namespace} {old_label}", f"{namespace} (proposed) {name}")
        out.append(VariantDiff(name=name, nodes=nodes, sha256=_sha(content), diff=text))
        seen.add(name)
    unseen = [(BASE, vs.base.encode()), *((v.name, v.content) for v in each_overlay_alone(vs))]
    for name, content in unseen:
        if name not in seen:
            was = render(before, {}) if before is not None else b""
            text = diff(was, content, f"{namespace} {old_label} base", f"{namespace} {name}")
            out.append(VariantDiff(name=name, sha256=_sha(content), diff=text))
    return out


def _sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()
