"""A small linearizability checker (Wing & Gong, with Lowe's memoisation — what Porcupine does),
and the sequential model of one namespace of the version-store.

A history is a list of ``Op``: who, what (``publish`` or ``read``), the input, the output, and
the invoke and return times. An operation whose outcome is unknown (a timeout: it may or may
not have happened) has return time ``math.inf`` and output ``None``: it may take effect at any
point after its invocation, or not at all (Jepsen's *info*, etcd's "failed writes get ∞").

``check`` answers: is there a total order of the operations, consistent with real time (an
operation that returned before another was invoked comes first), in which every operation
gives the output it gave, by the model? It searches for one with backtracking and caches the
(linearized set, state) pairs already explored. Histories are checked per namespace
(P-compositionality: linearizability is local).

The model (``StoreModel``): a namespace is the sequence of change ids stored, version *n* being
the *n*-th. ``publish(change_id, base)`` → the version (a change id already stored gives its
version back, checked before the base); with a ``base`` that is not the newest version →
``"conflict"`` and nothing changes. ``read()`` → ``(newest version, its change id)``.

``anomalies`` names the three plain ways a history can be illegal, for the report: a read that
misses an acknowledged version, versions out of real-time order, a conditional publish that
won against a newer base.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

PublishIn = tuple[str, int | None]  # (change id, base or None)
ReadOut = tuple[int, str | None]  # (newest version, its change id)


@dataclass
class Op:
    process: str
    f: str  # "publish" | "read"
    input: Any
    output: Any  # None: unknown
    invoke: float
    ret: float = math.inf  # math.inf: unknown outcome
    key: str = ""

    @property
    def unknown(self) -> bool:
        return self.ret == math.inf


class Model(Protocol):
    def init(self) -> Hashable: ...

    def step(self, state: Hashable, op: Op) -> tuple[bool, Hashable]:
        """Can ``op`` take effect in ``state`` with the output it gave? And the next state."""
        ...


class StoreModel:
    def init(self) -> tuple[str, ...]:
        return ()

    def step(self, state: Hashable, op: Op) -> tuple[bool, Hashable]:
        assert isinstance(state, tuple)
        if op.f == "read":
            newest = (len(state), state[-1] if state else None)
            return (op.output is None or tuple(op.output) == newest), state
        change_id, base = op.input
        if change_id in state:
            version = state.index(change_id) + 1
            return (op.output is None or op.output == version), state
        if base is not None and base != len(state):
            return (op.output is None or op.output == "conflict"), state
        if op.output == "conflict":
            return False, state
        new = (*state, change_id)
        return (op.output is None or op.output == len(new)), new


@dataclass
class _Entry:
    op_id: int
    is_call: bool
    time: float
    prev: _Entry | None = None
    next: _Entry | None = None
    match: _Entry | None = None  # a call's return entry


@dataclass
class Result:
    ok: bool
    ops: int
    explored: int
    # When illegal: the longest prefix that could be linearized, and the op that could not.
    stuck_at: Op | None = None
    partial: list[Op] = field(default_factory=list)


def _linked(ops: Sequence[Op]) -> _Entry:
    entries: list[_Entry] = []
    for i, op in enumerate(ops):
        call = _Entry(i, True, op.invoke)
        ret = _Entry(i, False, op.ret)
        call.match = ret
        entries += [call, ret]
    # At equal times a return sorts first: it happened before the other call.
    entries.sort(key=lambda e: (e.time, e.is_call))
    head = _Entry(-1, False, -math.inf)
    prev = head
    for e in entries:
        prev.next, e.prev = e, prev
        prev = e
    return head


def _lift(e: _Entry) -> None:
    """Take a call and its return out of the list (the op is linearized)."""
    assert e.prev is not None and e.match is not None
    e.prev.next = e.next
    if e.next is not None:
        e.next.prev = e.prev
    r = e.match
    assert r.prev is not None
    r.prev.next = r.next
    if r.next is not None:
        r.next.prev = r.prev


def _unlift(e: _Entry) -> None:
    r = e.match
    assert r is not None and r.prev is not None and e.prev is not None
    r.prev.next = r
    if r.next is not None:
        r.next.prev = r
    e.prev.next = e
    if e.next is not None:
        e.next.prev = e


def check(ops: Sequence[Op], model: Model | None = None, max_explored: int = 2_000_000) -> Result:
    """Wing–Gong–Lowe search over one key's history."""
    m = model or StoreModel()
    ops = list(ops)
    head = _linked(ops)
    cache: set[tuple[int, Hashable]] = set()
    stack: list[tuple[_Entry, Hashable]] = []
    linearized = 0
    state = m.init()
    entry = head.next
    explored = 0
    best: list[int] = []
    stuck: Op | None = None
    while entry is not None:
        explored += 1
        if explored > max_explored:
            raise RuntimeError(f"linearizability search gave up after {max_explored} steps")
        if entry.is_call:
            ok, new_state = m.step(state, ops[entry.op_id])
            if ok:
                lin = linearized | (1 << entry.op_id)
                if (lin, new_state) not in cache:
                    cache.add((lin, new_state))
                    stack.append((entry, state))
                    state, linearized = new_state, lin
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # A return whose call is not linearized: undo the last choice and try the next.
            if len(stack) > len(best):
                best = [e.op_id for e, _ in stack]
                stuck = ops[entry.op_id]
            if not stack:
                return Result(False, len(ops), explored, stuck, [ops[i] for i in best])
            top, state = stack.pop()
            linearized &= ~(1 << top.op_id)
            _unlift(top)
            entry = top.next
    return Result(True, len(ops), explored)


def by_key(ops: Iterable[Op]) -> dict[str, list[Op]]:
    out: dict[str, list[Op]] = {}
    for op in ops:
        out.setdefault(op.key, []).append(op)
    return out


def check_all(ops: Iterable[Op], model: Model | None = None) -> dict[str, Result]:
    return {key: check(part, model) for key, part in by_key(ops).items()}


def anomalies(ops: Sequence[Op]) -> dict[str, int]:
    """The plain violations, counted (each one also makes ``check`` fail)."""
    acked = [
        op for op in ops if op.f == "publish" and isinstance(op.output, int) and not op.unknown
    ]
    reads = [op for op in ops if op.f == "read" and op.output is not None]
    stale_reads = sum(
        1 for r in reads for p in acked if p.ret < r.invoke and r.output[0] < p.output
    )
    out_of_order = sum(
        1
        for a in acked
        for b in acked
        if a.ret < b.invoke and a.output > b.output and a.input[0] != b.input[0]
    )
    won_against_newer = sum(
        1
        for c in acked
        if c.input[1] is not None
        and any(p.ret < c.invoke and p.output > c.input[1] for p in acked if p is not c)
        and c.output == c.input[1] + 1
        and c.input[0] not in {p.input[0] for p in acked if p is not c}
    )
    return {
        "stale_reads": stale_reads,
        "out_of_real_time_order": out_of_order,
        "conditional_won_against_newer_base": won_against_newer,
    }
