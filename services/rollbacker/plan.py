"""Who is switched back, and in which batches.

A rollback strategy is ``all-at-once`` (one batch: one atomic switch of every live node) or
``batches:N`` (N batches of near-equal size, each its own atomic switch and health check).
Nodes still running the version being rolled back go first: they are the ones hurting.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from confbus.runtime.errors import InvalidInput
from confbus.schemas.api.dist import NodeStatus

ALL_AT_ONCE = "all-at-once"
_BATCHES_RE = re.compile(r"^batches:([1-9][0-9]{0,3})$")


def batch_count(strategy: str) -> int:
    """1 for ``all-at-once``, N for ``batches:N`` (1 ≤ N ≤ 9999)."""
    if strategy == ALL_AT_ONCE:
        return 1
    m = _BATCHES_RE.fullmatch(strategy)
    if m is None:
        raise InvalidInput(
            f"unknown rollback strategy {strategy!r}: use all-at-once or batches:N",
            where="strategy",
        )
    return int(m.group(1))


def targets(nodes: Sequence[NodeStatus], from_version: int | None, new_version: int) -> list[str]:
    """The live nodes still to switch, those on ``from_version`` first, then by name."""
    todo = [
        n
        for n in nodes
        if n.liveness == "live" and (n.applied_version is None or n.applied_version < new_version)
    ]
    todo.sort(key=lambda n: (n.applied_version != from_version, n.node))
    return [n.node for n in todo]


def split(nodes: Sequence[str], count: int) -> list[list[str]]:
    """``nodes`` in ``count`` contiguous batches whose sizes differ by at most one (larger
    first); fewer batches when there are fewer nodes, never an empty one."""
    count = max(1, min(count, len(nodes)))
    size, extra = divmod(len(nodes), count)
    out: list[list[str]] = []
    start = 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        if end > start:
            out.append(list(nodes[start:end]))
        start = end
    return out
