"""What a newcomer's mistakes get back: a wait on a draft says it waits for approval (and how
to give it), a wrong NATS URL is said in words, a missing file is a usage error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from confbus.client import RolloutWaitTimeout
from tests.cli.procs import arun_confbus, dead_nats_url
from tests.version_store.test_service_helpers import Stack, cli, stack

pytestmark = pytest.mark.anyio
__all__ = ["stack"]

_UNROUNDED = re.compile(r"\d\.\d{4,}")


async def test_a_wait_on_a_draft_says_it_waits_for_approval(stack: Stack, tmp_path: Path) -> None:
    ns = "msg-draft"
    assert (await cli(stack.url, "policy", ns, "--require-approval")).code == 0
    config = tmp_path / "app.json"
    config.write_text('{"pool": 16}')
    res = await cli(
        stack.url, "publish", ns, str(config), "--author", "ci", "--wait", "--timeout", "3"
    )
    assert res.code == 3, res.err
    assert "unreachable" not in res.err and not _UNROUNDED.search(res.err), res.err
    assert f"{ns} v1 is still a draft, waiting for approval" in res.err, res.err
    assert f"confbus approve {ns} 1 --as NAME, by someone other than ci" in res.err, res.err


def test_a_rollout_wait_says_its_budget_rounded() -> None:
    exc = RolloutWaitTimeout("web", 10, 4.987239453000029)
    assert str(exc) == "the rollout of web v10 did not end within 5s"


async def test_a_wrong_nats_url_is_said_in_words(tmp_path: Path) -> None:
    refused = await arun_confbus("--nats-url", dead_nats_url(), "history", "x")
    assert refused.returncode == 3, refused
    assert "connection refused" in refused.stderr and "confbus up" in refused.stderr
    assert "Error()" not in refused.stderr, refused.stderr
    unknown = await arun_confbus("--nats-url", "nats://no-such-host.invalid:4222", "status", "x")
    assert unknown.returncode == 3 and "unknown host" in unknown.stderr, unknown
    # The console's address pasted where the bus's belongs: a usage error with the scheme.
    http = await arun_confbus("--nats-url", "http://127.0.0.1:4222", "history", "x")
    assert http.returncode == 2, http
    assert "not a NATS URL" in http.stderr and "nats://127.0.0.1:4222" in http.stderr


async def test_a_missing_input_file_is_a_usage_error(tmp_path: Path) -> None:
    # Said before anything connects: no NATS is needed to learn the file is not there.
    url = dead_nats_url()
    missing = str(tmp_path / "app.json")
    present = tmp_path / "base.json"
    present.write_text("{}")
    for args in (
        ["publish", "web", missing],
        ["publish", "web", str(present), "--overlay", f"dc=eu1={missing}"],
        ["publish", "web", str(tmp_path)],
        ["policy", "web", "--schema", missing],
        ["restore", missing],
    ):
        done = await arun_confbus("--nats-url", url, *args)
        assert done.returncode == 2, (args, done)
        named = args[-1].rpartition("=")[2]
        assert f"cannot read {named}: " in done.stderr, (args, done)


async def test_a_typo_names_the_command_or_option_meant(tmp_path: Path) -> None:
    cases = (
        (["publsh", "web", "x.json"], "unknown command 'publsh' (did you mean publish?)"),
        (["--url", "x", "status", "web"], "unknown option --url (did you mean --nats-url?)"),
        (["keys", "nwe", "alice"], "unknown command 'nwe' (did you mean new?)"),
        (["xyzzy"], "unknown command 'xyzzy'; confbus --help lists them"),
    )  # fmt: skip
    for args, said in cases:
        done = await arun_confbus(*args)
        assert done.returncode == 2, (args, done)
        assert said in done.stderr, (args, done.stderr)
    # Any other argument's choices stay listed, with the likely one.
    (tmp_path / "x.json").write_text("{}")
    done = await arun_confbus("publish", "web", str(tmp_path / "x.json"), "--format", "jsn")
    assert done.returncode == 2 and "(choose from" in done.stderr, done
    assert "(did you mean json?)" in done.stderr, done.stderr
