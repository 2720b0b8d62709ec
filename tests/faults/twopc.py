"""The 2PC fault scenarios on one nats-server: a version-store, coordinators and three agents,
all real processes writing real files.

- ``coordinator_kill``: SIGKILL (a failpoint) the coordinator at each step of the switch; a
  fresh one recovers. Nodes that disagree with the decision, transactions still in doubt after
  the bound (docs/design.md §4.5: "60 s later", shortened with a 1 s vote timeout), flipped
  decisions.
- ``agent_kill``: SIGKILL one agent at each of its steps; restarted, it must catch up. Double
  applies, missing applies (a node off its target after the drain).
- ``zombie``: SIGSTOP the coordinator at a step (a failpoint ``pause``) until a newer one has
  taken the namespace over (epoch bump), then SIGCONT it. Anything written or applied from the
  old epoch after the new one existed.

Every run is checked by ``tests.faults.audit`` against the head's history, the decision
records, the events, and the live files.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Unpack

import anyio

from confbus.procs.proc import Proc, start_together
from confbus.runtime.bus import Bus
from confbus.runtime.errors import ConfbusError
from confbus.schemas.variants import Overlay, VariantSet, encode_variants, render
from tests.faults import ops
from tests.faults.audit import Audit, TxnRecorder, as_notes, audit_2pc, collect, decided_outcome
from tests.faults.history import History
from tests.faults.results import Figures, RunOptions, finish
from tests.faults.shims import BUG_ENV
from tests.faults.stack import FaultStack
from tests.faults.wait import until

NS = "web"
NODES = ("n1", "n2", "n3")
# Every version has three variants, one per node: the fault scenarios check each node's own bytes.
LABELS = {"n1": {"dc": "eu1"}, "n2": {"dc": "eu1", "tier": "canary"}, "n3": {"dc": "us1"}}
OVERLAYS = (
    Overlay(selector={"dc": "eu1"}, content='{"dc": "eu1"}'),
    Overlay(selector={"dc": "us1"}, content='{"dc": "us1", "tag": null}'),
    Overlay(selector={"dc": "eu1", "tier": "canary"}, content='{"canary": true}'),
)
VOTE_TIMEOUT_S = 1.0
# docs/design.md §4.5 asks for no transaction in doubt 60 s after a crash with the default 5 s vote
# timeout; with a 1 s timeout (and 2 s recovery grace, 3 s liveness) the same bound is ~20 s.
IN_DOUBT_BOUND_S = 20.0
DRAIN_S = 20.0
BUG_DRAIN_S = 5.0  # a deliberate-bug run never converges: do not wait long for it

COORDINATOR_STEPS = (
    "coordinator.after_prepare_sent",
    "coordinator.after_votes",
    "coordinator.after_decision_written",
    "coordinator.after_decision_published",
)
AGENT_STEPS = ("agent.before_vote", "agent.after_vote", "agent.before_apply", "agent.after_apply")
ZOMBIE_STEPS = (
    "coordinator.before_prepare_sent",
    "coordinator.after_prepare_sent",
    "coordinator.after_votes",
    "coordinator.after_decision_written",
)


def coordinator_flags() -> list[str]:
    """Short timeouts, so a fault resolves in seconds (flags this build knows)."""
    from confbus.coordinator.service import add_args

    parser = argparse.ArgumentParser()
    add_args(parser)
    known = {a for action in parser._actions for a in action.option_strings}
    flags = ["--vote-timeout", str(VOTE_TIMEOUT_S), "--recovery-interval", "0.5"]
    if "--lease-ttl" in known:
        flags += ["--lease-ttl", "2"]
    return flags


def stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP: state T in /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "T"


async def wait_exit(proc: Proc, timeout: float) -> int:
    return await anyio.to_thread.run_sync(proc.wait_exit, timeout)


@dataclass
class TwoPC:
    stack: FaultStack
    bus: Bus
    rec: TxnRecorder
    history: History = field(default_factory=History)
    contents: dict[int, dict[str, bytes]] = field(default_factory=dict)  # version -> node -> bytes
    resolve_s: list[float] = field(default_factory=list)
    in_doubt_late: int = 0
    runs: int = 0
    serial: int = 0

    @classmethod
    async def open(cls, root: Path, *, agent_bug: str = "") -> TwoPC:
        stack = FaultStack.single(root)
        try:
            stack.start_service("version_store")
            env = {BUG_ENV: agent_bug} if agent_bug else None
            nodes = [stack.agent(n, shim=bool(agent_bug), env=env, labels=LABELS[n]) for n in NODES]
            start_together([node.proc for node in nodes])
            bus = await stack.bus()
            await stack.record_labels(bus, (NS,))
        except BaseException:
            stack.stop()
            raise
        rec = await TxnRecorder(bus, NS).start()
        return cls(stack, bus, rec)

    async def close(self) -> None:
        await self.rec.stop()
        await self.bus.close()
        self.stack.stop()

    async def new_version(self, tag: str) -> int:
        self.serial += 1
        base = f'{{"run": {self.serial}, "tag": "{tag}"}}\n'
        version = VariantSet(format="json", base=base, overlays=list(OVERLAYS))
        content = encode_variants(version)
        change_id = f"c{self.serial}-{tag.replace('.', '-').replace('_', '-')}"
        v = await self.history.run(
            "ci",
            "store",
            NS,
            change_id,
            lambda: ops.store_version(self.bus, NS, content, change_id),
        )
        assert v is not None, f"could not store version for {change_id}"
        self.contents[v] = {n: render(version, LABELS[n]) for n in NODES}
        return v

    def start_coordinator(
        self, name: str, failpoint: str = "", bug: str = "", wait_ready: bool = True
    ) -> Proc:
        env = {}
        if failpoint:
            env["CONFBUS_FAILPOINTS"] = failpoint
        if bug:
            env[BUG_ENV] = bug
        proc = self.stack.service(
            "coordinator", *coordinator_flags(), env=env, name=name, shim=bool(bug)
        )
        return proc.start(wait_ready=wait_ready, timeout=30)

    async def switch(self, version: int, nodes: Sequence[str] = NODES) -> None:
        await self.history.run(
            "client",
            "switch",
            NS,
            version,
            lambda: ops.switch(
                self.bus, NS, version, nodes, vote_timeout_s=VOTE_TIMEOUT_S, request_timeout=60
            ),
        )

    def txid_of(self, version: int) -> str:
        """The transaction the head opened for ``version`` (the newest one)."""
        txids = [h.head.txid for h in self.rec.heads if h.head.version == version and h.head.txid]
        assert txids, f"no transaction on the head for version {version}"
        return str(txids[-1])

    def pending(self, f: str, value: object) -> bool:
        return any(op.f == f and op.value == value and op.result is None for op in self.history.ops)

    # -- settling and draining -----------------------------------------------------------

    async def settled(self) -> bool:
        """Nothing in doubt anywhere: coordinator, head, agents."""
        try:
            if await ops.in_doubt(self.bus, NS):
                return False
        except ConfbusError:
            return False  # no coordinator answering yet
        heads = self.rec.heads
        if heads and heads[-1].head.state == "preparing":
            return False
        for node in self.stack.nodes.values():
            if not node.proc.alive() or node.proc.ready is None:
                continue
            if await ops.agent_in_doubt(node.proc.ready["http_port"], NS) is not None:
                return False
        return True

    async def wait_settled(self, bound: float = IN_DOUBT_BOUND_S) -> float | None:
        """Seconds until nothing is in doubt; None (and counted) past the bound."""
        started = time.monotonic()
        if await until(self.settled, bound):
            took = time.monotonic() - started
            self.resolve_s.append(took)
            return took
        self.in_doubt_late += 1
        return None

    def targets(self) -> dict[str, bytes | None]:
        """Each node's target from the head's decisions so far: the newest committed version
        of a transaction that named it."""
        best: dict[str, int] = {}
        for h in self.rec.heads:
            v = h.head
            if decided_outcome(v) == "commit" and v.version is not None:
                for n in v.participants:
                    best[n] = max(best.get(n, 0), v.version)
        return {n: self.contents[best[n]][n] if n in best else None for n in self.stack.nodes}

    async def drain(self, timeout: float = DRAIN_S) -> bool:
        """Until every node holds its target (False past the deadline: the audit says who)."""

        def converged() -> bool:
            return all(self.stack.nodes[n].read(NS) == b for n, b in self.targets().items())

        return await until(converged, timeout)

    async def audit(self, fig: Figures) -> Audit:
        facts = await collect(self.bus, self.rec)
        a = audit_2pc(facts, self.stack.nodes, self.contents, NS)
        fig.runs = self.runs
        fig.add_history(self.history, "switch")
        fig.flipped = a.flipped
        fig.divergent = len(a.divergent_nodes)
        fig.duplicates = a.double_applies + a.duplicate_records
        fig.safety = {**a.safety(), "in_doubt_past_bound": self.in_doubt_late}
        fig.notes = {**as_notes(a)}
        if self.resolve_s:
            ordered = sorted(self.resolve_s)
            fig.notes["resolve_p50_s"] = round(ordered[len(ordered) // 2], 2)
            fig.notes["resolve_max_s"] = round(ordered[-1], 2)
        if a.divergent_nodes:
            fig.notes["divergent_nodes"] = ",".join(a.divergent_nodes)
        return a


async def _scenario(
    root: Path,
    fig: Figures,
    faults: Callable[[TwoPC], Awaitable[dict[str, float]]],
    *,
    agent_bug: str = "",
) -> Figures:
    """Run ``faults`` on a fresh stack, let every node reach its target, audit; the figures
    ``faults`` returns join the audit's notes."""
    started = time.monotonic()
    t = await TwoPC.open(root, agent_bug=agent_bug)
    try:
        notes = await faults(t)
        await t.drain(BUG_DRAIN_S if fig.bug else DRAIN_S)
        await t.audit(fig)
        fig.notes.update(notes)
    finally:
        await t.close()
    return finish(fig, started)


