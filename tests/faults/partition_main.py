"""Entry point of the partition scenario inside its own network namespace::

    unshare -n python -m tests.faults.partition_main --out FILE [--cuts N] [--tier T] [--bug B]

(``tests.faults.netns.run_inside`` does this). The figures are written to ``FILE``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import anyio
import msgspec

from tests.faults import nats_faults, netns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--cuts", type=int, default=2)
    parser.add_argument("--cut-seconds", type=float, default=5.0)
    parser.add_argument("--tier", default="ci", choices=("ci", "slow", "bug"))
    parser.add_argument("--bug", default="")
    parser.add_argument("--budget", type=float, default=None)
    args = parser.parse_args(argv)
    if not netns.inside():
        raise SystemExit("run inside a fresh network namespace (tests.faults.netns.run_inside)")
    root = Path(tempfile.mkdtemp(prefix="confbus-partition-"))
    try:
        fig = anyio.run(
            lambda: nats_faults.partition(
                root,
                count=args.cuts,
                cut_s=args.cut_seconds,
                tier=args.tier,
                bug=args.bug,
                budget_s=args.budget,
            )
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    Path(args.out).write_bytes(msgspec.json.encode(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
