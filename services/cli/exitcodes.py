"""Exit codes, the same for every command (scripts and CI depend on them)."""

from __future__ import annotations

OK = 0
FAILED = 1  # the operation was refused or failed; the reason is on stderr
USAGE = 2  # bad flags or arguments
UNREACHABLE = 3  # confbus could not be reached, or the wait timed out


class CliError(Exception):
    def __init__(self, message: str, code: int = FAILED) -> None:
        self.code = code
        super().__init__(message)
