"""``confbus agent``: run the node agent in the foreground.

The command becomes the agent: it execs ``python -P -m confbus.agent`` with the arguments it
was given, so the agent keeps this pid, gets the signals sent to it and exits with its own
code. The CLI does not import the agent — services and the CLI share only ``confbus.runtime``
and ``confbus.schemas`` (``tests/test_architecture.py``) — so ``confbus agent --help`` is the
agent's own help. The top-level options (``confbus --nats-url URL agent …``) reach the agent
through its environment, where its settings look for them; credentials never go on a command
line, where ``ps`` shows them.
"""

from __future__ import annotations

import argparse
import os
import sys

from confbus.cli.commands.options import Subparsers, command
from confbus.procs.agent import AGENT_MODULE

# Top-level ``confbus`` options → the variables the agent's settings read them from.
_FORWARDED = ("nats_url", "nats_user", "nats_password", "nats_creds", "tls_ca")


def register(sub: Subparsers) -> None:
    p = command(sub, "agent", add_help=False)  # --help is the agent's own
    p.set_defaults(run_local=run, passes_on_arguments=True)


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    for name in _FORWARDED:
        if (value := getattr(args, name, None)) is not None:
            env[f"CONFBUS_{name.upper()}"] = value
    argv = [sys.executable, "-P", "-m", AGENT_MODULE, *args.passed_on]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
