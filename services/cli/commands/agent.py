"""``confbus agent``: run the node agent in the foreground."""

from __future__ import annotations

import argparse
from typing import Any

from confbus.runtime.settings import add_common_args


def register(sub: Any) -> None:
    from confbus.agent.main import add_agent_args, run_from_args

    p: argparse.ArgumentParser = sub.add_parser(
        "agent",
        help="run the node agent: keep FILE switched to NS's versions",
        description="Run the node agent: stage, vote, apply atomically, heartbeat.",
    )
    add_common_args(p, bus_defaults=False)  # `confbus --nats-url …` holds them
    add_agent_args(p)
    p.set_defaults(run_local=run_from_args)
