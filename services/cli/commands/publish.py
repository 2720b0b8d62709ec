"""``confbus publish``: propose a file as the next version of a namespace and wait for the
version-store's answer — ``payments v7 sha256=… (approved)`` on stdout, or the rejection's
reason on stderr and exit 1 — and with ``--wait`` for its rollout (``publishwait.py``).

Without ``--id`` the change id is ``auto-<sha256[:24]>-<n>`` (``n``: the version it goes on top
of), so re-running the same publish is idempotent while publishing the same content again after
other versions makes a new version. With NATS authentication the author is the NATS user, and
the change goes through the version-store's pinned ``propose`` operation (``Client.propose_as``).
``--dry-run`` validates and diffs, and stores nothing.

Exit codes: 0 ok; 1 refused or failed (reason on stderr); 2 usage; 3 unreachable or timed out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import msgspec

from confbus.cli.commands.args import (
    acting_as,
    fits,
    input_file,
    label_pair,
    nats_identity,
    natural_int,
    overlay_arg,
    positive_seconds,
    read_file,
)
from confbus.cli.commands.keys import add_trust_args, kek_files, signing_keys
from confbus.cli.commands.options import JSON, NAMESPACE, PROGRESS, Subparsers, add, command
from confbus.cli.commands.publishwait import wait_for_production
from confbus.cli.exitcodes import FAILED, OK, USAGE, CliError
from confbus.cli.output import out, out_bytes
from confbus.client import (
    ChangeRejected,
    Client,
    Overlay,
    change_id_after,
    check_change_id,
    check_namespace,
    with_overlays,
)
from confbus.runtime.errors import ConfbusError, InvalidInput
from confbus.schemas.api import store as store_api
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.names import FORMATS, Format
from confbus.schemas.versions import VersionInfo

_EXTENSIONS: dict[str, Format] = {
    ".json": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".toml": "toml",
}
_json = msgspec.json.Encoder()


def register(sub: Subparsers) -> None:
    p = command(sub, "publish")
    add_publish_args(p)
    p.set_defaults(func=run_publish)


def add_publish_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``publish``; the rollout's ``--wait``/``--strategy`` are added beside them."""
    add(p, NAMESPACE)
    p.add_argument("file", metavar="FILE", type=input_file, help="the config ('-': stdin)")
    p.add_argument(
        "--format",
        choices=FORMATS,
        help="format of FILE (default: from its extension .json/.yaml/.yml/.toml, else the "
        "namespace policy's)",
    )
    p.add_argument("--id", dest="change_id", help="change id, e.g. the git SHA (default: derived)")
    p.add_argument("--author", help="default $CONFBUS_IDENTITY or the OS user")
    p.add_argument("--message", "-m", default="", help="why this change")
    p.add_argument(
        "--base", type=natural_int, metavar="N", help="refuse unless N is the newest version"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="validate and print the diff; store nothing"
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="then wait until the version is production on every node (exit 0), or its rollout "
        "failed (1, with each node's reason) or --timeout passed (3)",
    )
    p.add_argument(
        "--require-all",
        action="store_true",
        help="with --wait: also wait for the nodes that were away (stopped, or no heartbeat) "
        "to come back and catch up; by default they are reported and catch up later",
    )
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="with --wait: exit 0 even when no node follows the namespace (by default that "
        "is a failure: nothing was deployed)",
    )
    p.add_argument(
        "--strategy",
        help="this version's rollout strategy instead of the policy's: all-at-once, canary:N, "
        "linear:N%%, exponential:N%%",
    )
    p.add_argument(
        "--selector",
        type=label_pair,
        action="append",
        metavar="KEY=VALUE",
        help="this version goes only to the nodes with these labels (repeat for more); "
        "default: the policy's selector",
    )
    p.add_argument(
        "--overlay",
        type=overlay_arg,
        action="append",
        default=[],
        metavar="SELECTOR=FILE",
        help="a variant: nodes whose labels match SELECTOR (dc=eu1, or dc=eu1,tier=web) run FILE "
        "with this file merged in (RFC 7396 merge patch; null deletes a key; text: replaces "
        "it). Repeatable; a later --overlay wins where two set the same key",
    )
    add(p, PROGRESS)
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        help="seconds to wait in all: for the version store's answer (default 30) or, with "
        "--wait, for the end of the rollout (default 600)",
    )
    add(p, JSON.but(help="print the version (or rejection) as JSON"))
    add_trust_args(p)


