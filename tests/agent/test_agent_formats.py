"""Content checks before a yes vote: parsing per format and the node's validation command."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import anyio
import pytest

from confbus.agent.disk import NamespaceDisk, prepare_txn
from confbus.agent.formats import check_content, excerpt, run_validate, validate_argv
from confbus.agent.state import CommitOutcome, Refused
from tests.agent.support import commit_version, content_for, make_prepare

pytestmark = pytest.mark.anyio


def test_unknown_format_is_refused() -> None:
    with pytest.raises(Refused) as info:
        check_content("ini", b"[a]\nb=1\n")
    assert info.value.kind == "format" and "ini" in info.value.reason


def test_parse_errors_say_where() -> None:
    with pytest.raises(Refused) as info:
        check_content("yaml", b"a: 1\nb: [2\n")
    assert "line" in info.value.reason and "\n" not in info.value.reason
    with pytest.raises(Refused) as info:
        check_content("toml", b"a = 1\nb = \n")
    assert "line 2" in info.value.reason


SCHEMA = {"type": "object", "properties": {"limits": {"properties": {"conn": {"maximum": 8}}}}}


@pytest.mark.parametrize(
    ("fmt", "content"),
    [
        ("json", b'{"limits": {"conn": 9}}'),
        ("yaml", b"limits:\n  conn: 9\n"),
        ("toml", b"[limits]\nconn = 9\n"),
    ],
)
def test_a_schema_the_prepare_carries_is_checked_naming_the_path(fmt: str, content: bytes) -> None:
    check_content(fmt, content)  # no schema: parsing only
    with pytest.raises(Refused) as info:
        check_content(fmt, content, SCHEMA)
    assert info.value.kind == "schema"
    assert "9 is greater than the maximum of 8" in info.value.reason
    assert "$.limits.conn" in info.value.reason
    check_content(fmt, content.replace(b"9", b"8"), SCHEMA)
    check_content("text", b"anything", SCHEMA)  # plain text has no document to check


def test_excerpt_keeps_head_and_tail() -> None:
    text = "FIRST " + "x" * 5000 + " LAST"
    short = excerpt(text, 100)
    assert len(short) <= 100 and short.startswith("FIRST") and short.endswith("LAST")
    assert excerpt("a\n  b\n\nc") == "a; b; c"


def test_validate_argv_substitutes_and_never_appends(tmp_path: Path) -> None:
    staged = tmp_path / "dir with space" / ".x"
    assert validate_argv("nginx -t -c {}", staged) == ["nginx", "-t", "-c", str(staged)]
    assert validate_argv("nginx -t", staged) == ["nginx", "-t"]
    assert validate_argv(["check", "--file={}"], staged) == ["check", f"--file={staged}"]
    with pytest.raises(ValueError):
        validate_argv("  ", staged)


async def test_failing_validator_is_a_refusal_carrying_its_stderr(tmp_path: Path) -> None:
    with pytest.raises(Refused) as info:
        await run_validate("sh -c 'echo bad >&2; exit 1'", tmp_path / "f", 5)
    assert info.value.kind == "validate"
    assert info.value.reason == "validate command exited 1: bad"


async def test_validator_stdout_is_used_when_stderr_is_empty(tmp_path: Path) -> None:
    with pytest.raises(Refused) as info:
        await run_validate(["sh", "-c", "echo 'line 3: unknown directive'; exit 2"], tmp_path, 5)
    assert info.value.reason == "validate command exited 2: line 3: unknown directive"


async def test_validator_sees_the_staged_file_by_argument_and_environment(
    tmp_path: Path,
) -> None:
    staged = tmp_path / "it's staged"
    staged.write_text("good")
    await run_validate(
        'sh -c \'grep -q good "$1" && test "$1" = "$CONFBUS_STAGED"\' _ {}', staged, 5
    )
    with pytest.raises(Refused):
        await run_validate("grep -q bad {}", staged, 5)


async def test_long_validator_output_is_truncated(tmp_path: Path) -> None:
    script = "import sys; sys.stderr.write('HEAD' + 'e' * 200000 + 'TAIL'); sys.exit(3)"
    with pytest.raises(Refused) as info:
        await run_validate([sys.executable, "-c", script], tmp_path, 10)
    reason = info.value.reason
    assert len(reason) < 1100
    assert "HEAD" in reason and "TAIL" not in reason  # capture stops at 64 KiB
    assert "exited 3" in reason


async def test_hung_validator_times_out_and_leaves_nothing_running(tmp_path: Path) -> None:
    # A unique duration marks the grandchild, which holds the pipes open: only killing the
    # whole process group ends the wait.
    marker = f"60.{uuid.uuid4().int % 10**9:09d}"
    with anyio.fail_after(10):
        with pytest.raises(Refused) as info:
            await run_validate(["sh", "-c", f"sleep {marker} & wait"], tmp_path, 0.5)
    assert "timed out after 0.5s" in info.value.reason
    assert await _running_with(marker) == []


async def _running_with(marker: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains ``marker``."""
    found = []
    async for proc in anyio.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = await (proc / "cmdline").read_bytes()
            stat = await (proc / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        if marker.encode() in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z":
            found.append(int(proc.name))
    return found


async def test_missing_validator_is_a_refusal(tmp_path: Path) -> None:
    with pytest.raises(Refused) as info:
        await run_validate("/nonexistent/validator {}", tmp_path, 5)
    assert "cannot run" in info.value.reason


async def test_validator_killed_by_a_signal(tmp_path: Path) -> None:
    with pytest.raises(Refused) as info:
        await run_validate(["sh", "-c", "kill -TERM $$"], tmp_path, 5)
    assert "killed by signal 15" in info.value.reason


# --- prepare_txn: stage → validate → seal, as the agent calls it --------------------------


async def test_prepare_txn_votes_yes_after_validation(disk: NamespaceDisk, live: Path) -> None:
    p = make_prepare(1)
    staged = await prepare_txn(disk, p, validate_cmd="test -s {}", validate_timeout=5)
    assert not staged.already_prepared
    assert disk.snapshot().in_doubt
    again = await prepare_txn(disk, p, validate_cmd="false", validate_timeout=5)
    assert again.already_prepared  # redelivered: no second validation, still yes
    assert await anyio.to_thread.run_sync(disk.commit, p.txid, 1, p.sha256) == "applied"
    assert await anyio.Path(live).read_bytes() == content_for(1)


async def test_prepare_txn_refused_by_validator_leaves_nothing(
    disk: NamespaceDisk, live: Path
) -> None:
    await anyio.to_thread.run_sync(commit_version, disk, 1)
    p = make_prepare(2, txid="t2")
    with pytest.raises(Refused) as info:
        await prepare_txn(disk, p, validate_cmd="sh -c 'echo bad >&2; exit 1'")
    assert info.value.reason.endswith(": bad")
    state = disk.snapshot()
    assert not state.in_doubt and state.applied_version == 1
    assert [n async for n in anyio.Path(live.parent).iterdir() if ".confbus-" in n.name] == []
    assert await anyio.Path(live).read_bytes() == content_for(1)
    # The slot is free: a corrected version can be prepared next.
    await prepare_txn(disk, make_prepare(3, txid="t3"), validate_cmd="true")
    assert disk.commit("t3", 3, make_prepare(3).sha256) is CommitOutcome.APPLIED
