"""Where CLI output goes: results on stdout (for pipes), progress and reasons on stderr."""

from __future__ import annotations

import sys


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
