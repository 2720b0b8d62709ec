"""Versions: ``confbus publish``, ``history``, ``show``, ``diff``, ``approve``, ``reject``,
``policy`` (and ``backup``/``restore``, from ``backup.py``).

``publish`` proposes a file as the next version of a namespace and waits for the version-store's
answer: ``payments v7 sha256=… (approved)`` on stdout, or the rejection's reason on stderr and
exit 1. Without ``--id`` the change id is ``auto-<sha256[:24]>-<n>`` (``n``: the version it goes
on top of), so re-running the same publish is idempotent while publishing the same content
again after other versions makes a new version. Identities (``--as``, ``--author``) default to
``$CONFBUS_IDENTITY``, else the OS user — unless the connection authenticates as a NATS user
(``--nats-user``): then that user *is* the identity, sent on subjects that pin it
(``cfg.api.store.approve.<user>``, ``cfg.api.store.propose.<ns>.<user>``, see
``confbus.runtime.identity``), and ``--as``/``--author`` may only repeat it.

Exit codes: 0 ok; 1 refused or failed (reason on stderr); 2 usage; 3 unreachable or timed out.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import yaml

from confbus.cli.client import ChangeRejected, Client, check_change_id, check_namespace
from confbus.cli.commands import backup
from confbus.cli.commands.publishwait import wait_for_production
from confbus.cli.exitcodes import FAILED, OK, USAGE, CliError
from confbus.runtime.codec import encode
from confbus.runtime.errors import InvalidInput
from confbus.runtime.identity import is_identity, pinned_op
from confbus.schemas.api import store as store_api
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.names import FORMATS, Format
from confbus.schemas.policy import Policy
from confbus.schemas.streams import MAX_PAYLOAD
from confbus.schemas.versions import VersionInfo

_EXTENSIONS: dict[str, Format] = {
    ".json": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".toml": "toml",
}
_json = msgspec.json.Encoder()


def identity(explicit: str | None = None) -> str:
    """Who is acting: ``--as``/``--author``, else ``$CONFBUS_IDENTITY``, else the OS user.

    With NATS authentication on, the NATS user is the identity: see ``acting_as``.
    """
    if explicit:
        return explicit
    if env := os.environ.get("CONFBUS_IDENTITY"):
        return env
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def nats_identity(args: argparse.Namespace) -> str | None:
    """The NATS user this command authenticates as (``--nats-user``), if any: with
    authentication on, the store records that user, whatever a flag says."""
    user: str | None = getattr(args, "nats_user", None)
    return user or None


def acting_as(args: argparse.Namespace, explicit: str | None) -> str:
    """Who acts: the NATS user when authenticated (``explicit`` may only repeat it), else
    ``identity(explicit)``."""
    user = nats_identity(args)
    if user is None:
        return identity(explicit)
    if not is_identity(user):
        raise CliError(
            f"NATS user {user!r} cannot be pinned into a subject (a confbus identity is "
            "[a-z0-9][a-z0-9_-]{0,63})",
            USAGE,
        )
    if explicit and explicit != user:
        raise CliError(
            f"with NATS authentication you act as your NATS user {user!r}; {explicit!r} "
            "cannot be claimed (leave out --as/--author)",
            USAGE,
        )
    return user


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _register_versions(sub)
    backup.register(sub)


def _register_versions(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "publish",
        help="propose FILE as the next version of NS and wait for the outcome",
        description="Publish FILE ('-' for stdin) as a change of NS on cfg.change.NS and wait "
        "for the version store: prints 'NS vN sha256=… (status)', or the rejection on stderr "
        "and exits 1. Without --id the change id is auto-<sha256[:24]>-<base>, so a retry is "
        "idempotent.",
    )
    add_publish_args(p)
    p.set_defaults(func=run_publish)

    p = sub.add_parser("history", help="list the versions of NS, newest first")
    p.add_argument("namespace", metavar="NS")
    p.add_argument("--limit", type=_positive_int, default=20, help="at most N (%(default)s)")
    p.add_argument("--before", type=_positive_int, help="only versions older than N")
    p.add_argument("--json", action="store_true", help="one JSON array of versions")
    p.set_defaults(func=run_history)

    p = sub.add_parser(
        "show",
        help="print the exact bytes of a version",
        description="Write the exact stored bytes of a version to stdout (sha256 of the output "
        "is the version's). --info prints its metadata instead.",
    )
    p.add_argument("namespace", metavar="NS")
    p.add_argument(
        "ref", nargs="?", default="latest", metavar="VERSION|production|last-good|latest"
    )
    p.add_argument("--info", action="store_true", help="print the version's metadata, not bytes")
    p.add_argument("--json", action="store_true", help="with --info: as JSON")
    p.set_defaults(func=run_show)

    p = sub.add_parser("diff", help="unified diff between two versions of NS")
    p.add_argument("namespace", metavar="NS")
    p.add_argument("a", metavar="V1")
    p.add_argument("b", metavar="V2")
    p.set_defaults(func=run_diff)

    p = sub.add_parser(
        "approve",
        help="approve a draft version (by someone other than its author)",
    )
    p.add_argument("namespace", metavar="NS")
    p.add_argument("version", type=_positive_int, metavar="VERSION")
    p.add_argument("--as", dest="identity", help="approver (default $CONFBUS_IDENTITY or user)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_approve)

    p = sub.add_parser("reject", help="refuse a draft (or not yet rolled out) version for good")
    p.add_argument("namespace", metavar="NS")
    p.add_argument("version", type=_positive_int, metavar="VERSION")
    p.add_argument("--reason", default="", help="why, for the audit log")
    p.add_argument("--as", dest="identity", help="who (default $CONFBUS_IDENTITY or user)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_reject)

    p = sub.add_parser(
        "policy",
        help="show or change the policy of NS",
        description="Without options: print the namespace's policy. With options: change "
        "those fields, store the policy and print it.",
    )
    p.add_argument("namespace", metavar="NS")
    p.add_argument("--format", choices=FORMATS, help="the namespace's config format")
    schema = p.add_mutually_exclusive_group()
    schema.add_argument("--schema", metavar="FILE", help="JSON Schema (JSON or YAML file)")
    schema.add_argument("--no-schema", action="store_true", help="remove the JSON Schema")
    p.add_argument(
        "--require-approval",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="versions wait as drafts until someone other than the author approves",
    )
    p.add_argument("--strategy", help="rollout: all-at-once, canary:N, linear:N%%, exponential:N%%")
    p.add_argument("--max-bytes", type=_positive_int, help="size limit of a version")
    p.add_argument(
        "--secret",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="content never appears in events, logs or dry-run diffs",
    )
    p.add_argument("--as", dest="identity", help="who (for the log)")
    p.add_argument("--json", action="store_true", help="print the policy as one JSON line")
    p.set_defaults(func=run_policy)


def add_publish_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``publish``; the rollout's ``--wait``/``--strategy`` are added beside them."""
    p.add_argument("namespace", metavar="NS")
    p.add_argument("file", metavar="FILE", help="the config ('-': stdin)")
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
        "--base", type=_natural_int, metavar="N", help="refuse unless N is the newest version"
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
        "--strategy",
        help="this version's rollout strategy instead of the policy's: all-at-once, canary:N, "
        "linear:N%%, exponential:N%%",
    )
    p.add_argument(
        "--progress",
        action="store_true",
        help="with --wait: print each wave on stderr even when it is not a terminal",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        help="seconds to wait in all: for the version store's answer (default 30) or, with "
        "--wait, for the end of the rollout (default 600)",
    )
    p.add_argument("--json", action="store_true", help="print the version (or rejection) as JSON")


