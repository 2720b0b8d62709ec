"""``confbus``: the front door for CI, operators and services.

Exit codes: 0 ok; 1 refused or failed (reason on stderr); 2 usage error; 3 confbus
unreachable or timed out.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
from collections.abc import Sequence

import anyio

from confbus.cli import exitcodes
from confbus.cli.exitcodes import CliError
from confbus.cli.output import stdout_may_close
from confbus.client import Client, WaitTimedOut
from confbus.runtime.bus import DEFAULT_NATS_URL, check_urls
from confbus.runtime.errors import ConfbusError, InvalidInput, Unavailable

# Each module registers its subcommands; adding a command area is one line here.
COMMAND_MODULES = (
    "confbus.cli.commands.events",
    "confbus.cli.commands.up",
    "confbus.cli.commands.agent",
    "confbus.cli.commands.txn",
    "confbus.cli.commands.publish",
    "confbus.cli.commands.store",
    "confbus.cli.commands.policy",
    "confbus.cli.commands.doctor",
    "confbus.cli.commands.rollback",
    "confbus.cli.commands.rollout",
    "confbus.cli.commands.console",
    "confbus.cli.commands.keys",
    "confbus.cli.commands.timetravel",
)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"confbus: error: {message}\n")
        sys.exit(exitcodes.USAGE)

    def format_help(self) -> str:
        # Descriptions are often a module's docstring, written for the source (``x``, code
        # fences); a terminal gets them plain.
        return plain(super().format_help())


_LITERAL = re.compile(r"``([^`]+)``|\*\*([^*]+)\*\*")
_FENCE = re.compile(r"^[ \t]*```[a-z]*[ \t]*\n", re.MULTILINE)


def plain(text: str) -> str:
    """Help text without reStructuredText's double backquotes, Markdown's bold or its code
    fences."""
    return _LITERAL.sub(lambda m: m.group(1) or m.group(2), _FENCE.sub("", text))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="confbus", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--nats-url",
        type=nats_urls,
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


def nats_urls(text: str) -> str:
    """``--nats-url`` (or ``$CONFBUS_NATS_URL``): refused at once, as a usage error, when it is
    not a NATS URL (an ``http://`` one)."""
    try:
        check_urls(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text


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
    code = exitcodes.OK
    # Every command, --help included, may write into a pipe its reader closed (`| head -1`).
    with stdout_may_close():
        parser = build_parser()
        args, rest = parser.parse_known_args(argv)
        if rest and not getattr(args, "passes_on_arguments", False):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.passed_on = rest  # a command that runs another program hands these to it
        code = _run(args)
    sys.exit(code)


def _run(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "run_local", None) is not None:
            code: int = args.run_local(args)
            return code
        _quiet_logs()
        code = anyio.run(_run_remote, args, backend="asyncio")
        return code
    except CliError as exc:
        sys.stderr.write(f"confbus: {exc}\n")
        return exc.code
    except WaitTimedOut as exc:  # confbus answered; the wait ran out of time
        sys.stderr.write(f"confbus: timed out: {exc}\n")
        return exitcodes.UNREACHABLE
    except Unavailable as exc:
        sys.stderr.write(f"confbus: unreachable: {exc}\n")
        return exitcodes.UNREACHABLE
    except ConfbusError as exc:
        sys.stderr.write(f"confbus: {exc}\n")
        return exitcodes.FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    main()
