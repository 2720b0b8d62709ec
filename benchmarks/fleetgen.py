"""A seeded generator of a namespace's audit log, shaped like what the services write: versions,
rollouts in waves (each wave one committed transaction and its applies), aborted switches,
catch-ups, liveness changes and rollbacks in batches — with the truth it implies (each node's
applied version and sha256) kept beside it.

The time-travel benchmark builds its million events with it; the tests compare the fold
(``confbus.schemas.fold``) with the truth it keeps.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from confbus.schemas.events import (
    Event,
    NodeApplied,
    NodeCatchUp,
    NodeStatusChanged,
    RollbackBatch,
    RollbackCompleted,
    RollbackStarted,
    RolloutBaked,
    RolloutCompleted,
    RolloutFailed,
    RolloutStarted,
    RolloutWave,
    TxnAborted,
    TxnCommitted,
    VersionCreated,
    VersionLastGood,
    VersionPromoted,
    VoteRecord,
)


def sha_of(version: int) -> str:
    return hashlib.sha256(f"content of v{version}".encode()).hexdigest()


@dataclass
class FleetGen:
    namespace: str
    nodes: list[str]
    seed: int = 1
    waves: int = 4
    rng: random.Random = field(init=False)
    version: int = 0
    production: int | None = None
    last_good: int | None = None
    txns: int = 0
    rollouts: int = 0
    rollbacks: int = 0
    applied: dict[str, tuple[int, str]] = field(default_factory=dict)  # the truth
    down: set[str] = field(default_factory=set)
    sha: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def events(self) -> Iterator[Event]:
        """An endless log; take as many as you need (the truth follows what was yielded)."""
        while True:
            roll = self.rng.random()
            if roll < 0.65 or self.production is None:
                yield from self._rollout(fail=False)
            elif roll < 0.75:
                yield from self._rollout(fail=True)
            elif roll < 0.85 and self.last_good is not None:
                yield from self._rollback()
            else:
                yield from self._liveness()

    # -- pieces --------------------------------------------------------------------------------

    def _new_version(self, rollback_of: int | None = None) -> VersionCreated:
        self.version += 1
        v = self.version
        self.sha[v] = self.sha[rollback_of] if rollback_of else sha_of(v)
        return VersionCreated(
            namespace=self.namespace, version=v, sha256=self.sha[v], size=100, format="json",
            parent=v - 1 or None, change_id=f"c{v}", status="approved", actor="ci",
            message=f"change {v}", rollback_of=rollback_of,
        )  # fmt: skip

    def _txid(self) -> str:
        self.txns += 1
        return f"tx-{self.txns}"

    def _switch(self, version: int, nodes: list[str], *, commit: bool = True) -> Iterator[Event]:
        """One transaction over ``nodes``; the live ones apply a commit (the rest catch up)."""
        txid = self._txid()
        votes = [VoteRecord(node=n, vote="yes") for n in nodes]
        ns, epoch = self.namespace, 1 + self.txns // 50
        if not commit:
            votes[-1] = VoteRecord(node=nodes[-1], vote="no", reason="validation failed")
            yield TxnAborted(namespace=ns, txid=txid, version=version, epoch=epoch,
                             participants=nodes, votes=votes)  # fmt: skip
            return
        yield TxnCommitted(namespace=ns, txid=txid, version=version, epoch=epoch,
                           participants=nodes, votes=votes)  # fmt: skip
        for n in nodes:
            if n not in self.down:
                yield self._apply(n, version, txid)

    def _apply(self, node: str, version: int, txid: str) -> NodeApplied:
        before = self.applied.get(node)
        self.applied[node] = (version, self.sha[version])
        return NodeApplied(
            namespace=self.namespace, node=node, version=version, sha256=self.sha[version],
            txid=txid, previous=before[0] if before else None, actor=node,
        )  # fmt: skip

    def _plan(self) -> list[list[str]]:
        size = max(1, len(self.nodes) // self.waves)
        return [self.nodes[i : i + size] for i in range(0, len(self.nodes), size)]

    def _rollout(self, *, fail: bool) -> Iterator[Event]:
        ns = self.namespace
        created = self._new_version()
        v = created.version
        yield created
        self.rollouts += 1
        rid = f"r-{self.rollouts}"
        waves = self._plan()
        yield RolloutStarted(namespace=ns, rollout_id=rid, version=v, strategy="linear:25%",
                             waves=waves, actor="distributor")  # fmt: skip
        for i, wave in enumerate(waves):
            commit = not (fail and i == len(waves) - 1)
            yield from self._switch(v, wave, commit=commit)
            txid = f"tx-{self.txns}"
            yield RolloutWave(namespace=ns, rollout_id=rid, version=v, wave=i, txid=txid,
                              outcome="committed" if commit else "aborted")  # fmt: skip
            if not commit:
                yield RolloutFailed(namespace=ns, rollout_id=rid, version=v, wave=i,
                                    reason="a node voted no")  # fmt: skip
                return
            yield RolloutBaked(namespace=ns, rollout_id=rid, version=v, wave=i, verdict="pass")
        yield RolloutCompleted(namespace=ns, rollout_id=rid, version=v, last_good=True)
        yield VersionPromoted(namespace=ns, version=v, previous=self.production)
        self.production = v
        if self.rng.random() < 0.5:
            self.last_good = v
            yield VersionLastGood(namespace=ns, version=v, sha256=self.sha[v])

    def _rollback(self) -> Iterator[Event]:
        assert self.last_good is not None and self.production is not None
        ns = self.namespace
        self.rollbacks += 1
        rbid = f"rb-{self.rollbacks}"
        created = self._new_version(rollback_of=self.last_good)
        batches = self._plan()
        yield RollbackStarted(
            namespace=ns, rollback_id=rbid, from_version=self.production,
            to_version=self.last_good, new_version=created.version,
            alert_id=f"{ns}:{self.production}:error_rate:{self.rollbacks}", batches=batches,
            reason="alert: error_rate > 0.05", actor="rollbacker",
        )  # fmt: skip
        yield created
        for i, batch in enumerate(batches):
            yield from self._switch(created.version, batch)
            yield RollbackBatch(namespace=ns, rollback_id=rbid, batch=i, nodes=batch,
                                healthy_share=1.0)  # fmt: skip
        yield RollbackCompleted(namespace=ns, rollback_id=rbid, new_version=created.version)
        yield VersionPromoted(namespace=ns, version=created.version, previous=self.production)
        self.production = created.version

    def _liveness(self) -> Iterator[Event]:
        ns = self.namespace
        node = self.rng.choice(self.nodes)
        if node in self.down:
            self.down.discard(node)
            yield NodeStatusChanged(namespace=ns, node=node, status="live")
            target = self.production
            if target is not None and self.applied.get(node, (0, ""))[0] < target:
                txid = self._txid()
                yield TxnCommitted(namespace=ns, txid=txid, version=target, epoch=1,
                                   participants=[node])  # fmt: skip
                yield self._apply(node, target, txid)
                yield NodeCatchUp(namespace=ns, node=node, version=target, txid=txid)
        elif len(self.down) < len(self.nodes) // 10 + 1:
            self.down.add(node)
            yield NodeStatusChanged(namespace=ns, node=node, status="gone")
