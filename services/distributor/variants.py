"""Each node's own bytes of a version with overlays, as the distributor judges them
(docs/design.md §2.6).

A node that applied a version with overlays reports its own bytes' sha256 (``applied_sha256``).
Whether those are still its bytes depends on its labels now: a node whose labels changed has
another variant of the same version to run. The repairs compare the two, and a difference is a
switch to make (the coordinator renders the node's variant from its node record; the agent takes
the same version again only as a move to other bytes). A version's overlays are read from the
store once and kept (versions never change); each variant's sha256 is rendered once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from confbus.distributor.store import Store
from confbus.runtime.errors import ConfbusError
from confbus.schemas.variants import (
    VariantError,
    VariantSet,
    applying,
    has_variants,
    variant_for,
    variant_name,
    variant_set,
)

log = logging.getLogger("confbus.distributor")

# A version without overlays: every node's bytes are the version's.
_PLAIN = VariantSet(format="text", base="")


@dataclass
class NodeVariants:
    store: Store
    _sets: dict[tuple[str, int], VariantSet] = field(default_factory=dict)
    _sha256: dict[tuple[str, int, str], str | None] = field(default_factory=dict)
    _reading: set[tuple[str, int]] = field(default_factory=set)

    def known(self, namespace: str, version: int) -> bool:
        return (namespace, version) in self._sets

    def sha256_for(self, namespace: str, version: int, labels: Mapping[str, str]) -> str | None:
        """The sha256 of the bytes a node with ``labels`` runs at ``version`` (a version read
        with ``learn``); None for a version without overlays, or a variant that does not render
        (the coordinator refuses to switch to it and says why)."""
        vs = self._sets[(namespace, version)]
        if vs is _PLAIN:
            return None
        name = variant_name(applying(vs, labels))
        key = (namespace, version, name)
        if key not in self._sha256:
            try:
                self._sha256[key] = variant_for(vs, labels).sha256
            except VariantError as exc:
                log.warning("a node's variant does not render", extra={"error": str(exc)})
                self._sha256[key] = None
        return self._sha256[key]

    async def learn(self, namespace: str, version: int) -> None:
        key = (namespace, version)
        if key in self._sets or key in self._reading:
            return
        self._reading.add(key)
        try:
            info, content = await self.store.content(namespace, version)
            self._sets[key] = variant_set(content, info.format) if has_variants(content) else _PLAIN
        except VariantError as exc:
            # Nothing can switch to it (the coordinator renders the same way): judge no node by it.
            log.warning("a version's variants do not read", extra={"error": str(exc)})
            self._sets[key] = _PLAIN
        except ConfbusError as exc:
            log.info("cannot read a version's variants", extra={"error": str(exc)})
        finally:
            self._reading.discard(key)