# -- publish ------------------------------------------------------------------------------------


def read_file(path: str, limit: int = MAX_PAYLOAD) -> bytes:
    """The file's bytes ('-': stdin), refused beyond ``limit``: nothing larger than a bus
    message can be a config, and a file like /dev/zero would otherwise be read forever."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", FAILED) from None
    if len(data) > limit:
        raise CliError(
            f"{path} is larger than {limit} bytes: more than confbus carries (a config is at "
            "most its namespace's max_bytes, 1 MiB unless the policy says otherwise)",
            FAILED,
        )
    return data


def _fits(request: object, what: str) -> None:
    """Refuse here a request the bus would refuse (nats-py raises on an oversized payload)."""
    size = len(encode(request))
    if size > MAX_PAYLOAD:
        raise CliError(
            f"{what} is {size} bytes on the wire: more than the bus carries ({MAX_PAYLOAD})",
            FAILED,
        )


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
    )


def _local_checks(args: argparse.Namespace) -> None:
    # Refused here, before anything is published: the stream would only dead-letter these.
    try:
        check_namespace(args.namespace)
        if args.change_id is not None:
            check_change_id(args.change_id)
    except InvalidInput as exc:
        raise CliError(exc.message, USAGE) from None


async def publish_from_args(args: argparse.Namespace, client: Client) -> VersionInfo:
    """Publish as the flags say and wait for the version (the hook ``--wait`` builds on)."""
    _local_checks(args)
    author = acting_as(args, args.author)
    content = read_file(args.file)
    if nats_identity(args) is not None:
        return await publish_as(client, author, args, content)
    return await client.publish(
        args.namespace,
        content,
        format=format_of(args.file, args.format),
        change_id=args.change_id,
        author=author,
        message=args.message,
        base=args.base,
        strategy=args.strategy,
        timeout=args.timeout,
    )


class _Accepted(msgspec.Struct, frozen=True):
    """The stream's ack the store relays for a proposed change."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False


