"""Variants: one version, different bytes per node label (docs/design.md §2.6).

A version is a **base** plus **overlays**, each keyed by a label selector (``dc=eu1``,
``dc=eu1,tier=canary``: ``confbus.schemas.selectors``). A node's bytes are the base with every
overlay whose selector its labels match, applied **in the order given**: a later overlay
overrides an earlier one where both set the same key. For JSON, YAML and TOML an overlay is a
merge patch (RFC 7396: objects merge key by key, ``null`` deletes a key, anything else
replaces); TOML has no ``null``, so a TOML overlay can set and replace but not delete. For a
text namespace an overlay replaces the whole file (the last matching one wins). A node that
matches no overlay gets the base's bytes exactly as stored; one that matches some gets the
merged document written back in the namespace's format (JSON with a two-space indent).

On the wire and in the store a version with overlays is one blob: ``VARIANTS_MAGIC`` and a
JSON ``VariantSet``. Its sha256 (the version's) is that blob's, so one version number names
all the variants together — one author, one approval, one rollback — and the stores, exports
and integrity checks need nothing new. What a node runs has the sha256 of its rendered bytes.

``render(version, labels)`` is the one way bytes are made for a node: the version-store
validates with it, the coordinator fills prepares with it, the agent re-renders with it for a
catch-up or re-sync from the store, and ``confbus show --for`` prints it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from confbus.schemas.base import LazyDecoder
from confbus.schemas.names import Format, Label
from confbus.schemas.selectors import matches, selector_text

VARIANTS_MAGIC = b"confbus-variants v1\n"
BASE = "base"  # the name of the variant no overlay applies to


class Overlay(msgspec.Struct, frozen=True, kw_only=True):
    """Applied to a node whose labels match ``selector`` (every pair)."""

    selector: dict[Label, Label]
    content: str  # a merge patch in the namespace's format (text: the whole file)


class VariantSet(msgspec.Struct, frozen=True, kw_only=True):
    """A version's content: the base and its overlays, in order of precedence (last wins)."""

    format: Format
    base: str
    overlays: list[Overlay] = []


class Variant(msgspec.Struct, frozen=True, kw_only=True):
    """One distinct rendering: its name (the selectors of the overlays applied, in order,
    ``+``-joined; ``base`` for none), its bytes and their sha256."""

    name: str
    content: bytes
    sha256: str


class VariantError(ValueError):
    """An overlay that cannot be applied: names the variant (or overlay) and the place."""

    def __init__(self, variant: str, why: str) -> None:
        self.variant = variant
        self.why = why
        super().__init__(f"variant {variant}: {why}")


_encode = msgspec.json.Encoder().encode
_decode: LazyDecoder[VariantSet] = LazyDecoder(VariantSet)


def has_variants(content: bytes) -> bool:
    return content.startswith(VARIANTS_MAGIC)


def encode_variants(vs: VariantSet) -> bytes:
    """The stored content of a version with overlays (without any: just the base's bytes)."""
    if not vs.overlays:
        return vs.base.encode()
    return VARIANTS_MAGIC + _encode(vs)


