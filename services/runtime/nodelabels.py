"""Nodes' labels as the distributor records them (``node.<node>`` in ``CFG_STATE``).

What renders variants per node reads labels from here: the coordinator, to give each
participant of a switch its own bytes, and the version-store, to validate every variant the
namespace's current members produce (docs/design.md §2.6). The distributor writes a node's record
when its labels or namespaces change, so the labels are those of its last heartbeat that
changed anything. A node without a record has no labels (it gets the variant of ``{}``).
"""

from __future__ import annotations

from collections.abc import Iterable

import anyio

from confbus.runtime.kv import StateKV
from confbus.schemas.state import NODES, decode_node, node_key


async def labels_of(kv: StateKV, nodes: Iterable[str]) -> dict[str, dict[str, str]]:
    """Each node's labels (``{}`` for one without a record), read concurrently."""
    out: dict[str, dict[str, str]] = {}

    async def one(node: str) -> None:
        entry = await kv.read(node_key(node), decode_node)
        out[node] = dict(entry.value.labels) if entry.value is not None else {}

    async with anyio.create_task_group() as tg:
        for node in set(nodes):
            tg.start_soon(one, node)
    return out


async def members_of(kv: StateKV, namespace: str) -> dict[str, dict[str, str]]:
    """The labels of every node that follows ``namespace`` and is not gone."""
    out: dict[str, dict[str, str]] = {}

    async def one(key: str) -> None:
        entry = await kv.read(key, decode_node)
        rec = entry.value
        if rec is None or rec.liveness == "gone":
            return
        if any(s.namespace == namespace for s in rec.namespaces):
            out[rec.node] = dict(rec.labels)

    keys = await kv.keys(NODES)
    async with anyio.create_task_group() as tg:
        for key in keys:
            tg.start_soon(one, key)
    return out
