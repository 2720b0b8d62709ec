"""``confbus publish … --wait``: publish, then follow the rollout to its end.

Exit codes (what a CI step checks): 0 once the version is production on every participant;
1 when it was rejected, or its rollout failed, was aborted, rolled back or superseded — with
each node's reason on stderr; 3 when the time ran out (publishing again with the same ``--id``
is harmless: the change id makes it the same version, and the wait picks the rollout up).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from typing import Any

import anyio
import msgspec

from confbus.cli.exitcodes import FAILED, OK, UNREACHABLE
from confbus.client import Client, RolloutWaitTimeout, WaitTimedOut
from confbus.runtime.errors import ConfbusError
from confbus.schemas.api.dist import RolloutInfo
from confbus.schemas.events import (
    AnyEvent,
    RolloutBaked,
    RolloutPaused,
    RolloutResumed,
    RolloutStarted,
    RolloutWave,
)
from confbus.schemas.versions import VersionInfo

_json = msgspec.json.Encoder()
# Rollout events are replayed from a little before the version was created: its rollout may
# have started (or ended) before we began to listen — or long ago, for a retried CI job.
_REPLAY_MARGIN = timedelta(seconds=5)


def progress_line(ev: AnyEvent) -> str | None:
    """One line per rollout step, for a human watching a terminal."""
    if isinstance(ev, RolloutStarted):
        nodes = sum(len(w) for w in ev.waves)
        return (
            f"rollout {ev.rollout_id}: v{ev.version} to {nodes} node(s) in {len(ev.waves)} "
            f"wave(s), {ev.strategy}, bake {ev.bake_s:g}s"
        )
    if isinstance(ev, RolloutWave):
        applied = [n.node for n in ev.nodes if n.outcome == "applied"]
        others = [
            f"{n.node} {n.outcome}" + (f": {n.reason}" if n.reason else "")
            for n in ev.nodes
            if n.outcome != "applied"
        ]
        tail = f"; {', '.join(others)}" if others else ""
        why = f" — {ev.reason}" if ev.reason and ev.outcome == "retrying" else ""
        return (
            f"  wave {ev.wave + 1}: {ev.outcome} (txn {ev.txid}), {len(applied)} applied{tail}{why}"
        )
    if isinstance(ev, RolloutBaked):
        return f"  wave {ev.wave + 1}: bake {ev.verdict}"
    if isinstance(ev, RolloutPaused):
        return "  paused (confbus resume to go on)"
    if isinstance(ev, RolloutResumed):
        return "  resumed"
    return None


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


async def wait_for_production(
    args: argparse.Namespace, client: Client, info: VersionInfo, deadline: float
) -> int:
    """Follow ``info``'s rollout until it ends; print the outcome; return the exit code."""
    show = args.progress or sys.stderr.isatty()
    if info.status == "draft":
        _stderr(
            f"confbus: {info.namespace} v{info.version} is a draft, waiting for approval "
            f"({approval_hint(info)})"
        )
    elif show:
        _stderr(f"confbus: {info.namespace} v{info.version} stored ({info.status}); rolling out")

    def progress(ev: AnyEvent) -> None:
        line = progress_line(ev)
        if show and line is not None:
            _stderr(line)

    try:
        rollout = await client.wait_rollout(
            info.namespace,
            info.version,
            timeout=max(0.1, deadline - time.monotonic()),
            progress=progress,
            since=info.created_at - _REPLAY_MARGIN,
        )
    except RolloutWaitTimeout as exc:
        raise await _still_a_draft(client, info) or exc from None
    caught_up = await caught_up_since(client, info, rollout)
    code = report(args, info, rollout, caught_up)
    away = [n for n in rollout.away if n not in caught_up]
    if code == OK and getattr(args, "require_all", False) and away:
        return await wait_for_away(client, info, away, deadline)
    return code


async def caught_up_since(client: Client, info: VersionInfo, rollout: RolloutInfo) -> list[str]:
    """The nodes the rollout found away that hold the version now. A retried CI job picks up
    a rollout that ended long ago: telling it a node is away that has come back and caught up
    since would be false."""
    if rollout.state != "completed" or not rollout.away:
        return []
    try:
        fleet = await client.fleet_status(info.namespace)
    except ConfbusError:
        return []  # the rollout's own account stands
    holding = {n.node for n in fleet.nodes if (n.applied_version or 0) >= info.version}
    return [n for n in rollout.away if n in holding]