async def publish_as(
    client: Client, user: str, args: argparse.Namespace, content: bytes
) -> VersionInfo:
    """``Client.publish`` with the author pinned: the change goes to the version-store on
    ``cfg.api.store.propose.<ns>.<user>`` (the permissions let only ``user`` publish there), which
    puts it on ``cfg.change.<ns>`` with ``user`` as its author; then wait for its outcome the
    same way."""
    ns = args.namespace
    sha = hashlib.sha256(content).hexdigest()
    change_id = args.change_id or await client.default_change_id(ns, sha, args.base)
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
    )

    async def send() -> bool:
        ack = await client.store_call(
            pinned_op("propose", user, ns), change, _Accepted, timeout=10.0
        )
        return ack.duplicate

    return await client.submit(change, send, args.timeout)


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
            _print_json(
                {
                    "rejected": True,
                    "namespace": exc.namespace,
                    "change_id": exc.change_id,
                    "reason": exc.reason,
                    "where": exc.where,
                }
            )
        sys.stderr.write(f"confbus: {exc}\n")
        return FAILED
    if args.wait:
        return await wait_for_production(args, client, info, deadline)
    if args.json:
        _write(_json.encode(info) + b"\n")
    else:
        _print(f"{info.namespace} v{info.version} sha256={info.sha256} ({_status(info)})")
    return OK


async def _dry_run(args: argparse.Namespace, client: Client) -> int:
    _local_checks(args)
    content = read_file(args.file)
    sha = hashlib.sha256(content).hexdigest()
    change_id = args.change_id or await client.default_change_id(args.namespace, sha, args.base)
    change = change_from_args(args, content, change_id)
    _fits(store_api.DryRunRequest(change=change), "the dry run")
    reply = await client.dry_run(change)
    if args.json:
        _write(_json.encode(reply) + b"\n")
    elif reply.ok:
        if reply.diff:
            _print(reply.diff, end="")
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


# -- reading ------------------------------------------------------------------------------------


async def run_history(args: argparse.Namespace, client: Client) -> int:
    _check_ns(args.namespace)
    versions = await client.history(args.namespace, limit=args.limit, before=args.before)
    if args.json:
        _write(_json.encode(versions) + b"\n")
        return OK
    if not versions:
        sys.stderr.write(f"confbus: {args.namespace} has no versions\n")
        return OK
    for v in versions:
        _print(_history_line(v))
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
    _check_ns(args.namespace)
    reply = await client.get(args.namespace, args.ref, content=not args.info)
    if args.info:
        if args.json:
            _write(_json.encode(reply.info) + b"\n")
        else:
            for key, value in msgspec.structs.asdict(reply.info).items():
                _print(f"{key}: {value}")
        return OK
    # The exact bytes, untouched: no decoding, no newline added.
    _write(reply.content or b"")
    return OK


async def run_diff(args: argparse.Namespace, client: Client) -> int:
    _check_ns(args.namespace)
    reply = await client.diff(args.namespace, args.a, args.b)
    _print(reply.diff, end="")
    return OK


