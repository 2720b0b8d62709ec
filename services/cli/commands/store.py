"""Versions: ``confbus history``, ``show``, ``diff``, ``approve``, ``reject`` (``backup`` and
``restore`` are in ``backup.py``, ``publish`` in ``publish.py``, ``policy`` in ``policy.py``).

Identities (``--as``) default to ``$CONFBUS_IDENTITY``, else the OS user — unless the connection
authenticates as a NATS user (``--nats-user``): then that user *is* the identity, sent on
subjects that pin it (``cfg.api.store.approve.<user>``, see ``confbus.runtime.identity``), and
``--as`` may only repeat it.

Exit codes: 0 ok; 1 refused or failed (reason on stderr); 2 usage; 3 unreachable or timed out.
"""

from __future__ import annotations

import argparse

import msgspec

from confbus.cli.commands.args import (
    acting_as,
    check_ns,
    nats_identity,
    positive_int,
    selector_arg,
)
from confbus.cli.commands.keys import add_kek_arg, kek_files, opened
from confbus.cli.commands.options import (
    ACTOR,
    JSON,
    NAMESPACE,
    REASON,
    Option,
    Subparsers,
    add,
    command,
)
from confbus.cli.commands.publish import print_version
from confbus.cli.exitcodes import OK
from confbus.cli.output import err, out, out_bytes
from confbus.client import Client
from confbus.schemas.api import store as store_api
from confbus.schemas.versions import VersionInfo

_json = msgspec.json.Encoder()
_VERSION = Option(("version",), {"type": positive_int, "metavar": "VERSION"})


def register(sub: Subparsers) -> None:
    p = command(sub, "history")
    add(p, NAMESPACE)
    p.add_argument("--limit", type=positive_int, default=20, help="at most N (%(default)s)")
    p.add_argument("--before", type=positive_int, help="only versions older than N")
    add(p, JSON.but(help="one JSON array of versions"))
    p.set_defaults(func=run_history)

    p = command(sub, "show")
    add(p, NAMESPACE)
    p.add_argument(
        "ref", nargs="?", default="latest", metavar="VERSION|production|last-good|latest"
    )
    p.add_argument("--info", action="store_true", help="print the version's metadata, not bytes")
    add(p, JSON.but(help="with --info: as JSON"))
    p.add_argument(
        "--for",
        dest="labels",
        type=selector_arg,
        metavar="LABELS",
        help="the bytes a node with these labels runs (dc=eu1,tier=web): the version's base "
        "with every overlay they match (its sha256 is what that node reports)",
    )
    add_kek_arg(p, "open a sealed secret version with this key-encryption key")
    p.set_defaults(func=run_show)

    p = command(sub, "diff")
    add(p, NAMESPACE)
    p.add_argument("a", metavar="V1")
    p.add_argument("b", metavar="V2")
    p.add_argument(
        "--for",
        dest="labels",
        type=selector_arg,
        metavar="LABELS",
        help="diff the bytes a node with these labels runs of each version (dc=eu1,tier=web)",
    )
    p.set_defaults(func=run_diff)

    p = command(sub, "approve")
    add(p, NAMESPACE, _VERSION, ACTOR, JSON)
    p.set_defaults(func=run_approve)

    p = command(sub, "reject")
    add(p, NAMESPACE, _VERSION, REASON, ACTOR, JSON)
    p.set_defaults(func=run_reject)


# -- reading ------------------------------------------------------------------------------------


async def run_history(args: argparse.Namespace, client: Client) -> int:
    check_ns(args.namespace)
    versions = await client.history(args.namespace, limit=args.limit, before=args.before)
    if args.json:
        out_bytes(_json.encode(versions) + b"\n")
        return OK
    if not versions:
        err(f"confbus: {args.namespace} has no versions")
        return OK
    for v in versions:
        out(_history_line(v))
    return OK


def _history_line(v: VersionInfo) -> str:
    flags = [f"rollback of v{v.rollback_of}"] if v.rollback_of else []
    if v.last_good:
        flags.append("last-good")
    if v.approved_by:
        flags.append(f"approved by {v.approved_by}")
    when = v.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    extra = f" [{', '.join(flags)}]" if flags else ""
    message = f" {v.message}" if v.message else ""
    return (
        f"v{v.version:<5} {when} {v.status:<10} {v.sha256[:12]} {v.format:<4} "
        f"{v.author or '-'} {v.change_id}{extra}{message}"
    )


async def run_show(args: argparse.Namespace, client: Client) -> int:
    check_ns(args.namespace)
    if args.labels is not None and not args.info:
        _, variant = await client.render(args.namespace, args.ref, args.labels)
        out_bytes(opened(variant.content, kek_files(args)))  # sealed: no overlays, the base
        return OK
    reply = await client.get(args.namespace, args.ref, content=not args.info)
    if args.info:
        if args.json:
            out_bytes(_json.encode(reply.info) + b"\n")
        else:
            for key, value in msgspec.structs.asdict(reply.info).items():
                out(f"{key}: {value}")
        return OK
    # The exact bytes, untouched: no decoding, no newline added (a sealed secret's plaintext).
    out_bytes(opened(reply.content or b"", kek_files(args)))
    return OK


async def run_diff(args: argparse.Namespace, client: Client) -> int:
    check_ns(args.namespace)
    reply = await client.diff(args.namespace, args.a, args.b, labels=args.labels)
    out(reply.diff, end="")
    return OK


# -- approvals ----------------------------------------------------------------------------------


async def run_approve(args: argparse.Namespace, client: Client) -> int:
    check_ns(args.namespace)
    who = acting_as(args, args.identity)
    if nats_identity(args) is not None:
        req = store_api.ApproveRequest(namespace=args.namespace, version=args.version, approver=who)
        info = (await client.call(store_api.APPROVE_AS.as_user(who), req)).info
    else:
        info = await client.approve(args.namespace, args.version, who)
    print_version(info, as_json=args.json)
    return OK


async def run_reject(args: argparse.Namespace, client: Client) -> int:
    check_ns(args.namespace)
    who = acting_as(args, args.identity)
    if nats_identity(args) is not None:
        req = store_api.RejectRequest(
            namespace=args.namespace, version=args.version, actor=who, reason=args.reason
        )
        info = (await client.call(store_api.REJECT_AS.as_user(who), req)).info
    else:
        info = await client.reject(args.namespace, args.version, who, args.reason)
    print_version(info, as_json=args.json)
    return OK
