"""A prepare's variants: each participant's bytes of a version with overlays (docs/design.md
§2.6).

The participants' labels come from their node records (``confbus.runtime.nodelabels``); each
distinct variant is rendered once (``confbus.schemas.variants.render``) and goes into the
prepare once, with its sha256 and the nodes it is for. A version without overlays has none: its
bytes go in the prepare's ``content`` as before, and nothing is read.

The store bounds each content, not their sum: a wave whose nodes run many large variants can
make a prepare the bus does not carry. ``check_fits`` refuses it before anything is sent, with
a reason the rollout and ``publish --wait`` show, instead of a publish error retried until the
switch gives up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from confbus.runtime.errors import InvalidInput
from confbus.schemas.names import Format
from confbus.schemas.streams import CFG_TXN
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


# Room for the prepare's headers (its Nats-Msg-Id) within the server's max_payload, which
# counts headers and payload together.
HEADERS_ROOM = 1024


def check_fits(
    namespace: str, version: int, variants: list[PreparedVariant], size: int, max_payload: int
) -> None:
    """``InvalidInput`` unless a variant prepare of ``size`` bytes (encoded) fits both the
    server's ``max_payload`` and ``CFG_TXN``'s largest message."""
    limit = min(max_payload, CFG_TXN.max_msg_size) - HEADERS_ROOM
    if size <= limit:
        return
    each = ", ".join(f"{v.name} {len(v.content)}" for v in variants)
    raise InvalidInput(
        f"the prepare of {namespace} v{version} is {size} bytes, more than the bus carries "
        f"({limit}): it holds each of the wave's {len(variants)} distinct variants once "
        f"(bytes: {each}). Smaller waves (fewer variants each) or smaller content would fit",
        where="variants",
    )
