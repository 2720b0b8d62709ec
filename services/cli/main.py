"""``confbus``: the front door for CI, operators and services.

Exit codes: 0 ok; 1 refused or failed (reason on stderr); 2 usage error; 3 confbus
unreachable or timed out.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import sys
from collections.abc import Sequence

import anyio
import nats.errors

from confbus.cli import exitcodes
from confbus.cli.exitcodes import CliError
from confbus.client import Client
from confbus.runtime.bus import DEFAULT_NATS_URL
from confbus.runtime.errors import ConfbusError, Unavailable
from confbus.runtime.retry import budget

# Each module registers its subcommands; adding a command area is one line here.
COMMAND_MODULES = (
    "confbus.cli.commands.events",
    "confbus.cli.commands.up",
    "confbus.cli.commands.agent",
    "confbus.cli.commands.txn",
    "confbus.cli.commands.publish",
    "confbus.cli.commands.store",
    "confbus.cli.commands.doctor",
    "confbus.cli.commands.rollback",
    "confbus.cli.commands.rollout",
    "confbus.cli.commands.console",
)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"confbus: error: {message}\n")
        sys.exit(exitcodes.USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="confbus", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--nats-url",
        default=os.environ.get("CONFBUS_NATS_URL", DEFAULT_NATS_URL),
        help="NATS URL(s), comma-separated (env CONFBUS_NATS_URL; default %(default)s)",
    )
    parser.add_argument("--nats-user", default=os.environ.get("CONFBUS_NATS_USER"))
    parser.add_argument("--nats-password", default=os.environ.get("CONFBUS_NATS_PASSWORD"))
    parser.add_argument("--nats-creds", default=os.environ.get("CONFBUS_NATS_CREDS"))
    parser.add_argument("--tls-ca", default=os.environ.get("CONFBUS_TLS_CA"))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


# A command with a time budget (--timeout: publish, rollback) also rides out a broker that is
# restarting as it starts, for up to this long; others say "unreachable" at once.
CONNECT_WAIT_S = 10.0


def client_for(args: argparse.Namespace) -> Client:
    return Client(
        args.nats_url,
        user=args.nats_user,
        password=args.nats_password,
        creds=args.nats_creds,
        tls_ca=args.tls_ca,
        connect_wait_s=CONNECT_WAIT_S if hasattr(args, "timeout") else 0.0,
    )


async def _run_remote(args: argparse.Namespace) -> int:
    # A command's --timeout bounds all it does: each call it makes is retried (when that is
    # safe) until then, not only the last wait.
    timeout = getattr(args, "timeout", None)
    with budget(timeout if isinstance(timeout, int | float) else math.inf):
        async with client_for(args) as client:
            code: int = await args.func(args, client)
            return code


def _quiet_logs() -> None:
    # A command reports its own failure (stderr and exit code); the connection's retry
    # chatter would only repeat it.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("confbus: %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger("confbus.bus").setLevel(logging.ERROR)
    logging.getLogger("nats").setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passes_on_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.passed_on = rest  # a command that runs another program hands these to it
    try:
        if getattr(args, "run_local", None) is not None:
            code = args.run_local(args)
        else:
            _quiet_logs()
            code = anyio.run(_run_remote, args, backend="asyncio")
    except KeyboardInterrupt:
        code = 130
    except BaseExceptionGroup as group:
        # Raised inside a task group (--wait follows events and the record at once): the same
        # line and exit code as the error on its own; anything else is a bug, shown as one.
        code = _report(_first_known(group))
    except (CliError, ConfbusError, nats.errors.Error, TimeoutError) as exc:
        code = _report(exc)
    sys.exit(code)


_KNOWN = (CliError, ConfbusError, nats.errors.Error, TimeoutError, KeyboardInterrupt)


def _first_known(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a user should read from a group: the first one confbus knows how to report
    (a ``ConfbusError`` before a NATS error before a bare timeout); the group itself if it
    holds none, so that a bug still shows its traceback."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for kind in _KNOWN:
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    raise group


def _report(exc: BaseException) -> int:
    """One line on stderr and the exit code, for every error a command may end in."""
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, CliError):
        sys.stderr.write(f"confbus: {exc}\n")
        return exc.code
    if isinstance(exc, Unavailable):
        sys.stderr.write(f"confbus: unreachable: {exc}\n")
        return exitcodes.UNREACHABLE
    if isinstance(exc, ConfbusError):
        sys.stderr.write(f"confbus: {exc}\n")
        return exitcodes.FAILED
    # A NATS error or a timeout no layer below turned into an ``Unavailable``: the bus did not
    # answer in time, which is what exit 3 means.
    sys.stderr.write(f"confbus: unreachable: {exc or type(exc).__name__}\n")
    return exitcodes.UNREACHABLE


if __name__ == "__main__":
    main()
