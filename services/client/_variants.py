"""Which variant of a version each node runs, and what a version's overlays are
(docs/design.md §2.6): what ``status --at`` and the console show of variants.

A version with overlays is one blob in the store; a node announces the sha256 of its own
rendered bytes (``node.applied``, heartbeats). So a node's variant is told by that sha256: the
variant, among those the namespace's members produce now (its own labels first), the base and
each overlay alone, whose bytes hash to it (``confbus.schemas.variants.variant_with_sha``). The
audit log keeps no labels; the sha256 is what the node said it wrote, then as now.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import anyio
import msgspec

from confbus.client._store import Store
from confbus.runtime.errors import InvalidInput, NotFound, Unavailable
from confbus.runtime.kv import StateKV
from confbus.runtime.nodelabels import members_of
from confbus.schemas.api import dist as dist_api
from confbus.schemas.names import Format
from confbus.schemas.sealing import content_sha256
from confbus.schemas.selectors import matches
from confbus.schemas.streams import CFG_STATE
from confbus.schemas.variants import (
    BASE,
    VariantError,
    VariantSet,
    applying,
    has_variants,
    overlay_name,
    variant_name,
    variant_set,
    variant_with_sha,
    variants_for,
)

VARIANTS_WAIT_S = 5.0  # how long a best-effort lookup waits for the store


class OverlayInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One overlay of a version: its place in the order (1 first; a later one wins), its
    selector, and the members whose labels match it now."""

    order: int
    selector: dict[str, str]
    name: str
    nodes: list[str]


class VariantInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One distinct variant the members produce now (``base``: no overlay applies)."""

    name: str  # the overlays that apply, "+"-joined in order
    sha256: str
    size: int
    nodes: list[str]


class VersionVariants(msgspec.Struct, frozen=True, kw_only=True):
    """A version's overlays and the variants its namespace's members would run of it now. A
    version without overlays has none and one variant, ``base``, for every member."""

    namespace: str
    version: int
    sha256: str
    overlays: list[OverlayInfo]
    variants: list[VariantInfo]


class Variants(Store):
    """The client's view of variants."""

    async def members(self, namespace: str) -> dict[str, dict[str, str]]:
        """The labels of the namespace's current members (the distributor's node records)."""
        return await members_of(await StateKV.open(self.bus, CFG_STATE), namespace)

    async def version_variants(self, namespace: str, ref: str | int) -> VersionVariants:
        """A version's overlays, in order, each with the members it matches now, and the
        variants those members would run of it (rendered; the store's blob is read once)."""
        got = await self.get(namespace, ref)
        info = got.info
        members = await self.members(namespace)
        content = got.content or b""
        if not has_variants(content):
            whole = VariantInfo(
                name=BASE, sha256=info.sha256, size=info.size, nodes=sorted(members)
            )
            return VersionVariants(
                namespace=namespace,
                version=info.version,
                sha256=info.sha256,
                overlays=[],
                variants=[whole],
            )
        vs = _variant_set(content, info.format)
        overlays = [
            OverlayInfo(
                order=i,
                selector=dict(o.selector),
                name=overlay_name(o),
                nodes=[n for n, labels in sorted(members.items()) if matches(labels, o.selector)],
            )
            for i, o in enumerate(vs.overlays, 1)
        ]
        nodes: dict[str, list[str]] = {}
        for node, labels in sorted(members.items()):
            nodes.setdefault(variant_name(applying(vs, labels)), []).append(node)
        try:  # no member yet: the base, what a node without matching labels would run
            rendered = variants_for(vs, list(members.values()) or [{}])
        except VariantError as exc:
            raise InvalidInput(str(exc), where="variants") from None
        variants = [
            VariantInfo(name=v.name, sha256=v.sha256, size=len(v.content), nodes=nodes.get(n, []))
            for n, v in sorted(rendered.items())
        ]
        return VersionVariants(
            namespace=namespace,
            version=info.version,
            sha256=info.sha256,
            overlays=overlays,
            variants=variants,
        )

    async def fleet_variants(
        self, fleet: dist_api.StatusReply, *, best_effort: bool = False
    ) -> dict[str, str | None]:
        """Which variant each node of ``fleet`` (``fleet_status``) runs now, told by the
        sha256 of its live file and its labels (``node_variants``). A node on production
        with production's own bytes runs the base: no store read for it. ``best_effort``: as
        in ``node_variants``."""
        on_production = {
            n.node
            for n in fleet.nodes
            if n.applied_version == fleet.production_version
            and n.sha256 is not None
            and n.sha256 == fleet.production_sha256
        }
        named = await self.node_variants(
            fleet.namespace,
            {
                n.node: (n.applied_version, n.sha256)
                for n in fleet.nodes
                if n.node not in on_production
            },
            labels={n.node: n.labels for n in fleet.nodes},
            best_effort=best_effort,
        )
        return {**dict.fromkeys(on_production, BASE), **named}

    async def node_variants(
        self,
        namespace: str,
        applied: Mapping[str, tuple[int | None, str | None]],
        labels: Mapping[str, Mapping[str, str]] | None = None,
        *,
        best_effort: bool = False,
    ) -> dict[str, str | None]:
        """Each node's variant name, told by its version and the sha256 of its bytes
        (``applied``: node → (version, sha256)). ``labels``: the nodes' labels if the caller
        has them; else the members' now, read only for a version with overlays. A version
        without overlays is ``base``; None: no version, one the store no longer has, or a
        sha256 none of the variants tried hashes to. ``best_effort``: asked of the store for
        ``VARIANTS_WAIT_S`` at most, and a store that is down or slow leaves every node
        unnamed (``{}``) — for views whose subject is the fleet, not its variants."""
        if best_effort:
            with anyio.move_on_after(VARIANTS_WAIT_S), contextlib.suppress(Unavailable):
                return await self.node_variants(namespace, applied, labels)
            return {}
        sets: dict[int, VariantSet | None] = {}
        gone: set[int] = set()
        known = labels
        out: dict[str, str | None] = {}
        for node, (version, sha) in sorted(applied.items()):
            out[node] = None
            if version is None or sha is None or version in gone:
                continue
            if version not in sets:
                try:
                    sets[version] = await self._variant_set_of(namespace, version)
                except NotFound:
                    gone.add(version)
                    continue
            vs = sets[version]
            if vs is None:
                out[node] = BASE
                continue
            if known is None:
                known = await self.members(namespace)
            try:
                found = variant_with_sha(vs, sha, [known.get(node, {}), *known.values()])
            except VariantError as exc:
                raise InvalidInput(str(exc), where="variants") from None
            out[node] = found.name if found is not None else None
        return out

    async def _variant_set_of(self, namespace: str, version: int) -> VariantSet | None:
        """A version's overlays (None: it has none). Kept by sha256, so a live page refreshing
        at every event reads only the version's metadata again, not its bytes."""
        info = (await self.get(namespace, version, content=False)).info
        if info.sha256 in _SETS:
            return _SETS[info.sha256]
        got = await self.get(namespace, version)
        content = got.content or b""
        vs = _variant_set(content, info.format) if has_variants(content) else None
        if content_sha256(content) == info.sha256:  # content-addressed: safe to keep
            while len(_SETS) >= _SETS_KEPT:
                del _SETS[next(iter(_SETS))]
            _SETS[info.sha256] = vs
        return vs


# Parsed overlays by the version's sha256 (bounded; oldest out first).
_SETS: dict[str, VariantSet | None] = {}
_SETS_KEPT = 64


def _variant_set(content: bytes, fmt: Format) -> VariantSet:
    try:
        return variant_set(content, fmt)
    except VariantError as exc:
        raise InvalidInput(str(exc), where="variants") from None