# -- approvals ----------------------------------------------------------------------------------


async def run_approve(args: argparse.Namespace, client: Client) -> int:
    _check_ns(args.namespace)
    who = acting_as(args, args.identity)
    if nats_identity(args) is not None:
        req = store_api.ApproveRequest(namespace=args.namespace, version=args.version, approver=who)
        reply = await client.store_call(pinned_op("approve", who), req, store_api.VersionReply)
        info = reply.info
    else:
        info = await client.approve(args.namespace, args.version, who)
    if args.json:
        _write(_json.encode(info) + b"\n")
    else:
        _print(f"{info.namespace} v{info.version} sha256={info.sha256} ({_status(info)})")
    return OK


async def run_reject(args: argparse.Namespace, client: Client) -> int:
    _check_ns(args.namespace)
    who = acting_as(args, args.identity)
    if nats_identity(args) is not None:
        req = store_api.RejectRequest(
            namespace=args.namespace, version=args.version, actor=who, reason=args.reason
        )
        reply = await client.store_call(pinned_op("reject", who), req, store_api.VersionReply)
        info = reply.info
    else:
        info = await client.reject(args.namespace, args.version, who, args.reason)
    if args.json:
        _write(_json.encode(info) + b"\n")
    else:
        _print(f"{info.namespace} v{info.version} sha256={info.sha256} ({info.status})")
    return OK


# -- policy -------------------------------------------------------------------------------------


async def run_policy(args: argparse.Namespace, client: Client) -> int:
    _check_ns(args.namespace)
    policy = await client.policy(args.namespace)
    changes: dict[str, Any] = {}
    if args.format is not None:
        changes["format"] = args.format
    if args.schema is not None:
        changes["json_schema"] = _read_schema(args.schema)
    if args.no_schema:
        changes["json_schema"] = None
    if args.require_approval is not None:
        changes["require_approval"] = args.require_approval
    if args.strategy is not None:
        changes["strategy"] = args.strategy
    if args.max_bytes is not None:
        changes["max_bytes"] = args.max_bytes
    if args.secret is not None:
        changes["secret"] = args.secret
    if changes:
        who = acting_as(args, args.identity)
        new = msgspec.structs.replace(policy, **changes)
        _fits(store_api.PolicySetRequest(policy=new, actor=who), "the policy")
        if nats_identity(args) is not None:
            req = store_api.PolicySetRequest(policy=new, actor=who)
            policy = await client.store_call(pinned_op("policy_set", who), req, Policy)
        else:
            policy = await client.set_policy(new, actor=who)
    if args.json:
        _write(_json.encode(policy) + b"\n")
    else:
        _print(json.dumps(msgspec.to_builtins(policy), indent=2))
    return OK


MAX_SCHEMA_BYTES = 1024 * 1024


def _read_schema(path: str) -> dict[str, Any]:
    raw = read_file(path, MAX_SCHEMA_BYTES)
    try:
        if Path(path).suffix.lower() in (".yaml", ".yml"):
            schema = yaml.safe_load(raw)
        else:
            schema = json.loads(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise CliError(f"{path}: not a JSON (or YAML) document: {exc}", FAILED) from None
    except RecursionError:
        raise CliError(f"{path}: nests too deeply to be a JSON Schema", FAILED) from None
    if not isinstance(schema, dict):
        raise CliError(f"{path}: a JSON Schema is an object", FAILED)
    try:
        # YAML can say what JSON cannot (a null key, a set, binary): refuse it here.
        schema = msgspec.json.decode(msgspec.json.encode(schema))
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise CliError(f"{path}: not expressible as JSON: {exc}", FAILED) from None
    assert isinstance(schema, dict)
    return schema


# -- helpers ------------------------------------------------------------------------------------


def _status(info: VersionInfo) -> str:
    if info.status == "draft":
        return f"draft: waiting for approval by someone other than {info.author or 'its author'}"
    return info.status


def _check_ns(namespace: str) -> None:
    try:
        check_namespace(namespace)
    except InvalidInput as exc:
        raise CliError(exc.message, USAGE) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _natural_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def _print(text: str, end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


def _print_json(value: Any) -> None:
    _print(json.dumps(value))


def _write(data: bytes) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
