"""``confbus txns [NS]``: transactions in doubt (undecided), with their age."""

from __future__ import annotations

import argparse
import json

import msgspec

from confbus.cli.commands.options import JSON, NAMESPACE, Subparsers, add, command
from confbus.cli.output import out
from confbus.client import Client
from confbus.schemas.api import txn as txn_api


def register(sub: Subparsers) -> None:
    p = command(sub, "txns")
    add(
        p,
        NAMESPACE.but(nargs="?", help="only this namespace"),
        JSON.but(help="one JSON object per line"),
    )
    p.set_defaults(func=run)


async def run(args: argparse.Namespace, client: Client) -> int:
    reply = await client.call(txn_api.IN_DOUBT, txn_api.InDoubtRequest(namespace=args.namespace))
    if args.json:
        for t in reply.txns:
            out(json.dumps(msgspec.to_builtins(t)))
        return 0
    if not reply.txns:
        out("no transaction in doubt")
        return 0
    for t in reply.txns:
        out(
            f"{t.namespace} {t.txid} v{t.version} epoch={t.epoch} age={t.age_s:.1f}s "
            f"participants={','.join(t.participants)}"
        )
    return 0
