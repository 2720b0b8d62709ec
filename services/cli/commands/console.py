"""``confbus console``: tokens for the web console and its HTTP API.

``confbus console token --role operator --user alice`` creates a token and prints it once
(with a login link when a stack runs on the data directory); the console's file keeps only its
sha256 (``confbus.schemas.tokens``); ``--expires 30d`` makes one the console refuses after
that. ``confbus console tokens`` lists them, ``confbus console revoke ID`` removes one — the
console notices at its next request. ``confbus up`` makes one for whoever runs it and prints
its sign-in link (``login_link``: the token after ``#``, which a browser never sends, read by
the page's script and posted).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confbus.cli.commands.args import identity
from confbus.cli.commands.options import DATA_DIR, Subparsers, add, command
from confbus.cli.exitcodes import FAILED, OK, USAGE, CliError
from confbus.cli.security.roster import private_dir, roster_lock, write_private
from confbus.cli.stack import StackConfig
from confbus.runtime import since
from confbus.runtime.identity import is_identity
from confbus.schemas import tokens
from confbus.schemas.base import DECODE_ERRORS

UP_LABEL = "confbus up"


def tokens_file(data_dir: Path, explicit: str | None = None) -> Path:
    return Path(explicit) if explicit else data_dir.joinpath(*tokens.TOKENS_FILE)


def load(path: Path) -> tokens.TokenFile:
    try:
        return tokens.decode_token_file(path.read_bytes())
    except FileNotFoundError:
        return tokens.TokenFile()
    except DECODE_ERRORS as exc:
        raise CliError(f"{path}: not a console tokens file: {exc}", FAILED) from None


def mint(
    path: Path,
    user: str,
    role: tokens.Role,
    label: str = "",
    *,
    replace: bool = False,
    expires_at: datetime | None = None,
) -> str:
    """Add a token for ``user`` and return its text (the only time it is seen). ``replace``:
    drop ``user``'s earlier tokens of the same label first (``confbus up`` makes a new login
    link each start, and the old ones should not pile up)."""
    if not is_identity(user):
        raise CliError(f"user {user!r}: expected [a-z0-9][a-z0-9_-]{{0,63}}", USAGE)
    with roster_lock(private_dir(path.parent)):
        current = load(path)
        text, record = tokens.new_token(user, role, label, expires_at)
        kept = [t for t in current.tokens if not (replace and t.user == user and t.label == label)]
        write_private(path, tokens.encode_token_file(tokens.TokenFile(tokens=[*kept, record])))
    return text


def revoke(path: Path, token_id: str) -> bool:
    with roster_lock(private_dir(path.parent)):
        current = load(path)
        kept = [t for t in current.tokens if t.id != token_id]
        if len(kept) == len(current.tokens):
            return False
        write_private(path, tokens.encode_token_file(tokens.TokenFile(tokens=kept)))
    return True


def console_urls(data_dir: Path) -> list[str]:
    """The console URLs of the stack running on ``data_dir`` (from its stack.json), if any."""
    try:
        state = json.loads((data_dir / "stack.json").read_text())
    except (OSError, ValueError):
        return []
    urls = []
    for service in (state.get("services") or {}).values():
        ready = (service or {}).get("ready") or {}
        if isinstance(ready.get("console_url"), str):
            urls.append(ready["console_url"])
    return urls


def login_link(console_url: str, token: str) -> str:
    """The sign-in page with the token in the fragment: no server, proxy or access log sees
    it, and the page's script takes it out of the address before it signs in by a POST."""
    return f"{console_url.rstrip('/')}/login#token={token}"


def local_user() -> str:
    """Who runs ``confbus up``, as a console user name (the OS user, if it is one)."""
    name = identity()
    return name if is_identity(name) else "local"


def with_login_link(config: StackConfig) -> StackConfig:
    """``confbus up`` with a console: once it is ready, a new operator token for whoever runs
    it (replacing the one the last start made) and its sign-in link on stderr — never in the
    ready line, which is logged."""
    if not any(spec.module == "confbus.console" for spec in config.services):
        return config

    def show(ready: list[dict[str, Any]]) -> None:
        urls = [info["console_url"] for info in ready if isinstance(info.get("console_url"), str)]
        if not urls:
            return
        user = local_user()
        token = mint(tokens_file(config.data_dir), user, "operator", UP_LABEL, replace=True)
        for url in urls:
            sys.stderr.write(f"confbus: console: {login_link(url, token)} (operator {user})\n")
        sys.stderr.flush()

    return replace(config, on_ready=show)


def register(sub: Subparsers) -> None:
    p = command(sub, "console")
    add(p, DATA_DIR)
    p.add_argument("--tokens-file", help="the console's tokens file (default DATA_DIR/console/)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    t = verbs.add_parser("token", help="create a token and print it (once)")
    t.add_argument("--role", required=True, choices=tokens.ROLES)
    t.add_argument("--user", help="who acts with it (default $CONFBUS_IDENTITY or the OS user)")
    t.add_argument("--label", default="", help="what it is for")
    t.add_argument(
        "--expires",
        type=expiry,
        metavar="IN|TIME",
        help="refuse it from then on: in 30d, 12h… or at an ISO-8601 time (default: never)",
    )
    verbs.add_parser("tokens", help="list the tokens (id, user, role, created, label)")
    r = verbs.add_parser("revoke", help="remove a token")
    r.add_argument("id", metavar="ID")
    p.set_defaults(run_local=run_console)


def expiry(text: str) -> datetime:
    """When a new token stops working: ``30d`` (from now) or an ISO-8601 time to come."""
    try:
        value = since.parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    now = datetime.now(UTC)
    when = now + value if isinstance(value, timedelta) else value
    if when <= now:
        raise argparse.ArgumentTypeError(f"{text!r}: that is not in the future")
    return when


def run_console(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).expanduser().resolve()
    path = tokens_file(data_dir, args.tokens_file)
    if args.verb == "token":
        text = mint(path, args.user or local_user(), args.role, args.label, expires_at=args.expires)
        sys.stdout.write(text + "\n")
        for url in console_urls(data_dir):
            sys.stderr.write(f"confbus: console login: {login_link(url, text)}\n")
        return OK
    if args.verb == "tokens":
        for t in load(path).tokens:
            when = t.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            ends = ""
            if t.expires_at is not None:
                word = "expired" if tokens.expired(t) else "expires"
                ends = f" ({word} {t.expires_at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ})"
            line = f"{t.id} {t.user} {t.role} {when}{ends} {t.label}"
            sys.stdout.write(line.rstrip() + "\n")
        return OK
    if not revoke(path, args.id):
        raise CliError(f"no token {args.id!r} in {path}", FAILED)
    sys.stderr.write(f"confbus: token {args.id} revoked\n")
    return OK
