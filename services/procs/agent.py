"""The node agent's command line, written once.

Tests and benchmarks start real agent processes in many shapes — alone, in a stack, behind a
fault shim, with labels or a trust file — but always with the same core: the bus, the node id,
its state dir and each namespace paired with its live file. ``agent_argv`` spells that core,
so an option the agent renames is changed here and not in every harness (``tests/procs``
parses what it builds with the agent's own parser).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from confbus.procs.proc import python_module

AGENT_MODULE = "confbus.agent"


def agent_argv(
    nats_url: str,
    node: str,
    files: Mapping[str, Path],
    state_dir: Path,
    *extra: str,
    heartbeat_interval: float | None = None,
    labels: Mapping[str, str] | None = None,
    program: Sequence[str] | None = None,
) -> list[str]:
    """``python -m confbus.agent`` with this interpreter, for ``node`` on ``nats_url``:
    ``files`` maps each namespace it follows to its live file; the heartbeat interval and
    ``labels`` (``--label K=V``) only when given; ``extra`` last. ``program``: what runs
    instead and takes the same arguments (a fault shim, a driver that wraps the agent)."""
    argv = [*(program or python_module(AGENT_MODULE)), "--nats-url", nats_url, "--node", node]
    argv += ["--state-dir", str(state_dir)]
    if heartbeat_interval is not None:
        argv += ["--heartbeat-interval", str(heartbeat_interval)]
    for namespace, path in files.items():
        argv += ["--namespace", namespace, "--path", str(path)]
    for key, value in (labels or {}).items():
        argv += ["--label", f"{key}={value}"]
    return [*argv, *extra]
