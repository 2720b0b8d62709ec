"""Where a change's time goes between its publish and its last apply, seen from the bus.

``PathTrace`` listens (core subscriptions: it sees every message the services exchange, it
does not take part) to what marks each step of a change's way through the services, and keeps
when it first saw each step of each ``(namespace, version)``:

- the events on ``cfg.event.>`` (``version.created``, ``txn.committed``, ``version.promoted``,
  ``rollout.completed``…; ``node.applied`` as its first and last);
- each write of the namespace's rollout record (``$KV.CFG_STATE.rollout.<ns>``), named by the
  record's state and its current wave's (``rollout running w0:switching``);
- the switch request to the coordinator (``cfg.api.txn.switch`` and the forwarded
  ``switch_<replica>``);
- the transaction's prepare and decision (``cfg.txn.<ns>.<txid>.prepare|decision``).

``steps(started)`` gives, for each step, the median milliseconds after the change's publish
over every change traced, in the order they happen: the throughput benchmark's profile of
the publish → applied path.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict

import msgspec
from nats.aio.msg import Msg

from confbus.runtime.bus import Bus
from confbus.schemas import subjects
from confbus.schemas.api import txn as txn_api
from confbus.schemas.api.dist import decode_rollout_info
from confbus.schemas.events import NodeApplied, readable_event
from confbus.schemas.txn import decode_txn

Key = tuple[str, int]  # (namespace, version)

_SWITCH = msgspec.json.Decoder(txn_api.SwitchRequest)
_DECODE = (msgspec.ValidationError, msgspec.DecodeError)


class PathTrace:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.seen: dict[Key, dict[str, float]] = defaultdict(dict)
        self.rollout_writes: dict[Key, int] = defaultdict(int)  # writes of the rollout record
        self.on = False  # only while a measured path runs

    async def start(self) -> PathTrace:
        nc = self.bus.nc
        await nc.subscribe(subjects.EVENTS_ALL, cb=self._on_event)
        await nc.subscribe("$KV.CFG_STATE.rollout.*", cb=self._on_rollout)
        await nc.subscribe(subjects.api_all(txn_api.SERVICE), cb=self._on_api)
        await nc.subscribe(subjects.TXN_PREPARES, cb=self._on_txn)
        await nc.subscribe(subjects.TXN_DECISIONS, cb=self._on_txn)
        await nc.flush()
        return self

    def _mark(self, key: Key, step: str, now: float, *, last: bool = False) -> None:
        if self.on and (last or step not in self.seen[key]):
            self.seen[key][step] = now

    async def _on_event(self, msg: Msg) -> None:
        now = time.perf_counter()
        if (ev := readable_event(msg.data)) is None:
            return
        version = getattr(ev, "version", None)
        if not isinstance(version, int):
            return
        key = (ev.namespace, version)
        if isinstance(ev, NodeApplied):
            self._mark(key, "node.applied (first)", now)
            self._mark(key, "node.applied (last)", now, last=True)
        else:
            self._mark(key, str(type(ev).__struct_config__.tag), now)

    async def _on_rollout(self, msg: Msg) -> None:
        now = time.perf_counter()
        if not msg.data:
            return
        with contextlib.suppress(*_DECODE):
            rec = decode_rollout_info(msg.data)
            wave = rec.waves[rec.current_wave].state if rec.current_wave < len(rec.waves) else "-"
            step = f"rollout {rec.state} w{rec.current_wave}:{wave}"
            self._mark((rec.namespace, rec.version), step, now)
            if self.on:
                self.rollout_writes[(rec.namespace, rec.version)] += 1

    async def _on_api(self, msg: Msg) -> None:
        now = time.perf_counter()
        if not msg.subject.split(".")[-1].startswith("switch"):
            return
        with contextlib.suppress(*_DECODE):
            req = _SWITCH.decode(msg.data)
            self._mark((req.namespace, req.version), "switch request", now)

    async def _on_txn(self, msg: Msg) -> None:
        now = time.perf_counter()
        with contextlib.suppress(*_DECODE):
            rec = decode_txn(msg.data)
            self._mark((rec.namespace, rec.version), f"txn {msg.subject.rsplit('.', 1)[-1]}", now)

    def writes_per_change(self, started: dict[Key, float]) -> float | None:
        """Median writes of the rollout record per traced change."""
        counts = [self.rollout_writes[k] for k in started if k in self.rollout_writes]
        return statistics.median(counts) if counts else None

    def steps(self, started: dict[Key, float], *, quantile: float = 0.5) -> dict[str, float]:
        """Milliseconds from each traced change's publish to each of its steps — the median, or
        another ``quantile`` (0.9: the slow tail) — in the order of those figures."""
        after: dict[str, list[float]] = defaultdict(list)
        for key, t0 in started.items():
            for step, at in self.seen.get(key, {}).items():
                after[step].append((at - t0) * 1000)
        figures = {step: _quantile(ms, quantile) for step, ms in after.items()}
        return dict(sorted(figures.items(), key=lambda kv: kv[1]))


def _quantile(values: list[float], q: float) -> float:
    if q == 0.5 or len(values) < 2:
        return statistics.median(values)
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]