# -- coordinator killed at each step ------------------------------------------------------


async def coordinator_kill(
    root: Path,
    *,
    steps: Sequence[str] = COORDINATOR_STEPS,
    runs: int = 1,
    **run: Unpack[RunOptions],
) -> Figures:
    fig = Figures(
        scenario="coordinator_kill", title="coordinator SIGKILLed at each 2PC step", **run
    )

    async def faults(t: TwoPC) -> dict[str, float]:
        warm = t.start_coordinator("coord-warm-up")
        await t.switch(await t.new_version("warm-up"))  # availability before any fault
        warm.stop()
        for step in steps:
            for _ in range(runs):
                v = await t.new_version(step)
                armed = t.start_coordinator(f"coord-{t.serial}", f"{step}=kill", bug=fig.bug)
                async with anyio.create_task_group() as tg:
                    t.history.mark("fault")
                    tg.start_soon(t.switch, v)
                    code = await wait_exit(armed, 60)
                    assert code == -9, f"{step}: coordinator exited {code}, not by its failpoint"
                    tg.cancel_scope.cancel()  # its reply will never come
                survivor = t.start_coordinator(f"coord-{t.serial}-recovered")
                await t.wait_settled()
                t.history.mark("heal")
                # The survivor must switch again (availability after the fault).
                await t.switch(await t.new_version(f"{step}-after"))
                survivor.stop()
                t.runs += 1
        return {}

    return await _scenario(root, fig, faults)


