"""Network partitions with nftables, inside a network namespace this harness creates.

Everything runs on loopback inside ``unshare -n`` (a fresh namespace: its own ``lo``, its own
ruleset), so no rule can touch the machine's other traffic. On one loopback every packet has
127.0.0.1 at both ends, so the nodes are told apart by *who sent the packet*: each nats-server
runs under its own uid, and the first packet of every connection stamps the connection's
conntrack mark with the sender's node number (``meta skuid``). A partition then drops every
packet — both directions — of a connection between the two sides::

    ct mark <initiator> ct original proto-dst <the other node's cluster port> drop

which cuts routes that already exist as well as new ones, and leaves the clients alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TABLE = "confbus_faults"
ENV_INSIDE = "CONFBUS_FAULTS_NETNS"
# uids the nats-servers run under inside the namespace (no such users need to exist).
NODE_UIDS = (64101, 64102, 64103)


def infeasible_reason() -> str | None:
    """Why partitions cannot run here, or None if they can (checked, not assumed)."""
    if sys.platform != "linux":
        return "network namespaces and nftables need Linux"
    if os.geteuid() != 0:
        return "creating a network namespace and nftables rules needs root"
    for tool in ("unshare", "nft", "ip"):
        if shutil.which(tool) is None:
            hint = " (apt-get install -y nftables)" if tool == "nft" else ""
            return f"{tool} is not installed{hint}"
    probe = subprocess.run(
        ["unshare", "-n", "sh", "-c", f"ip link set lo up && nft add table inet {TABLE}"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    if probe.returncode != 0:
        return f"unshare -n / nft failed here: {probe.stderr.strip()[:200]}"
    return None


def inside() -> bool:
    return os.environ.get(ENV_INSIDE) == "1"


def _nft(script: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True, timeout=10)


def setup(uids: Mapping[str, int]) -> dict[str, int]:
    """Bring ``lo`` up and install the marking chain. Returns each node's mark."""
    assert inside(), "only inside the namespace the harness created"
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    marks = {name: i + 1 for i, name in enumerate(uids)}
    stamp = "\n".join(
        f"    ct state new meta skuid {uids[name]} ct mark set {marks[name]}" for name in uids
    )
    _nft(
        f"""
table inet {TABLE} {{
  chain stamp {{
    type filter hook output priority -10; policy accept;
{stamp}
  }}
  chain cut {{
    type filter hook output priority 0; policy accept;
  }}
}}
"""
    )
    return marks


def partition(
    side_a: Sequence[str], side_b: Sequence[str], marks: Mapping[str, int], ports: Mapping[str, int]
) -> None:
    """Drop every packet between the nodes of ``side_a`` and those of ``side_b``."""
    rules = []
    for a, b in ((side_a, side_b), (side_b, side_a)):
        src = ", ".join(str(marks[n]) for n in a)
        dst = ", ".join(str(ports[n]) for n in b)
        rules.append(
            f"add rule inet {TABLE} cut ct mark {{ {src} }} meta l4proto tcp "
            f"ct original proto-dst {{ {dst} }} drop"
        )
    _nft("\n".join(rules) + "\n")


def heal() -> None:
    _nft(f"flush chain inet {TABLE} cut\n")


def ruleset() -> str:
    done = subprocess.run(
        ["nft", "list", "table", "inet", TABLE], capture_output=True, text=True, timeout=10
    )
    return done.stdout


def run_inside(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args`` in a fresh network namespace (``unshare -n``)."""
    env = {**os.environ, ENV_INSIDE: "1"}
    return subprocess.run(
        ["unshare", "-n", sys.executable, "-m", module, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