# -- publish and dry run -----------------------------------------------------------------------


def format_of(path: str, explicit: Format | None) -> Format | None:
    if explicit is not None:
        return explicit
    return _EXTENSIONS.get(Path(path).suffix.lower())


def change_from_args(args: argparse.Namespace, content: bytes, change_id: str) -> ChangeProposed:
    return ChangeProposed(
        namespace=args.namespace,
        change_id=change_id,
        content=content,
        format=format_of(args.file, args.format),
        author=acting_as(args, args.author),
        message=args.message,
        base=args.base,
        strategy=args.strategy,
        selector=selector_of(args),
    )


def selector_of(args: argparse.Namespace) -> dict[str, str] | None:
    """``--selector k=v …`` as the change's selector (None: the policy's)."""
    return dict(args.selector) if args.selector else None


def _local_checks(args: argparse.Namespace) -> None:
    # Refused here, before anything is published: the stream would only dead-letter these.
    try:
        check_namespace(args.namespace)
        if args.change_id is not None:
            check_change_id(args.change_id)
    except InvalidInput as exc:
        raise CliError(exc.message, USAGE) from None


async def content_of(args: argparse.Namespace, client: Client) -> bytes:
    """FILE's bytes, with the ``--overlay`` files as the version's variants."""
    content = read_file(args.file)
    if not args.overlay:
        return content
    fmt = format_of(args.file, args.format) or (await client.policy(args.namespace)).format
    overlays = [Overlay(selector=selector, content=_utf8(path)) for selector, path in args.overlay]
    try:
        return with_overlays(content, fmt, overlays)
    except InvalidInput as exc:
        raise CliError(f"{args.file}: {exc.message}", USAGE) from None


def _utf8(path: str) -> str:
    try:
        return read_file(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"overlay {path} is not UTF-8 at byte {exc.start}", USAGE) from None


async def publish_from_args(args: argparse.Namespace, client: Client) -> VersionInfo:
    """Publish as the flags say and wait for the version (the hook ``--wait`` builds on)."""
    _local_checks(args)
    author = acting_as(args, args.author)
    content = await content_of(args, client)
    change_id = await _change_id(client, args, content)
    if nats_identity(args) is not None:
        return await publish_as(client, author, args, content, change_id)
    keys, keks = signing_keys(args), kek_files(args)
    return await client.publish(
        args.namespace,
        content,
        format=format_of(args.file, args.format),
        change_id=change_id,
        author=author,
        message=args.message,
        base=args.base,
        strategy=args.strategy,
        selector=selector_of(args),
        timeout=args.timeout,
        signing_keys=keys,
        keks=keks,
    )


async def _change_id(client: Client, args: argparse.Namespace, content: bytes) -> str | None:
    """``--id``, else (without ``--base``) the default one, ``Client.default_change_id``'s,
    from the newest version — one read, which also tells a new namespace (``_say_if_new``).
    None with ``--base`` and no ``--id``: derived from the base, no read needed."""
    if args.change_id is not None or args.base is not None:
        await _say_if_new(client, args.namespace)
        given: str | None = args.change_id
        return given
    newest = await client.newest(args.namespace, timeout=args.timeout)
    if newest is None:
        _say_new(args.namespace)
    return change_id_after(newest, hashlib.sha256(content).hexdigest())