# -- an agent killed at each step ---------------------------------------------------------


async def agent_kill(
    root: Path,
    *,
    steps: Sequence[str] = AGENT_STEPS,
    runs: int = 1,
    **run: Unpack[RunOptions],
) -> Figures:
    """``bug``: an agent bug built into every agent (``tests.faults.shims.agent``)."""
    fig = Figures(scenario="agent_kill", title="agent SIGKILLed at each of its steps", **run)
    drain_s = BUG_DRAIN_S if fig.bug else DRAIN_S

    async def faults(t: TwoPC) -> dict[str, float]:
        victim = t.stack.nodes["n3"]
        catch_up: list[float] = []
        t.start_coordinator("coordinator")
        await t.switch(await t.new_version("warm-up"))  # availability before any fault
        for step in steps:
            for _ in range(runs):
                # Armed only once settled: the first decision it sees is the next one's.
                await t.drain(drain_s)
                await t.wait_settled()
                victim.proc.stop()
                victim.proc.env["CONFBUS_FAILPOINTS"] = f"{step}=kill"
                victim.proc.start(timeout=30)
                t.history.mark("fault")
                for _ in range(3):
                    await t.switch(await t.new_version(step))
                    # A switch that aborted for another reason (a vote late on a loaded
                    # machine) never reaches the apply: switch again.
                    if await until(lambda: not victim.proc.alive(), 5):
                        break
                code = await wait_exit(victim.proc, 30)
                assert code == -9, f"{step}: agent exited {code}, not by its failpoint"
                victim.proc.env.pop("CONFBUS_FAILPOINTS", None)
                restarted = time.monotonic()
                victim.proc.start(timeout=30)
                t.history.mark("heal")
                if await t.drain(drain_s) and await t.wait_settled():
                    catch_up.append(time.monotonic() - restarted)
                # With the node back, the next switch must go through (availability after).
                await t.switch(await t.new_version(f"{step}-after"))
                t.runs += 1
        return {"catch_up_max_s": round(max(catch_up), 2)} if catch_up else {}

    return await _scenario(root, fig, faults, agent_bug=fig.bug)


