"""``confbus policy NS``: print a namespace's policy, or replace it — whole from a file
(``--file policy.yaml``: every field ``schemas/policy.py`` has, checked against the policy's
JSON Schema), field by field with flags, or both (the flags apply on top of the file).

What would change is shown field by field before anything is stored (``--dry-run`` stops
there); the version-store checks the whole policy again, stores it, and announces the change as
``policy.changed`` with the actor and the same field-by-field diff.

Exit codes: 0 ok; 1 refused (the reason and the field on stderr); 2 usage; 3 unreachable.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import yaml

from confbus.cli.commands.args import (
    acting_as,
    check_ns,
    fits,
    input_file,
    label_pair,
    nats_identity,
    positive_int,
    positive_seconds,
    read_file,
    seconds_or_zero,
)
from confbus.cli.commands.options import ACTOR, JSON, NAMESPACE, Subparsers, add, command
from confbus.cli.exitcodes import FAILED, OK, USAGE, CliError
from confbus.cli.output import err, out, out_bytes
from confbus.client import Client, policy_from_document
from confbus.runtime.errors import InvalidInput
from confbus.schemas.api import store as store_api
from confbus.schemas.names import FORMATS
from confbus.schemas.policy import Policy
from confbus.schemas.policydiff import policy_changes

_json = msgspec.json.Encoder()
MAX_DOCUMENT_BYTES = 1024 * 1024


def register(sub: Subparsers) -> None:
    p = command(sub, "policy")
    add(p, NAMESPACE)
    p.add_argument(
        "--file",
        type=input_file,
        metavar="FILE",
        help="the whole policy, YAML or JSON (fields left out take their defaults)",
    )
    for flags, kwargs in _FLAGS:
        p.add_argument(*flags, **kwargs)
    p.add_argument("--dry-run", action="store_true", help="show what would change; store nothing")
    add(p, ACTOR, JSON.but(help="print the policy as one JSON line"))
    p.set_defaults(func=run_policy)


# -- arguments ----------------------------------------------------------------------------------


def max_excluded(text: str) -> float:
    """``Policy.max_excluded``: ``10%`` or ``0.1`` is a share of the live targets (below 1,
    rounded down to whole nodes), ``1``, ``2``… a count of nodes (the one rule:
    ``confbus.distributor.strategy.excluded_budget``)."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a share or a count: {text!r} (e.g. 10%, 0.1 or 2)"
        ) from None
    if text.endswith("%") and not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"a share is 0% to 99%: {text!r} (or give a count)")
    if value < 0 or (value >= 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(
            f"below 1 a share, from 1 a whole count of nodes: {text!r}"
        )
    return value


# Each flag: its argparse spelling, and the field of the policy it sets (dotted: nested).
_FLAGS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--format",), {"choices": FORMATS, "help": "the namespace's config format"}),
    (("--schema",), {"type": input_file, "metavar": "FILE", "help": "JSON Schema (JSON/YAML)"}),
    (("--no-schema",), {"action": "store_true", "help": "remove the JSON Schema"}),
    (
        ("--require-approval",),
        {
            "action": argparse.BooleanOptionalAction,
            "help": "versions wait as drafts until someone other than the author approves",
        },
    ),
    (
        ("--strategy",),
        {"help": "rollout: all-at-once, canary:N, linear:N%%, exponential:N%%"},
    ),
    (("--max-bytes",), {"type": positive_int, "help": "size limit of a version"}),
    (
        ("--secret",),
        {
            "action": argparse.BooleanOptionalAction,
            "help": "content never appears in events, logs or dry-run diffs",
        },
    ),
    (
        ("--bake",),
        {"type": seconds_or_zero, "metavar": "SECONDS", "help": "wait between waves (bake_s)"},
    ),
    (
        ("--vote-timeout",),
        {
            "type": positive_seconds,
            "metavar": "SECONDS",
            "help": "how long a switch waits for every vote (vote_timeout_s)",
        },
    ),
    (
        ("--max-excluded",),
        {
            "type": max_excluded,
            "metavar": "N",
            "help": "live targets that may miss their vote and be left out (they catch up "
            "later): a share below 1 (10%% or 0.1, rounded down to whole nodes) or a count "
            "from 1 (default 0: all or nothing)",
        },
    ),
    (
        ("--selector",),
        {
            "type": label_pair,
            "action": "append",
            "metavar": "KEY=VALUE",
            "help": "only nodes with these labels follow the namespace (repeat for more)",
        },
    ),
    (("--no-selector",), {"action": "store_true", "help": "every node follows the namespace"}),
    (
        ("--on-missing-data",),
        {"choices": ("pass", "fail"), "help": "a bake with no health data passes or fails"},
    ),
    (
        ("--webhook",),
        {
            "action": "append",
            "metavar": "URL",
            "help": "notify this URL of rollbacks (repeat for more)",
        },
    ),
    (("--no-webhooks",), {"action": "store_true", "help": "notify no URL"}),
    (
        ("--rollback-strategy",),
        {"help": "rollbacks: all-at-once or batches:N (rollback.strategy)"},
    ),
    (
        ("--automatic-rollback",),
        {
            "action": argparse.BooleanOptionalAction,
            "help": "roll back by itself on a failing verdict or alert (rollback.automatic)",
        },
    ),
]