def variant_set(content: bytes, format: Format) -> VariantSet:
    """Any version's content as a ``VariantSet`` (plain content: a base without overlays).
    ``VariantError`` for a malformed envelope, or a base that is not UTF-8."""
    if not has_variants(content):
        try:
            return VariantSet(format=format, base=content.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise VariantError(BASE, f"not UTF-8 at byte {exc.start}") from None
    try:
        vs = _decode(content[len(VARIANTS_MAGIC) :])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise VariantError(BASE, f"a malformed variants envelope: {exc}") from None
    if vs.format != format:
        raise VariantError(BASE, f"the envelope says format {vs.format}, the version {format}")
    return vs


def overlay_name(overlay: Overlay) -> str:
    return selector_text(overlay.selector) or "*"


def applying(version: VariantSet, labels: Mapping[str, str]) -> list[Overlay]:
    """The overlays a node with ``labels`` gets, in the order they apply."""
    return [o for o in version.overlays if matches(labels, o.selector)]


def variant_name(overlays: Sequence[Overlay]) -> str:
    return "+".join(overlay_name(o) for o in overlays) or BASE


def render(version: VariantSet, labels: Mapping[str, str]) -> bytes:
    """The bytes a node with ``labels`` runs. ``VariantError`` names the variant and why."""
    return _apply(version, applying(version, labels))


def variant_for(version: VariantSet, labels: Mapping[str, str]) -> Variant:
    overlays = applying(version, labels)
    content = _apply(version, overlays)
    name = variant_name(overlays)
    return Variant(name=name, content=content, sha256=hashlib.sha256(content).hexdigest())


def variants_for(
    version: VariantSet, label_sets: Iterable[Mapping[str, str]]
) -> dict[str, Variant]:
    """The distinct variants that nodes with these labels run, by name (each rendered once)."""
    out: dict[str, Variant] = {}
    for labels in label_sets:
        overlays = applying(version, labels)
        name = variant_name(overlays)
        if name not in out:
            content = _apply(version, overlays)
            out[name] = Variant(
                name=name, content=content, sha256=hashlib.sha256(content).hexdigest()
            )
    return out


def each_overlay_alone(version: VariantSet) -> list[Variant]:
    """The base with each overlay applied alone — what validation checks besides the variants
    that the current nodes produce, so that a node with new labels meets no unchecked overlay
    on its own."""
    out = []
    for overlay in version.overlays:
        content = _apply(version, [overlay])
        name = overlay_name(overlay)
        out.append(Variant(name=name, content=content, sha256=hashlib.sha256(content).hexdigest()))
    return out


def variant_with_sha(
    version: VariantSet, sha256: str, label_sets: Iterable[Mapping[str, str]]
) -> Variant | None:
    """The variant whose bytes hash to ``sha256``, among those nodes with ``label_sets`` run
    (tried in order: give a node's own labels first), the base and each overlay alone; None if
    none does. What a node ran, told by the sha256 it announced: the audit log keeps no labels,
    and a node whose labels changed since may still run its old variant."""
    for v in variants_for(version, [*label_sets, {}]).values():
        if v.sha256 == sha256:
            return v
    for v in each_overlay_alone(version):
        if v.sha256 == sha256:
            return v
    return None


# -- merge patch (RFC 7396) ----------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: ``patch`` applied to ``target`` (neither is modified)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# PyYAML and tomllib are imported by the namespaces of those formats only: a JSON publish or
# agent does not pay for them (tests/e2e/test_lean_imports.py). Their errors read as ValueError.
def _parse(fmt: str, text: str) -> Any:
    if fmt == "json":
        return json.loads(text)
    if fmt == "yaml":
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(str(exc)) from None
    if fmt == "toml":
        import tomllib

        return tomllib.loads(text)
    raise ValueError(f"format {fmt} has no merge patches")


def _dump(fmt: str, doc: Any) -> bytes:
    if fmt == "json":
        return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()
    if fmt == "yaml":
        import yaml

        try:
            return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode()
        except yaml.YAMLError as exc:
            raise ValueError(str(exc)) from None
    if not isinstance(doc, dict):
        raise ValueError("a TOML document must be a table")
    return msgspec.toml.encode(doc)


def _apply(version: VariantSet, overlays: Sequence[Overlay]) -> bytes:
    if not overlays:
        return version.base.encode()
    name = variant_name(overlays)
    if version.format == "text":
        return overlays[-1].content.encode()
    try:
        doc = _parse(version.format, version.base)
    except ValueError as exc:
        raise VariantError(name, f"the base does not parse as {version.format}: {exc}") from None
    for overlay in overlays:
        try:
            patch = _parse(version.format, overlay.content)
        except ValueError as exc:
            raise VariantError(
                name, f"overlay {overlay_name(overlay)} is not {version.format}: {exc}"
            ) from None
        doc = merge_patch(doc, patch)
    try:
        return _dump(version.format, doc)
    except (ValueError, TypeError) as exc:
        raise VariantError(name, f"cannot write the result as {version.format}: {exc}") from None
