"""This node's own bytes of a version fetched from the store (docs/design.md §2.6).

A prepare carries each node's variant ready to stage; the store holds a version with overlays as
one envelope. Where the agent takes a version from the store — a re-sync after drift, a last
known good it never ran — it renders its own variant from that envelope with its own labels,
once the envelope is checked against the version's sha256.
"""

from __future__ import annotations

from collections.abc import Mapping

from confbus.agent.state import Refused
from confbus.agent.state_io import sha256_bytes
from confbus.schemas.variants import VariantError, has_variants, render, variant_set
from confbus.schemas.versions import VersionInfo


def own_variant(content: bytes, info: VersionInfo, labels: Mapping[str, str]) -> bytes:
    """``content`` (a version's, as the store gave it) as this node runs it; ``Refused`` for an
    envelope that is not the version's or does not render."""
    if not has_variants(content):
        return content
    if sha256_bytes(content) != info.sha256:
        raise Refused("sha256", f"version {info.version}'s variants are not its sha256")
    try:
        return render(variant_set(content, info.format), labels)
    except VariantError as exc:
        raise Refused("variant", str(exc)) from None
