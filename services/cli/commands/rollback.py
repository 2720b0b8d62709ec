"""``confbus rollback NS``: roll a namespace back to its last known good (or ``--to VERSION``).

The rollbacker creates a *new* version with the target's bytes (``rollback_of``) and switches
it batch by batch (``--strategy all-at-once`` or ``batches:N``; default the policy's), checking
each batch's health before the next. Without ``--wait`` it returns once the rollback started;
with it, once every batch is restored (exit 0) or the rollback is stuck (exit 1, the reason on
stderr: nothing further is switched and an operator must act). While it waits, each step (the
batches, their switches and health verdicts) is printed on stderr when that is a terminal, or
with ``--progress``. A target the namespace's current policy refuses (its JSON Schema or format
changed since) is refused with the reason unless ``--force``; the force, who used it and what
it overrode are recorded in the audit log.

Exit codes: 0 started (or, with ``--wait``, completed); 1 refused or stuck; 2 usage;
3 unreachable, or ``--wait`` timed out (the rollback goes on).
"""

from __future__ import annotations

import argparse
import sys

import msgspec

from confbus.cli.commands.args import acting_as, positive_int, positive_seconds
from confbus.cli.commands.options import (
    ACTOR,
    JSON,
    NAMESPACE,
    PROGRESS,
    REASON,
    Subparsers,
    add,
    command,
)
from confbus.cli.exitcodes import FAILED, OK, CliError
from confbus.client import Client
from confbus.schemas.api.rollback import RollbackReply
from confbus.schemas.events import (
    AnyEvent,
    HealthVerdictEvent,
    RollbackBatch,
    RollbackStarted,
    TxnAborted,
    TxnCommitted,
)


def register(sub: Subparsers) -> None:
    p = command(sub, "rollback")
    add(p, NAMESPACE)
    p.add_argument(
        "--to",
        type=positive_int,
        metavar="VERSION",
        help="the version whose content to restore (default: the last known good)",
    )
    add(p, REASON.but(help="why, for the audit log and the webhooks"))
    p.add_argument(
        "--strategy",
        metavar="S",
        help="all-at-once or batches:N (default: the namespace policy's rollback strategy)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="roll back even to a version the current policy refuses (recorded in the audit log)",
    )
    p.add_argument("--wait", action="store_true", help="wait until restored (or stuck)")
    add(p, PROGRESS)
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=600.0,
        metavar="S",
        help="with --wait, give up waiting after S seconds (exit 3; default %(default)s)",
    )
    add(p, ACTOR, JSON.but(help="print the outcome as one JSON object"))
    p.set_defaults(func=run)


async def run(args: argparse.Namespace, client: Client) -> int:
    show = args.wait and (args.progress or sys.stderr.isatty())
    reply = await client.rollback(
        args.namespace,
        to=args.to,
        reason=args.reason,
        strategy=args.strategy,
        actor=acting_as(args, args.identity),
        wait=args.wait,
        timeout=args.timeout,
        progress=Progress().show if show else None,
        force=args.force,
    )
    if args.json:
        sys.stdout.write(msgspec.json.encode(reply).decode() + "\n")
    else:
        sys.stdout.write(render(reply) + "\n")
    sys.stdout.flush()
    if reply.state in ("refused", "stuck"):
        if args.json:
            return FAILED
        raise CliError(f"rollback of {reply.namespace} {reply.state}: {reply.reason}")
    return OK


def render(reply: RollbackReply) -> str:
    frm = f"v{reply.from_version}" if reply.from_version is not None else "(no production)"
    what = f"{reply.namespace} {frm} → content of v{reply.to_version}"
    if reply.state == "refused":
        return f"{reply.namespace}: rollback refused"
    if reply.state == "started":
        return f"{reply.rollback_id} started: {what}"
    new = f" as v{reply.new_version}" if reply.new_version is not None else ""
    return f"{reply.rollback_id} {reply.state}: {what}{new}"


class Progress:
    """One line on stderr per step of the rollback being waited for: its plan, each batch's
    switch, the health verdict on it, and the batch's outcome."""

    def __init__(self) -> None:
        self.new_version: int | None = None
        self.batches = 0

    def show(self, ev: AnyEvent) -> None:
        line = self.line(ev)
        if line is not None:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def line(self, ev: AnyEvent) -> str | None:
        if isinstance(ev, RollbackStarted):
            self.new_version, self.batches = ev.new_version, len(ev.batches)
            nodes = sum(len(b) for b in ev.batches)
            return (
                f"rollback {ev.rollback_id}: v{ev.from_version} → content of v{ev.to_version} "
                f"as v{ev.new_version}, {nodes} node(s) in {self.batches} batch(es)"
            )
        if self.new_version is None or getattr(ev, "version", None) not in (None, self.new_version):
            return None
        if isinstance(ev, TxnCommitted | TxnAborted):
            outcome = "switched" if isinstance(ev, TxnCommitted) else "switch aborted"
            return f"  {outcome}: {', '.join(ev.participants)} (txn {ev.txid})"
        if isinstance(ev, HealthVerdictEvent):
            why = f" — {ev.reason}" if ev.reason else ""
            return f"  health of {', '.join(ev.nodes)}: {ev.verdict}{why}"
        if isinstance(ev, RollbackBatch):
            share = "-" if ev.healthy_share is None else f"{ev.healthy_share:.0%}"
            return f"  batch {ev.batch + 1}/{self.batches}: done, healthy {share} ({ev.reason})"
        return None