async def wait_for_away(client: Client, info: VersionInfo, away: list[str], deadline: float) -> int:
    """``--require-all``: the nodes that were away must be back and on the version too."""
    _stderr(f"confbus: --require-all: waiting for {', '.join(away)} to come back and catch up")
    pending = set(away)
    while pending:
        reply = await client.fleet_status(info.namespace)
        for n in reply.nodes:
            if n.node in pending and (n.applied_version or 0) >= info.version:
                pending.discard(n.node)
                _stderr(f"  {n.node}: caught up")
        if not pending:
            break
        if time.monotonic() >= deadline:
            _stderr(
                f"confbus: {', '.join(sorted(pending))} not back on v{info.version} within "
                "--timeout (the version is production on the others)"
            )
            return UNREACHABLE
        await anyio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    return OK


def approval_hint(info: VersionInfo) -> str:
    """How to approve a draft: the command, with who may (anyone but its author)."""
    by = f"someone other than {info.author}" if info.author else "someone other than its author"
    return f"confbus approve {info.namespace} {info.version} --as NAME, by {by}"


async def _still_a_draft(client: Client, info: VersionInfo) -> WaitTimedOut | None:
    """What a wait that ran out of time was really waiting for, when no rollout ever began:
    the version is still a draft."""
    try:
        now = (await client.get(info.namespace, str(info.version), content=False)).info
    except ConfbusError:
        return None
    if now.status != "draft":
        return None
    return WaitTimedOut(
        f"{now.namespace} v{now.version} is still a draft, waiting for approval; no rollout "
        f"starts before it is approved ({approval_hint(now)})"
    )


def report(
    args: argparse.Namespace, info: VersionInfo, rollout: RolloutInfo, caught_up: list[str]
) -> int:
    ns, v = info.namespace, info.version
    applied = [n for n in rollout.report if n.outcome == "applied"]
    away = [n for n in rollout.away if n not in caught_up]
    not_applied = [n for n in rollout.report if n.outcome not in ("applied", "away")]
    ok = rollout.state == "completed"
    empty = ok and not rollout.targets and not rollout.away
    if empty and not getattr(args, "allow_empty", False):
        _stderr(
            f"confbus: no node follows {ns}: v{v} is production on no node, nothing was "
            f"deployed (a typo in the namespace? start an agent with --namespace {ns}; "
            "--allow-empty accepts this)"
        )
        return FAILED
    if args.json:
        out: dict[str, Any] = {
            "namespace": ns,
            "version": v,
            "sha256": info.sha256,
            "rollout": msgspec.to_builtins(rollout),
            "caught_up": caught_up,
            "ok": ok,
        }
        sys.stdout.write(_json.encode(out).decode() + "\n")
    elif ok:
        sys.stdout.write(
            f"{ns} v{v} sha256={info.sha256} production on {len(applied) + len(caught_up)} "
            "node(s)"
            + (f", {len(away)} away" if away else "")
            + f" (rollout {rollout.rollout_id})\n"
        )
    if ok and caught_up:
        _stderr(
            f"confbus: {', '.join(caught_up)}: away during the rollout, caught up on v{v} since"
        )
    if ok and away:
        _stderr(
            f"confbus: {len(away)} node(s) away: {', '.join(away)} (stopped, "
            "or no heartbeat); they catch up when they are back"
            + ("" if getattr(args, "require_all", False) else " (--require-all waits for them)")
        )
    if ok:
        for n in not_applied:  # left out within the policy's max_excluded: say so
            _stderr(f"confbus: warning: {n.node} {n.outcome}: {n.reason or 'no reason given'}")
        for w in rollout.waves:
            if w.unanswered:  # a bus outage got in the way: done, but say so
                _stderr(
                    f"confbus: note: wave {w.index + 1} took {w.attempts} attempts: no node "
                    f"ready to vote answered {w.unanswered} of them (its nodes stopped, or the "
                    "bus down?)"
                )
        return OK
    why = f": {rollout.reason}" if rollout.reason else ""
    if rollout.state == "superseded" and rollout.superseded_by is not None:
        why = f": v{rollout.superseded_by} took over{why}"
    _stderr(f"confbus: {ns} v{v} rollout {rollout.rollout_id} {rollout.state}{why}")
    for n in not_applied:
        _stderr(f"  {n.node}: {n.outcome}" + (f": {n.reason}" if n.reason else ""))
    return FAILED
