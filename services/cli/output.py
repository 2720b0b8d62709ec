"""Where CLI output goes: results on stdout (for pipes), progress and reasons on stderr."""

from __future__ import annotations

import sys


def out(line: str, end: str = "\n") -> None:
    sys.stdout.write(line + end)
    sys.stdout.flush()


def out_bytes(data: bytes) -> None:
    """Bytes exactly as they are (a version's content), after any text already written."""
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
