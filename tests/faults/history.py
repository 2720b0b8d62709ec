"""A Jepsen-style history: every client operation with its invoke and complete time (monotonic)
and an outcome of ``ok``, ``fail`` (it certainly did not happen) or ``unknown`` (it may have:
a timeout, a lost connection). Fault marks split the run into *before*, *during* and *after*
for the availability figures.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import nats.errors
import nats.js.errors

Result = Literal["ok", "fail", "unknown"]
T = TypeVar("T")


class Definite(Exception):
    """Raised by an operation that knows it did not take effect (e.g. a stale ``base``)."""


@dataclass
class Op:
    process: str
    f: str  # what kind of operation: publish, read, switch, ...
    key: str
    value: Any  # the input
    invoke: float
    complete: float = math.inf  # math.inf while running, and for an unknown outcome
    result: Result | None = None
    output: Any = None
    error: str = ""


def classify(exc: BaseException) -> Result:
    """fail when the operation certainly did not happen, unknown when it may have."""
    if isinstance(exc, Definite | nats.errors.NoRespondersError):
        return "fail"
    if isinstance(exc, nats.js.errors.APIError) and not isinstance(
        exc, nats.js.errors.ServiceUnavailableError
    ):
        # The stream answered: it refused the write.
        return "fail"
    return "unknown"


@dataclass
class History:
    t0: float = field(default_factory=time.monotonic)
    ops: list[Op] = field(default_factory=list)
    marks: list[tuple[str, float]] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def mark(self, name: str) -> None:
        """``fault`` when a fault is injected, ``heal`` when it is healed."""
        self.marks.append((name, self.now()))

    async def run(
        self,
        process: str,
        f: str,
        key: str,
        value: Any,
        call: Callable[[], Awaitable[T]],
        classify_error: Callable[[BaseException], Result] = classify,
    ) -> T | None:
        """Run one operation and record it; never raises (the outcome is in the history)."""
        op = Op(process, f, key, value, invoke=self.now())
        self.ops.append(op)
        try:
            out = await call()
        except Exception as exc:
            op.result = classify_error(exc)
            op.error = repr(exc)[:200]
            if op.result == "fail":
                op.complete = self.now()
            return None
        except BaseException:
            # Cancelled: the workload stopped waiting, but it may have happened.
            op.result, op.error = "unknown", "cancelled"
            raise
        op.result, op.output, op.complete = "ok", out, self.now()
        return out

    def abandon(self) -> None:
        """Operations still running when the workload stops are of unknown outcome."""
        for op in self.ops:
            if op.result is None:
                op.result = "unknown"

    # -- figures -------------------------------------------------------------------------

    def counts(self, f: str | None = None) -> dict[str, int]:
        out = {"ok": 0, "fail": 0, "unknown": 0}
        for op in self.ops:
            if (f is None or op.f == f) and op.result is not None:
                out[op.result] += 1
        return out

    def window(self) -> tuple[float, float, float]:
        """(first fault, last heal, end of the history)."""
        faults = [t for name, t in self.marks if name == "fault"]
        heals = [t for name, t in self.marks if name == "heal"]
        end = max([op.invoke for op in self.ops] + [self.now()])
        first = min(faults) if faults else end
        last = max(heals) if heals else end
        return first, max(first, last), end

    def intervals(self) -> list[tuple[float, float]]:
        """The fault intervals: each ``fault`` mark to the next ``heal`` (or the end)."""
        out: list[tuple[float, float]] = []
        start: float | None = None
        for name, t in self.marks:
            if name == "fault" and start is None:
                start = t
            elif name == "heal" and start is not None:
                out.append((start, t))
                start = None
        if start is not None:
            out.append((start, math.inf))
        return out

    def phase(self, t: float) -> str:
        """before the first fault, during one, or after (a fault healed)."""
        spans = self.intervals()
        if not spans or t < spans[0][0]:
            return "before"
        return "during" if any(a <= t < b for a, b in spans) else "after"

    def availability(self, f: str | None = None) -> dict[str, float | None]:
        """Share of the operations invoked in each phase that completed ok."""
        buckets: dict[str, list[Op]] = {"before": [], "during": [], "after": []}
        for op in self.ops:
            if op.result is None or (f is not None and op.f != f):
                continue
            buckets[self.phase(op.invoke)].append(op)
        return {
            name: (round(sum(o.result == "ok" for o in ops) / len(ops), 4) if ops else None)
            for name, ops in buckets.items()
        }

    def rates(self, f: str | None = None) -> dict[str, float | None]:
        """ok operations per second in each window."""
        first, last, end = self.window()
        spans = {"before": (0.0, first), "during": (first, last), "after": (last, end)}
        out: dict[str, float | None] = {}
        for name, (a, b) in spans.items():
            oks = sum(
                1
                for op in self.ops
                if op.result == "ok" and (f is None or op.f == f) and a <= op.complete < b
            )
            out[name] = round(oks / (b - a), 1) if b - a > 0.5 else None
        return out

    def longest_gap(self, f: str, start: float | None = None, stop: float | None = None) -> float:
        """Longest time without an ok completion of ``f`` between ``start`` and ``stop``
        (by default the fault window): the longest unavailability."""
        first, last, end = self.window()
        a = first if start is None else start
        b = (last if last > first else end) if stop is None else stop
        times = sorted(op.complete for op in self.ops if op.f == f and op.result == "ok")
        inside = [t for t in times if a <= t <= b]
        edges = [a, *inside]
        after = [t for t in times if t > b]
        edges.append(after[0] if after else b)
        return round(max(y - x for x, y in itertools.pairwise(edges)), 3)
