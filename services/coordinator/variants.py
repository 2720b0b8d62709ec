"""A prepare's variants: each participant's bytes of a version with overlays (docs/design.md
§2.6).

The participants' labels come from their node records (``confbus.runtime.nodelabels``); each
distinct variant is rendered once (``confbus.schemas.variants.render``) and goes into the
prepare once, with its sha256 and the nodes it is for. A version without overlays has none: its
bytes go in the prepare's ``content`` as before, and nothing is read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from confbus.runtime.errors import InvalidInput
from confbus.schemas.names import Format
from confbus.schemas.txn import PreparedVariant
from confbus.schemas.variants import (
    VariantError,
    applying,
    has_variants,
    variant_name,
    variant_set,
    variants_for,
)

# The participants' labels: node id -> labels.
LabelsOf = Callable[[list[str]], Awaitable[Mapping[str, Mapping[str, str]]]]


async def prepared_variants(
    content: bytes, fmt: Format, participants: list[str], labels_of: LabelsOf | None
) -> list[PreparedVariant]:
    """The variants of a prepare (none for a version without overlays); ``InvalidInput``
    naming the variant when one does not render."""
    if not has_variants(content):
        return []
    labels = await labels_of(participants) if labels_of is not None else {}
    try:
        vs = variant_set(content, fmt)
        nodes: dict[str, list[str]] = {}
        for node in participants:
            nodes.setdefault(variant_name(applying(vs, labels.get(node, {}))), []).append(node)
        rendered = variants_for(vs, (labels.get(n, {}) for n in participants))
    except VariantError as exc:
        raise InvalidInput(str(exc), where="variants") from None
    return [
        PreparedVariant(name=name, sha256=v.sha256, content=v.content, nodes=nodes[name])
        for name, v in sorted(rendered.items())
    ]
