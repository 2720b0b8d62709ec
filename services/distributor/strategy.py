"""Rollout strategies and label selectors: parsed in one place, with errors that say what is
wrong and what would be right.

Grammar (the policy's ``strategy``, or a version's override from ``confbus publish --strategy``)::

    all-at-once            one wave: every target in one atomic switch
    canary:N               N nodes first (N ≥ 1, or N% of the targets), then all the rest
    linear:STEP%           waves of STEP% of the targets each (25% → 4 waves)
    exponential:START%     START% first, then the switched share doubles each wave
                           (10% → 10, 20, 40, 80, 100 % of the targets switched)

A selector narrows the targets by the agents' labels: ``{"dc": "eu1"}`` or ``"dc=eu1,tier=web"``
(every pair must match). Targets are ordered by node id, so the waves of a given fleet are
predictable (and the same nodes are the canaries, unless labels say otherwise).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from confbus.runtime.errors import InvalidInput
from confbus.schemas import selectors
from confbus.schemas.selectors import matches as matches  # one matching rule for everyone

_PERCENT_RE = re.compile(r"^(\d+(?:\.\d+)?)%$")
_COUNT_RE = re.compile(r"^\d+$")
GRAMMAR = "all-at-once, canary:N (or canary:N%), linear:STEP% or exponential:START%"

Kind = Literal["all-at-once", "canary", "linear", "exponential"]


class InvalidStrategy(InvalidInput):
    def __init__(self, text: str, why: str) -> None:
        self.text = text
        super().__init__(f"invalid rollout strategy {text!r}: {why}; expected {GRAMMAR}")


class InvalidSelector(InvalidInput):
    def __init__(self, text: object, why: str) -> None:
        self.text = text
        super().__init__(str(selectors.SelectorError(text, why)))


class NoTargets(InvalidInput):
    """The target set is empty: nothing to switch, so the rollout is refused."""


@dataclass(frozen=True)
class Strategy:
    kind: Kind
    count: int | None = None  # canary:N
    percent: float | None = None  # canary:N%, linear:STEP%, exponential:START%

    def __str__(self) -> str:
        if self.kind == "all-at-once":
            return "all-at-once"
        if self.count is not None:
            return f"{self.kind}:{self.count}"
        assert self.percent is not None
        return f"{self.kind}:{_fmt(self.percent)}%"

    def waves(self, targets: Sequence[str]) -> list[list[str]]:
        """Split the targets into waves (each non-empty, together exactly the targets)."""
        nodes = sorted(set(targets))
        n = len(nodes)
        if n == 0:
            raise NoTargets("no target node: nothing to roll out to")
        if self.kind == "all-at-once":
            return [nodes]
        cumulative: list[int] = []
        if self.kind == "canary":
            first = self.count if self.count is not None else _share(self.percent, n)
            cumulative = [min(n, max(1, first)), n]
        elif self.kind == "linear":
            assert self.percent is not None
            steps = math.ceil(100.0 / self.percent - 1e-9)
            cumulative = [_share(min(100.0, self.percent * (i + 1)), n) for i in range(steps)]
        else:
            assert self.percent is not None
            share = self.percent
            while True:
                cumulative.append(_share(min(100.0, share), n))
                if share >= 100.0:
                    break
                share *= 2
        out: list[list[str]] = []
        done = 0
        for upto in cumulative:
            upto = max(upto, done + 1) if done < n else n  # each wave moves at least one node
            if upto > done:
                out.append(nodes[done:upto])
                done = upto
        if done < n:
            out.append(nodes[done:])
        return out


def _share(percent: float | None, n: int) -> int:
    assert percent is not None
    return min(n, max(1, math.ceil(n * percent / 100.0 - 1e-9)))


def _fmt(p: float) -> str:
    return str(int(p)) if p == int(p) else str(p)


def parse_strategy(text: str | None) -> Strategy:
    if text is None or not text.strip():
        return Strategy("all-at-once")
    raw = text.strip().lower()
    if raw in ("all-at-once", "all", "allatonce"):
        return Strategy("all-at-once")
    kind, sep, arg = raw.partition(":")
    if kind not in ("canary", "linear", "exponential"):
        raise InvalidStrategy(text, f"unknown strategy {kind!r}")
    if not sep or not arg:
        raise InvalidStrategy(text, f"{kind} needs an argument")
    if kind == "canary" and _COUNT_RE.fullmatch(arg):
        count = int(arg)
        if count < 1:
            raise InvalidStrategy(text, "a canary needs at least one node")
        return Strategy("canary", count=count)
    m = _PERCENT_RE.fullmatch(arg)
    if m is None:
        what = "a node count or a percentage" if kind == "canary" else "a percentage like 25%"
        raise InvalidStrategy(text, f"{kind} takes {what}, not {arg!r}")
    percent = float(m.group(1))
    if not 0 < percent <= 100:
        raise InvalidStrategy(text, f"the percentage must be above 0 and at most 100, not {arg}")
    return Strategy(kind, percent=percent)  # type: ignore[arg-type]


def parse_selector(value: Mapping[str, str] | str | None) -> dict[str, str]:
    """A selector as a dict; ``None`` or empty selects every node (``schemas.selectors``)."""
    try:
        return selectors.parse_selector(value)
    except selectors.SelectorError as exc:
        raise InvalidSelector(exc.text, exc.why) from None


def excluded_budget(max_excluded: float, targets: int) -> int:
    """How many live targets may miss their vote (``Policy.max_excluded``): below 1 a share of
    ``targets``, rounded down (10 % of 4 nodes is 0: a small fleet stays strict); from 1 up a
    count of nodes."""
    if max_excluded >= 1:
        return int(max_excluded)
    return math.floor(max_excluded * targets + 1e-9)


def describe_budget(max_excluded: float) -> str:
    return f"{int(max_excluded)} node(s)" if max_excluded >= 1 else f"{max_excluded:.0%}"
