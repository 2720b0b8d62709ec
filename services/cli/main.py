"""``confbus``: the front door for CI, operators and services.

Exit codes: 0 ok; 1 refused or failed (reason on stderr); 2 usage error; 3 confbus
unreachable or timed out.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from confbus.cli import exitcodes
from confbus.cli.commands.index import COMMANDS
from confbus.cli.exitcodes import CliError
from confbus.cli.output import stdout_may_close
from confbus.runtime import natspy
from confbus.runtime.errors import ConfbusError, InvalidInput, Unavailable
from confbus.runtime.urls import DEFAULT_NATS_URL, check_urls

if TYPE_CHECKING:
    from confbus.client import Client


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"confbus: error: {self._hinted(message)}\n")
        sys.exit(exitcodes.USAGE)

    def format_help(self) -> str:
        # Descriptions are often a module's docstring, written for the source (``x``, code
        # fences); a terminal gets them plain.
        return plain(super().format_help())

    def _hinted(self, message: str) -> str:
        """argparse's "invalid choice" lists every choice; a typo deserves the one meant, and an
        unknown option before the command (``--url``) is what really went wrong."""
        bad = _INVALID_CHOICE.match(message)
        if bad is None:
            return message
        word, argument = bad["word"], bad["argument"]
        action = next((a for a in self._actions if _names(a) & {argument}), None)
        choices = [str(c) for c in (action.choices or [])] if action is not None else []
        if not isinstance(action, argparse._SubParsersAction):
            return message + _did_you_mean(word, choices)
        for token in sys.argv[1:]:
            if token == word:
                break
            name = token.split("=", 1)[0]
            if name.startswith("--") and name not in self._option_string_actions:
                known = [o for o in self._option_string_actions if o.startswith("--")]
                return f"unknown option {name}{_did_you_mean(name, known)}"
        return f"unknown command {word!r}{_did_you_mean(word, choices)}; confbus --help lists them"


def _names(action: argparse.Action) -> set[str]:
    return {*action.option_strings, str(action.metavar), action.dest}


_INVALID_CHOICE = re.compile(
    r"argument (?P<argument>\S+?)(/\S+)?: invalid choice: '?(?P<word>[^' ]*)'? \(choose from"
)


def _did_you_mean(word: str, known: Sequence[str]) -> str:
    import difflib  # a usage error's; every other start-up would pay for it

    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


_LITERAL = re.compile(r"``([^`]+)``|\*\*([^*]+)\*\*")
_FENCE = re.compile(r"^[ \t]*```[a-z]*[ \t]*\n", re.MULTILINE)


def plain(text: str) -> str:
    """Help text without reStructuredText's double backquotes, Markdown's bold or its code
    fences."""
    return _LITERAL.sub(lambda m: m.group(1) or m.group(2), _FENCE.sub("", text))


def build_parser(only: str | None = None, *, stubs: bool = False) -> argparse.ArgumentParser:
    """The parser of every command. Start-up is what a CI step pays on each call, so ``main``
    imports one command module only (``only``: the module of that command; they pull in nats-py,
    the client, the schemas): every other command is a stub, its name and one-line help from
    ``confbus.cli.commands.index`` — enough for ``confbus --help`` and to recognise a command.
    ``stubs``: every command a stub."""
    wanted = None if only is None else COMMANDS[only].module_path
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
    for name, entry in COMMANDS.items():
        if stubs or (wanted is not None and entry.module_path != wanted):
            # Anything after a stub's name is the real command's to parse, later.
            sub.add_parser(name, help=entry.help, add_help=False)
        elif name not in sub.choices:  # a module registers all its commands at once
            importlib.import_module(entry.module_path).register(sub)
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
    from confbus.client import Client

    return Client(
        args.nats_url,
        user=args.nats_user,
        password=args.nats_password,
        creds=args.nats_creds,
        tls_ca=args.tls_ca,
        connect_wait_s=CONNECT_WAIT_S if hasattr(args, "timeout") else 0.0,
    )


async def _run_remote(args: argparse.Namespace) -> int:
    from confbus.runtime.retry import budget

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
    # asyncio warns "returning true from eof_received() has no effect when using ssl" when a
    # TLS server closes the connection nats-py upgraded (every command under --secure): noise.
    logging.getLogger("asyncio").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> None:
    code, _ = _main(argv)
    sys.exit(code)


def console() -> NoReturn:
    """The ``confbus`` console script: ``main``; after a command that only talked to confbus
    over the bus (no ``run_local``), the process then ends without the interpreter's teardown.
    Tearing down what such a command imported (nats-py, anyio, msgspec, the client and the
    schemas) costs ~68 M instructions (~18 ms), about a fifth of what ``publish --wait`` adds
    to a raw nats-py script, and there is nothing left for it to do: the connection is closed,
    no thread or ``atexit`` hook of confbus's runs, and the output is flushed here. A local
    command (``up``, ``console``, keys…), a usage error or a crash exits the usual way."""
    code, remote = _main(None)
    if not remote:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):  # each its own: a closed stdout keeps stderr
        with contextlib.suppress(OSError, ValueError):  # a reader that closed its pipe
            stream.flush()
    logging.shutdown()
    os._exit(code)


def _main(argv: Sequence[str] | None) -> tuple[int, bool]:
    """The command's exit code, and whether it ran over the bus (``_run_remote``)."""
    code, remote = exitcodes.OK, False
    natspy.install()  # nats-py's version without importlib.metadata, if a command imports it
    # Every command, --help included, may write into a pipe its reader closed (`| head -1`).
    with stdout_may_close():
        # Which command, from a parser of stubs (``--help`` and a usage error end here), then
        # the parser with that command's module.
        command = build_parser(stubs=True).parse_known_args(argv)[0].command
        parser = build_parser(command)
        args, rest = parser.parse_known_args(argv)
        if rest and not getattr(args, "passes_on_arguments", False):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.passed_on = rest  # a command that runs another program hands these to it
        remote = getattr(args, "run_local", None) is None
        code = _run(args)
    return code, remote


def _run(args: argparse.Namespace) -> int:
    import anyio

    try:
        if getattr(args, "run_local", None) is not None:
            code: int = args.run_local(args)
            return code
        _quiet_logs()
        code = anyio.run(_run_remote, args, backend="asyncio")
        return code
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        # Raised inside a task group (--wait follows events and the record at once): the same
        # line and exit code as the error on its own; anything else is a bug, shown as one.
        return _report(_first_known(group))
    except Exception as exc:
        if isinstance(exc, _known()):
            return _report(exc)
        raise


def _known() -> tuple[type[BaseException], ...]:
    """What a command may end in and is reported as one line, most telling first: confbus's
    own errors, then a NATS error or a timeout no layer below turned into ``Unavailable``.
    (nats-py is looked up, not imported: a command that never connected raised none of its
    errors, and ``confbus keys new`` should not pay for importing it.)"""
    nats_errors = sys.modules.get("nats.errors")
    nats_error: tuple[type[BaseException], ...] = (
        () if nats_errors is None else (nats_errors.Error,)
    )
    return (CliError, ConfbusError, *nats_error, TimeoutError, KeyboardInterrupt)


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
    for kind in _known():
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    raise group


def _report(exc: BaseException) -> int:
    """One line on stderr and the exit code, for every error a command may end in."""
    from confbus.client import WaitTimedOut

    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, CliError):
        sys.stderr.write(f"confbus: {exc}\n")
        return exc.code
    if isinstance(exc, WaitTimedOut):  # confbus answered; the wait ran out of time
        sys.stderr.write(f"confbus: timed out: {exc}\n")
        return exitcodes.UNREACHABLE
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
    console()