def _field_values(args: argparse.Namespace) -> dict[str, Any]:
    """The fields the flags set, by their path in the policy."""
    plain: dict[str, str] = {
        "format": "format",
        "require_approval": "require_approval",
        "strategy": "strategy",
        "max_bytes": "max_bytes",
        "secret": "secret",
        "bake": "bake_s",
        "vote_timeout": "vote_timeout_s",
        "max_excluded": "max_excluded",
        "on_missing_data": "on_missing_data",
        "rollback_strategy": "rollback.strategy",
        "automatic_rollback": "rollback.automatic",
    }
    values = {path: getattr(args, dest) for dest, path in plain.items()}
    values = {path: value for path, value in values.items() if value is not None}
    if args.schema is not None:
        values["json_schema"] = read_schema(args.schema)
    if args.no_schema:
        values["json_schema"] = None
    if args.selector is not None:
        values["selector"] = dict(args.selector)
    if args.no_selector:
        values["selector"] = {}
    if args.webhook is not None:
        values["webhooks"] = list(args.webhook)
    if args.no_webhooks:
        values["webhooks"] = []
    return values


def _conflicts(args: argparse.Namespace) -> None:
    for a, b in (("schema", "no_schema"), ("selector", "no_selector"), ("webhook", "no_webhooks")):
        if getattr(args, a) and getattr(args, b):
            dash = "--" + a.replace("_", "-"), "--" + b.replace("_", "-")
            raise CliError(f"{dash[0]} and {dash[1]} say opposite things: give one", USAGE)


# -- the command --------------------------------------------------------------------------------


async def run_policy(args: argparse.Namespace, client: Client) -> int:
    ns = check_ns(args.namespace)
    _conflicts(args)
    values = _field_values(args)
    current = await client.policy(ns)
    if args.file is None and not values:
        if args.dry_run:
            err("confbus: --dry-run of what? give --file or flags to change")
        _print_policy(args, current)
        return OK
    document = read_document(args.file) if args.file else msgspec.to_builtins(current)
    for path, value in values.items():
        _set(document, path, value)
    try:
        new = policy_from_document(document, ns)
    except InvalidInput as exc:
        where = f" (at {exc.where})" if exc.where else ""
        source = args.file or "the policy"
        raise CliError(f"{source}: not a valid policy: {exc.message}{where}", FAILED) from None
    changes = policy_changes(current, new)
    who = acting_as(args, args.identity)
    if args.dry_run:
        await _store(args, client, new, who, dry_run=True)  # the store's checks too
        for change in changes:
            out(change.line())
        what = f"{len(changes)} field(s) would change" if changes else "nothing would change"
        err(f"confbus: dry run: {ns} policy: {what}; nothing was stored")
        return OK
    if not changes:
        err(f"confbus: {ns} policy: unchanged")
        _print_policy(args, current)
        return OK
    stored = await _store(args, client, new, who)
    for change in changes:
        err(f"  {change.line()}")
    err(f"confbus: {ns} policy: {len(changes)} field(s) changed by {who}")
    _print_policy(args, stored)
    return OK


async def _store(
    args: argparse.Namespace, client: Client, policy: Policy, who: str, *, dry_run: bool = False
) -> Policy:
    req = store_api.PolicySetRequest(policy=policy, actor=who, dry_run=dry_run)
    fits(req, "the policy")
    if nats_identity(args) is not None:
        return await client.call(store_api.POLICY_SET_AS.as_user(who), req)
    return await client.set_policy(policy, actor=who, dry_run=dry_run)


def _print_policy(args: argparse.Namespace, policy: Policy) -> None:
    if args.json:
        out_bytes(_json.encode(policy) + b"\n")
    else:
        out(json.dumps(msgspec.to_builtins(policy), indent=2))


def _set(document: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for name in parents:
        child = document.get(name)
        document[name] = child = dict(child) if isinstance(child, dict) else {}
        document = child
    document[last] = value


# -- files --------------------------------------------------------------------------------------


def read_document(path: str) -> Any:
    """A YAML or JSON document (JSON is YAML; a .json file is read as JSON, so its errors
    name JSON's rules), as plain JSON values: YAML's extras (a null key, a set, a date) are
    refused here, not somewhere downstream."""
    return _load(path, read_file(path, MAX_DOCUMENT_BYTES))


def read_schema(path: str) -> dict[str, Any]:
    schema = _load(path, read_file(path, MAX_DOCUMENT_BYTES))
    if not isinstance(schema, dict):
        raise CliError(f"{path}: a JSON Schema is an object", FAILED)
    return schema


def _load(path: str, raw: bytes) -> Any:
    parse: Callable[[bytes], Any] = json.loads
    if Path(path).suffix.lower() != ".json":
        parse = yaml.safe_load
    try:
        document = parse(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise CliError(f"{path}: not a JSON (or YAML) document: {exc}", FAILED) from None
    except RecursionError:
        raise CliError(f"{path}: nests too deeply", FAILED) from None
    try:
        return msgspec.json.decode(msgspec.json.encode(document))
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise CliError(f"{path}: not expressible as JSON: {exc}", FAILED) from None
