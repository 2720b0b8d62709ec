"""Free loopback ports for processes that are started later and dial each other.

A port the kernel hands out for ``bind(port 0)`` comes from its ephemeral range: the range it
also takes the source port of every outgoing connection from. Between choosing such a port and
the process binding it, a connection — a cluster node dialling a peer that is not up yet, again
and again — can take it as its source port, and the process then fails with "address already
in use" (seen in CI: the third nats-server of a test cluster). Ports below the ephemeral range
are never taken that way, so these are chosen there.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000  # below: the well-known and registered ports other software expects to get
_ENOUGH = 2_000  # fewer ports than this below the ephemeral range: let the kernel choose


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' source ports (Linux's default if unknown)."""
    try:
        low, high = (int(x) for x in _RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` now, below the ephemeral range when it leaves room.

    Each is checked by binding it; all stay bound until all are chosen, so none repeats."""
    low, _ = ephemeral_range()
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        for _ in range(50 * n + 100):
            if len(ports) == n:
                break
            s = held.enter_context(socket.socket())
            port = random.randrange(_LOWEST, low) if low - _LOWEST >= _ENOUGH else 0
            try:
                s.bind((host, port))
            except OSError:
                continue  # taken: another try
            ports.append(int(s.getsockname()[1]))
        if len(ports) < n:
            raise RuntimeError(f"found {len(ports)} of {n} free ports on {host}")
    return ports


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_port_run(n: int, host: str = "127.0.0.1") -> int:
    """The first of ``n`` consecutive ports that are all free on ``host`` now, below the
    ephemeral range: for ``confbus up --ha --etcd-port E``, whose members take E..E+5."""
    low, _ = ephemeral_range()
    for _ in range(100):
        base = random.randrange(_LOWEST, max(_LOWEST + 1, low - n))
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + n):
                    held.enter_context(socket.socket()).bind((host, port))
            except OSError:
                continue  # one is taken: another run
        return base
    raise RuntimeError(f"found no {n} consecutive free ports on {host}")