async def _say_if_new(client: Client, namespace: str) -> None:
    """A namespace is created by its first publish: say so, since a typo creates one too.
    (Its own history is asked, not the list of namespaces: a pipeline may read only its own.)"""
    try:
        known = await client.history(namespace, limit=1)
    except ConfbusError:  # not allowed to read it, or no answer: the publish will tell
        return
    if not known:
        _say_new(namespace)


def _say_new(namespace: str) -> None:
    sys.stderr.write(f"confbus: namespace {namespace} does not exist yet: creating it\n")


async def publish_as(
    client: Client,
    user: str,
    args: argparse.Namespace,
    content: bytes,
    change_id: str | None,
) -> VersionInfo:
    """``Client.publish`` with the author pinned (``Client.propose_as``)."""
    ns = args.namespace
    sha = hashlib.sha256(content).hexdigest()
    change_id = change_id or await client.default_change_id(ns, sha, args.base)
    check_change_id(change_id)
    change = ChangeProposed(
        namespace=ns,
        change_id=change_id,
        content=content,
        format=format_of(args.file, args.format),
        author=user,
        message=args.message,
        base=args.base,
        strategy=args.strategy,
        selector=selector_of(args),
    )
    change = await client.seal_and_sign(change, signing_keys(args), kek_files(args))
    return await client.propose_as(user, change, args.timeout)


async def run_publish(args: argparse.Namespace, client: Client) -> int:
    total = args.timeout if args.timeout is not None else (600.0 if args.wait else 30.0)
    deadline = time.monotonic() + total
    # The store's answer comes within its own budget; --wait spends what is left on the rollout.
    args.timeout = min(total, 30.0) if args.wait else total
    if args.dry_run:
        return await _dry_run(args, client)
    try:
        info = await publish_from_args(args, client)
    except ChangeRejected as exc:
        if args.json:
            rejected = {
                "rejected": True,
                "namespace": exc.namespace,
                "change_id": exc.change_id,
                "reason": exc.reason,
                "where": exc.where,
            }
            out(json.dumps(rejected))
        sys.stderr.write(f"confbus: {exc}\n")
        return FAILED
    if args.wait:
        return await wait_for_production(args, client, info, deadline)
    print_version(info, as_json=args.json)
    return OK


async def _dry_run(args: argparse.Namespace, client: Client) -> int:
    _local_checks(args)
    content = await content_of(args, client)
    sha = hashlib.sha256(content).hexdigest()
    change_id = args.change_id or await client.default_change_id(args.namespace, sha, args.base)
    change = change_from_args(args, content, change_id)
    fits(store_api.DryRunRequest(change=change), "the dry run")
    reply = await client.dry_run(change)
    if args.json:
        out_bytes(_json.encode(reply) + b"\n")
    elif reply.ok:
        if reply.diff:
            out(reply.diff, end="")
        for v in reply.variants:
            nodes = ", ".join(v.nodes) if v.nodes else "no node now"
            out(f"# variant {v.name} ({nodes}) sha256={v.sha256}")
            out(v.diff or "# (unchanged)\n", end="")
        note = f" ({reply.reason})" if reply.reason else ""
        sys.stderr.write(
            f"confbus: dry run: {args.namespace} v{reply.would_be_version} would be stored"
            f"{note}; nothing was stored\n"
        )
    if not reply.ok:
        where = f" (at {reply.where})" if reply.where else ""
        sys.stderr.write(f"confbus: {args.namespace}: would be rejected: {reply.reason}{where}\n")
        return FAILED
    return OK


def print_version(info: VersionInfo, *, as_json: bool) -> None:
    """A version as publish, approve and reject answer: JSON, or one line with its status."""
    if as_json:
        out_bytes(_json.encode(info) + b"\n")
    else:
        out(f"{info.namespace} v{info.version} sha256={info.sha256} ({status_text(info)})")


def status_text(info: VersionInfo) -> str:
    if info.status == "draft":
        return f"draft: waiting for approval by someone other than {info.author or 'its author'}"
    return info.status
