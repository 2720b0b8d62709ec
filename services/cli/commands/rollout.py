"""Rollouts and the fleet: ``confbus rollout``, ``pause``, ``resume``, ``abort``, ``status``,
``forget``.

- ``confbus rollout NS [--json]``: the namespace's current or last rollout — its waves (nodes,
  state, transaction, attempts, when committed, the bake's verdict) and, per node, the outcome,
  attempts and timing (the delivery report).
- ``confbus pause NS`` / ``confbus resume NS``: hold a running rollout at its next wave
  boundary / let it go on. ``confbus abort NS``: end it as failed (waves switched stay switched;
  ``confbus rollback`` restores them).
- ``confbus status NS [--json]``: the production version and, per node, its liveness, applied
  version, the sha256 of its live file, its target version, its last heartbeat and its status
  (``ok``, ``catching-up``, ``drift``, ``failing: <reason>``…).
- ``confbus forget NODE``: forget a node that is gone for good (not while it is live).

Exit codes: 0 ok; 1 refused (no rollout in a state that allows it); 3 unreachable.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

import msgspec

from confbus.cli.commands import timetravel
from confbus.cli.commands.args import acting_as
from confbus.cli.commands.options import ACTOR, JSON, NAMESPACE, REASON, Subparsers, add, command
from confbus.cli.exitcodes import FAILED, OK, CliError
from confbus.client import Client, check_namespace
from confbus.schemas.api import dist as dist_api
from confbus.schemas.api.dist import RolloutInfo, StatusReply, WaveInfo
from confbus.schemas.variants import BASE

_json = msgspec.json.Encoder()


def register(sub: Subparsers) -> None:
    p = command(sub, "rollout")
    add(p, NAMESPACE, JSON.but(help="print the rollout record as JSON"))
    p.set_defaults(func=run_rollout)

    for op in (dist_api.PAUSE, dist_api.RESUME, dist_api.ABORT):
        c = command(sub, op.name)
        add(c, NAMESPACE, REASON, ACTOR, JSON)
        c.set_defaults(func=run_control, op=op.name)

    s = command(sub, "status")
    add(s, NAMESPACE, JSON)
    timetravel.add_at(s, "the fleet as it was then, from the audit log")
    s.set_defaults(func=run_status)

    f = command(sub, "forget")
    f.add_argument("node", metavar="NODE")
    add(f, REASON, ACTOR)
    f.set_defaults(func=run_forget)


async def run_rollout(args: argparse.Namespace, client: Client) -> int:
    check_namespace(args.namespace)
    info = await client.rollout_info(args.namespace)
    if args.json:
        _out(_json.encode(info).decode())
        return OK if info is not None else FAILED
    if info is None:
        raise CliError(f"{args.namespace} has had no rollout yet")
    _out(render_rollout(info))
    return OK


async def run_control(args: argparse.Namespace, client: Client) -> int:
    info = await client.rollout_control(
        args.op, args.namespace, reason=args.reason, actor=acting_as(args, args.identity)
    )
    if args.json:
        _out(_json.encode(info).decode())
    else:
        _out(f"{info.namespace} v{info.version} rollout {info.rollout_id}: {info.state}")
    return OK


async def run_status(args: argparse.Namespace, client: Client) -> int:
    if args.at is not None:
        return await timetravel.run_status_at(args, client)
    reply = await client.fleet_status(args.namespace)
    if (
        not reply.nodes
        and reply.rollout is None
        and not await client.history(args.namespace, limit=1)
    ):
        # Nothing was ever published to it and no node follows it: most often a typo, which
        # must not read as a healthy, empty namespace to a script checking the exit code.
        raise CliError(
            f"no namespace {args.namespace}: nothing was published to it and no node follows "
            "it (a typo? confbus publish creates a namespace)",
            FAILED,
        )
    if args.json:
        _out(_json.encode(reply).decode())
        return OK
    # Which variant each node runs (docs/design.md §2.6): a store that is down leaves the
    # column unknown, not the fleet unshown.
    _out(render_status(reply, await client.fleet_variants(reply, best_effort=True)))
    return OK


async def run_forget(args: argparse.Namespace, client: Client) -> int:
    reply = await client.forget_node(
        args.node, actor=acting_as(args, args.identity), reason=args.reason
    )
    followed = f" (it followed {', '.join(reply.namespaces)})" if reply.namespaces else ""
    _out(f"forgot {reply.node}{followed}")
    return OK


# -- rendering --------------------------------------------------------------------------------


def _when(t: datetime | None) -> str:
    return t.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3] if t else "-"


def _ago(t: datetime | None) -> str:
    if t is None:
        return "never"
    s = (datetime.now(UTC) - t).total_seconds()
    return f"{s:.1f}s ago" if s < 120 else f"{s / 60:.0f}m ago"


def _v(version: int | None) -> str:
    return f"v{version}" if version is not None else "-"


def render_rollout(info: RolloutInfo, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    lines = [
        f"rollout {info.rollout_id}: {info.namespace} {_v(info.version)} "
        f"({info.strategy or info.requested_strategy or 'policy strategy'}, bake "
        f"{info.bake_s:g}s) — {info.state}",
        f"  started {_when(info.started_at)}"
        + (f", ended {_when(info.finished_at)}" if info.finished_at else "")
        + (f", previous production {_v(info.previous_version)}" if info.planned else ""),
    ]
    if info.reason:
        lines.append(f"  reason: {info.reason}")
    if info.next is not None:
        lines.append(f"  waiting: v{info.next.version} ({info.next.mode})")
    if info.last_good:
        lines.append("  marked last known good (the final bake passed with data)")
    if info.state == "paused":
        lines.append(f"  paused: confbus resume {info.namespace} to go on")
    if info.waves:
        lines.append("  waves:")
        for w in info.waves:
            current = w.index == info.current_wave and info.active
            mark = (" ", "⏸" if info.state == "paused" else "▶")[current]
            extra = []
            if w.txid:
                extra.append(f"txn {w.txid}")
            if w.attempts > 1:
                extra.append(f"{w.attempts} attempts")
            if w.committed_at:
                extra.append(f"committed {_when(w.committed_at)}")
            if w.switch_s is not None:
                extra.append(f"switch {w.switch_s * 1000:.0f} ms")
            if w.verdict:
                extra.append(f"verdict {w.verdict}")
            if w.excluded:
                extra.append(f"excluded {','.join(w.excluded)}")
            lines.append(
                f"  {mark} {w.index}: {_wave_state(info, w, now):<9} {len(w.nodes)} node(s) "
                f"[{','.join(w.nodes)}]" + (f"  {'; '.join(extra)}" if extra else "")
            )
    if info.report:
        lines.append("  nodes:")
        for o in info.report:
            facts = [f"{o.node:<20} {o.outcome:<9} wave {o.wave if o.wave is not None else '-'}"]
            if o.outcome != "pending":  # not tried yet: no attempts, no time
                facts.append(f"attempts {o.attempts}")
            if o.seconds is not None:
                facts.append(f"at +{o.seconds:.2f}s")
            if o.reason:
                facts.append(o.reason)
            lines.append("    " + "  ".join(facts))
    return "\n".join(lines)


def _wave_state(info: RolloutInfo, w: WaveInfo, now: datetime) -> str:
    """A wave's state, and for a bake how far it is: a bake that has run its time waits for
    the verdict (or, paused, for a resume) — it is no longer baking."""
    if w.state != "baking" or w.committed_at is None:
        return w.state
    elapsed = max(0.0, (now - w.committed_at).total_seconds())
    if elapsed < info.bake_s:
        return f"baking {elapsed:.0f}s of {info.bake_s:g}s"
    return "baked, paused" if info.state == "paused" else "baked, awaiting the verdict"


def render_status(reply: StatusReply, variants: dict[str, str | None] | None = None) -> str:
    """The fleet table; a VARIANT column once some node runs a variant other than the base."""
    prod = (
        f"{_v(reply.production_version)} sha256={reply.production_sha256[:12]}"
        if reply.production_sha256
        else "none"
    )
    lines = [f"{reply.namespace}: production {prod}"]
    if reply.rollout is not None:
        r = reply.rollout
        lines.append(
            f"rollout {r.rollout_id}: {_v(r.version)} {r.state}"
            + (f", wave {r.current_wave + 1}/{len(r.waves)}" if r.active and r.waves else "")
        )
    if not reply.nodes:
        lines.append("no node follows this namespace")
        return "\n".join(lines)
    named = variants or {}
    width = max((len(v) for v in named.values() if v), default=0)
    width = max(width, 7) if any(v not in (None, BASE) for v in named.values()) else 0
    variant = f"{'VARIANT':<{width}} " if width else ""
    lines.append(
        f"{'NODE':<20} {'LIVENESS':<8} {'APPLIED':>7} {'TARGET':>7} {'SHA256':<12} "
        f"{variant}{'HEARTBEAT':<11} STATUS"
    )
    for n in reply.nodes:
        variant = f"{named.get(n.node) or '?':<{width}} " if width else ""
        status = n.status
        if n.attempts:
            status += f" (attempts {n.attempts})"
        if n.liveness_reason:
            status += f"; {n.liveness} — {n.liveness_reason}"
        if n.target_reason and n.target_reason != f"production {_v(n.target_version)}":
            status += f"; target: {n.target_reason}"
        lines.append(
            f"{n.node:<20} {n.liveness:<8} {_v(n.applied_version):>7} "
            f"{_v(n.target_version):>7} {(n.sha256 or '-')[:12]:<12} "
            f"{variant}{_ago(n.last_heartbeat):<11} {status}"
        )
        if n.duplicate:
            lines.append(f"  ! {n.duplicate}")
    return "\n".join(lines)


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