# -- a zombie coordinator ------------------------------------------------------------------


async def zombie(
    root: Path,
    *,
    steps: Sequence[str] = ZOMBIE_STEPS,
    runs: int = 1,
    **run: Unpack[RunOptions],
) -> Figures:
    """A coordinator paused at ``step`` while another takes the namespace over, then resumed.
    ``bug`` is built into both coordinators."""
    fig = Figures(
        scenario="zombie_coordinator",
        title="coordinator paused past its lease, a new one leads, then resumed",
        **run,
    )

    async def faults(t: TwoPC) -> dict[str, float]:
        takeover = [await _zombie_run(t, step, fig.bug) for step in steps for _ in range(runs)]
        return {"takeover_max_s": round(max(takeover, default=0.0), 2)}

    return await _scenario(root, fig, faults)


async def _zombie_run(t: TwoPC, step: str, bug: str) -> float:
    """One zombie: returns how long the successor took to settle its transaction."""
    v = await t.new_version(step)
    zombie = t.start_coordinator(f"zombie-{t.serial}", f"{step}=pause", bug=bug)
    async with anyio.create_task_group() as tg:
        t.history.mark("fault")
        tg.start_soon(t.switch, v)
        await until(lambda: stopped(zombie.pid), 60, what=f"zombie paused at {step}")
        paused = time.monotonic()
        txid = t.txid_of(v)
        successor = t.start_coordinator(f"successor-{t.serial}", bug=bug)
        # Once the zombie's lease (or liveness) has run out, the successor takes the
        # namespace over (a new epoch) and settles the zombie's transaction.
        await until(lambda: ops.decision_exists(t.bus, NS, txid), 60, what="a takeover")
        took = time.monotonic() - paused
        zombie.resume()
        # The zombie's switch answers (or not).
        await until(lambda: not t.pending("switch", v), 30)
        tg.cancel_scope.cancel()
    t.history.mark("heal")
    await t.wait_settled()
    # The successor leads on: availability after the fault.
    await t.switch(await t.new_version(f"{step}-after"))
    zombie.stop()
    successor.stop()
    t.runs += 1
    return took
