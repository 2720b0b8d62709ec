"""Where CLI output goes: results on stdout (for pipes), progress and reasons on stderr."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


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


@contextlib.contextmanager
def stdout_may_close() -> Iterator[None]:
    """``confbus history | head -1`` closes our stdout early: the reader has what it wanted,
    which is not an error. Whatever raised ``BrokenPipeError`` (a write, a flush, even inside a
    task group) ends quietly here; the caller exits 0."""
    try:
        yield
    except BaseException as exc:
        if not _only_broken_pipes(exc):
            raise
        # Point stdout (and stderr, if it went to the same reader) at /dev/null, so that the
        # interpreter's final flush does not fail again and print a traceback after all.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.close(devnull)


def _only_broken_pipes(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_broken_pipes(e) for e in exc.exceptions)
    return isinstance(exc, BrokenPipeError)
