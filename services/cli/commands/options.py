"""The arguments several commands take, each declared once — so every command with ``--as``
gives it the same dest, metavar and help — and ``command()``, which adds a command with its
texts from ``confbus.cli.commands.index``.

A command module adds them with ``add(parser, NAMESPACE, REASON, ACTOR, JSON)``; a command
that says more about one of them gives its own help with ``JSON.but(help=...)``. An option
with ``env`` takes its default from that variable when the parser is built, and its help says
so. It imports nothing but the standard library and the index: a command's start-up pays
for it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from confbus.cli.commands.index import COMMANDS, DOCSTRING

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


@dataclass(frozen=True)
class Option:
    """One argument: its names, its ``add_argument`` settings, and the environment variable
    that gives its default, if any."""

    flags: tuple[str, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)
    env: str | None = None

    def but(self, **changes: Any) -> Option:
        """The same argument with some settings of a command's own (its help, ``nargs``…)."""
        return Option(self.flags, {**self.settings, **changes}, self.env)

    def add_to(self, parser: argparse._ActionsContainer) -> None:
        settings = dict(self.settings)
        if self.env is not None:
            fallback = settings.get("default")
            settings["default"] = os.environ.get(self.env, fallback)
            # A value from the environment may be a secret: only a fallback is ever shown.
            shown = "" if fallback is None else "; default %(default)s"
            settings["help"] = f"{settings.get('help', '')} (env {self.env}{shown})".lstrip()
        parser.add_argument(*self.flags, **settings)


def add(parser: argparse._ActionsContainer, *options: Option) -> None:
    """Add ``options`` to ``parser``, in this order."""
    for option in options:
        option.add_to(parser)


def command(sub: Subparsers, name: str, **settings: Any) -> argparse.ArgumentParser:
    """Add the command ``name`` with its texts from ``confbus.cli.commands.index``: its help, its
    line in ``confbus --help``; its description, heading ``confbus NAME --help`` (one with line
    breaks of its own, a module's docstring, keeps them)."""
    entry = COMMANDS[name]
    description = entry.description
    if description == DOCSTRING:
        description = sys.modules[entry.module_path].__doc__
    if description is not None and "\n" in description:
        settings.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    return sub.add_parser(name, help=entry.help, description=description, **settings)


# -- what commands act on, and who acts ---------------------------------------------------------

NAMESPACE = Option(("namespace",), {"metavar": "NS"})
ACTOR = Option(
    ("--as",),
    {
        "dest": "identity",
        "metavar": "WHO",
        "help": "who acts, for the audit log (default: $CONFBUS_IDENTITY, else the OS user)",
    },
)
REASON = Option(("--reason",), {"default": "", "help": "why, for the audit log"})

# -- output and waiting -------------------------------------------------------------------------

JSON = Option(("--json",), {"action": "store_true", "help": "print the result as JSON"})
PROGRESS = Option(
    ("--progress",),
    {
        "action": "store_true",
        "help": "with --wait: print each step (a wave, a batch) on stderr even when it is not a "
        "terminal",
    },
)

# -- the machine's stack ------------------------------------------------------------------------

DATA_DIR = Option(
    ("--data-dir",),
    {"default": ".confbus", "help": "the stack's data directory"},
    env="CONFBUS_DATA_DIR",
)
