"""The fleet in the past, from the audit log: ``confbus status NS --at``, ``confbus why``,
``confbus diff-fleet`` (docs/design.md §8.10).

- ``confbus status NS --at TIME|SEQ``: per node its applied version and sha256 (and since when),
  its target, liveness and wave (and, once a version has overlays, which variant its bytes were);
  the namespace's production, last known good and rollout — as they were once every event up to
  that moment was stored.
- ``confbus why NS NODE [--at …]``: the chain that put the node on its version, newest first,
  each step with its event's sequence: apply ← transaction ← wave (or catch-up, or rollback
  batch) ← rollout (or rollback) ← version ← the alert and verdict of a rollback.
- ``confbus diff-fleet NS --from T1 [--to T2]``: which nodes changed version between two
  moments, and through which rollouts.

A moment is a stream sequence (``1234``), a duration ago (``30s``, ``10m``, ``2h``, ``7d``) or an
ISO-8601 time (UTC unless it has an offset): the forms ``replay --since`` takes, plus a
sequence. What the stream no longer holds is shown as ``unknown since`` the time of its oldest
event. Exit codes: 0 ok; 1 the moment is before what the stream holds; 2 usage; 3 unreachable.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

import msgspec

from confbus.cli.commands.options import JSON, NAMESPACE, Subparsers, add, command
from confbus.cli.exitcodes import OK
from confbus.client import Client, FleetAt, FleetDiff, NodeAt, Why, WhyStep
from confbus.runtime import since
from confbus.schemas.variants import BASE

_json = msgspec.json.Encoder()


def register(sub: Subparsers) -> None:
    w = command(sub, "why")
    add(w, NAMESPACE)
    w.add_argument("node", metavar="NODE")
    add_at(w, "at that moment instead of now")
    add(w, JSON)
    w.set_defaults(func=run_why)

    d = command(sub, "diff-fleet")
    add(d, NAMESPACE)
    d.add_argument("--from", dest="start", type=parse_moment, required=True, metavar="TIME|SEQ")
    d.add_argument("--to", dest="end", type=parse_moment, metavar="TIME|SEQ", help="default: now")
    add(d, JSON)
    d.set_defaults(func=run_diff)


def add_at(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--at",
        type=parse_moment,
        metavar="TIME|SEQ",
        help=f"{what}: a stream sequence, a duration ago (30s, 10m, 2h, 7d) or an ISO-8601 time",
    )


def parse_moment(text: str) -> int | datetime | timedelta:
    try:
        return since.parse_moment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- commands -----------------------------------------------------------------------------------


async def run_status_at(args: argparse.Namespace, client: Client) -> int:
    fleet = await client.status_at(args.namespace, args.at)
    _out(_json.encode(fleet).decode() if args.json else render_fleet(fleet))
    return OK


async def run_why(args: argparse.Namespace, client: Client) -> int:
    answer = await client.why(args.namespace, args.node, args.at)
    _out(_json.encode(answer).decode() if args.json else render_why(answer))
    return OK


async def run_diff(args: argparse.Namespace, client: Client) -> int:
    end = args.end if args.end is not None else timedelta(0)
    result = await client.diff_fleet(args.namespace, args.start, end)
    _out(_json.encode(result).decode() if args.json else render_diff(result))
    return OK


# -- rendering ----------------------------------------------------------------------------------


def _t(at: datetime | None) -> str:
    if at is None:
        return "-"
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _v(version: int | None) -> str:
    return f"v{version}" if version is not None else "-"


def _moment(seq: int, at: datetime | None) -> str:
    return f"{_t(at)} (seq {seq})"


def render_fleet(f: FleetAt) -> str:
    source = (
        f"checkpoint seq {f.checkpoint_seq} + {f.events_read} event(s)"
        if f.checkpoint_seq
        else f"{f.events_read} event(s) from the stream's start"
    )
    prod = (
        f"{_v(f.production)} sha256={(f.production_sha256 or '?')[:12]}"
        if f.production is not None
        else ("none" if f.complete else f"unknown since {_t(f.origin_at)}")
    )
    lines = [
        f"{f.namespace} at {_moment(f.seq, f.at)}, from {source}",
        f"production {prod}, last good {_v(f.last_good)}",
    ]
    if not f.complete:
        lines.append(f"the stream holds nothing of {f.namespace} before {_t(f.origin_at)}")
    if f.skipped:
        lines.append(f"{f.skipped} event(s) of a type this build does not know were skipped")
    if f.rollout is not None:
        r = f.rollout
        wave = f", wave {r.wave}/{r.waves}" if r.wave is not None else ""
        lines.append(f"rollout {r.rollout_id}: {_v(r.version)} {r.state}{wave}")
    if not f.nodes:
        lines.append("no node of this namespace is named by any event up to then")
        return "\n".join(lines)
    # A VARIANT column once some node ran a version with overlays (docs/design.md §2.6).
    width = max((len(n.variant) for n in f.nodes if n.variant), default=0)
    variants = any(n.variant not in (None, BASE) for n in f.nodes)
    variant = f"{'VARIANT':<{max(width, 7)}} " if variants else ""
    lines.append(
        f"{'NODE':<20} {'LIVENESS':<8} {'APPLIED':>8} {'SHA256':<12} {variant}{'SINCE':<24} "
        f"{'TARGET':>7} {'WAVE':>4} STATUS"
    )
    lines.extend(_node_line(n, max(width, 7) if variants else 0) for n in f.nodes)
    return "\n".join(lines)


def _node_line(n: NodeAt, variant_width: int = 0) -> str:
    if n.applied == "known":
        applied, sha = _v(n.version), (n.sha256 or "")[:12]
        since = f"{_t(n.applied_at)} #{n.applied_seq}"
    elif n.applied == "none":
        applied, sha, since = "none", "-", "-"
    else:
        applied, sha, since = "unknown", "-", f"since {_t(n.unknown_since)}"
    status = []
    if n.failing:
        status.append(f"failing: {n.failing}")
    if n.drift:
        status.append("drift")
    if n.target is not None and (n.version is None or n.target > n.version):
        status.append("behind")
    wave = str(n.wave) if n.wave is not None else "-"
    shown = n.variant or ("?" if n.applied == "known" else "-")
    variant = f"{shown:<{variant_width}} " if variant_width else ""
    return (
        f"{n.node:<20} {n.liveness:<8} {applied:>8} {sha:<12} {variant}{since:<24} "
        f"{_v(n.target):>7} {wave:>4} {', '.join(status) or 'ok'}"
    )


def _step(s: WhyStep) -> str:
    seq = f"#{s.seq}" if s.seq is not None else "#?"
    return f"  {seq:>8}  {s.kind:<11} {s.summary}"


def render_why(w: Why) -> str:
    variant = f", on variant {w.variant}" if w.variant else ""
    lines = [f"why {w.node} in {w.namespace}, at {_moment(w.seq, w.at)}{variant}:"]
    lines.extend(_step(s) for s in w.steps)
    if w.notes:
        lines.append("  and:")
        lines.extend(_step(s) for s in w.notes)
    return "\n".join(lines)


def render_diff(d: FleetDiff) -> str:
    lines = [
        f"{d.namespace} from {_moment(d.from_seq, d.from_at)} to {_moment(d.to_seq, d.to_at)}: "
        f"{len(d.changed)} node(s) changed, {d.unchanged} unchanged"
    ]
    for c in d.changed:
        more = f" ({c.applies} applies)" if c.applies > 1 else ""
        at = f"#{c.seq}" if c.seq is not None else ""
        lines.append(
            f"  {c.node:<20} {_v(c.from_version):>6} → {_v(c.to_version):<6}{more} "
            f"{at:>8}  via {c.via or '?'}"
        )
    for r in d.rollouts:
        lines.append(f"  rollout {r.rollout_id}: {_v(r.version)} {r.state} ({r.strategy})")
    for summary in d.rollbacks:
        lines.append(f"  rollback {summary}")
    if not d.complete:
        lines.append("  (the stream does not hold the namespace's whole history before then)")
    return "\n".join(lines)


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
