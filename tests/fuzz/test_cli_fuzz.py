"""The CLI's file inputs, fed garbage: ``confbus publish NS FILE``, ``confbus policy NS --schema
FILE`` and ``confbus restore FILE`` end with a clear message and exit 1 or 2 — never a traceback
— and store nothing (unless the bytes happened to be acceptable, which the store then says).

``main()`` runs in this process (a subprocess per example would blow the time budget): an
exception escaping it *is* the traceback a user would see. The oversized and endless inputs
run as real processes under a memory limit, so a regression fails instead of eating the box.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confbus.cli.main import main
from confbus.runtime.api import call
from confbus.runtime.bus import connect
from confbus.runtime.errors import NotFound
from confbus.schemas.api import store as store_api
from tests.cli.procs import REPO, confbus_argv
from tests.fuzz.strategies import garbage, json_values
from tests.version_store.test_service_helpers import Stack, stack

__all__ = ["stack"]  # the module's fixture: one nats-server and one version-store

EXAMPLES = int(os.environ.get("CONFBUS_FUZZ_EXAMPLES", "20"))
MEMORY_LIMIT = 512 * 1024 * 1024  # for the processes fed endless input


@dataclass
class Ran:
    code: int
    out: str
    err: str


def confbus(stack: Stack, capsys: pytest.CaptureFixture[str], *argv: str) -> Ran:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:  # anything else escaping main is the bug
        main(["--nats-url", stack.url, *argv])
    out = capsys.readouterr()
    code = exited.value.code
    assert isinstance(code, int)
    assert "Traceback" not in out.err
    return Ran(code, out.out, out.err)


async def _store_state(url: str, namespace: str) -> tuple[object, ...]:
    bus = await connect(url, name="fuzz-probe")
    try:
        versions = await call(bus, store_api.HISTORY, store_api.HistoryRequest(namespace=namespace))
        policy = await call(
            bus, store_api.POLICY_GET, store_api.PolicyGetRequest(namespace=namespace)
        )
        return (len(versions.versions), policy)
    except NotFound:
        return (0, None)
    finally:
        await bus.close()


def store_state(stack: Stack, namespace: str) -> tuple[object, ...]:
    return anyio.run(_store_state, stack.url, namespace)


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True


@FUZZ
@given(content=st.one_of(garbage(), st.binary(min_size=1, max_size=64).map(lambda b: b"\xff" + b)))
def test_publish_garbage(
    stack: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes
) -> None:
    ns = "fuzz-publish"
    path = tmp_path / "config.json"
    path.write_bytes(content)
    before = store_state(stack, ns)
    ran = confbus(stack, capsys, "publish", ns, str(path), "--timeout", "10")
    if ran.code == 0:
        assert is_json(content), "stored bytes that are not JSON"
        assert ran.out.startswith(f"{ns} v")
        return
    assert ran.code == 1, ran
    assert ran.err.startswith("confbus: ") and "rejected" in ran.err, ran.err
    assert store_state(stack, ns) == before


@FUZZ
@given(
    content=st.one_of(garbage(), json_values.map(lambda v: json.dumps(v).encode())),
    suffix=st.sampled_from([".json", ".yaml"]),
)
def test_policy_schema_garbage(
    stack: Stack,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    content: bytes,
    suffix: str,
) -> None:
    ns = "fuzz-policy"
    path = tmp_path / f"schema{suffix}"
    path.write_bytes(content)
    before = store_state(stack, ns)
    ran = confbus(stack, capsys, "policy", ns, "--schema", str(path))
    if ran.code == 0:
        return  # an object that is a valid JSON Schema: stored, and printed
    assert ran.code == 1, ran
    assert ran.err.startswith("confbus: ") and ran.err.strip() != "confbus:", ran.err
    assert store_state(stack, ns) == before


backup_like = st.fixed_dictionaries(
    {"kind": st.sampled_from(["confbus-backup", "other"]), "format_version": st.integers(0, 2)},
    optional={"namespaces": json_values, "created_at": json_values},
).map(lambda d: json.dumps(d).encode())


@FUZZ
@given(content=st.one_of(garbage(), backup_like))
def test_restore_garbage(
    stack: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "backup.json"
    path.write_bytes(content)
    before = anyio.run(_namespaces, stack.url)
    ran = confbus(stack, capsys, "restore", str(path))
    assert ran.code in (0, 1), ran
    if ran.code == 1:
        assert ran.err.startswith("confbus: "), ran.err
        assert anyio.run(_namespaces, stack.url) == before


async def _namespaces(url: str) -> list[str]:
    bus = await connect(url, name="fuzz-probe")
    try:
        reply = await call(bus, store_api.NAMESPACES, store_api.NamespacesRequest())
        return reply.namespaces
    finally:
        await bus.close()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("deep.json", b"[" * 100_000),
        ("deep.yaml", b"[" * 100_000),
        ("null-key.yaml", b"null: 1\nb: !!binary aGk=\n"),
        ("set.yaml", b"!!set {a, b}\n"),
        ("utf16.json", '{"type": "object"}'.encode("utf-16")),
    ],
)
def test_policy_schema_odd_files(
    stack: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, content: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    ran = confbus(stack, capsys, "policy", "fuzz-odd", "--schema", str(path))
    assert ran.code in (0, 1), ran
    if ran.code == 1:
        assert ran.err.startswith(f"confbus: {path}"), ran.err


def test_unreadable_inputs(
    stack: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for argv in (
        ("publish", "fuzz-x", str(tmp_path)),  # a directory
        ("publish", "fuzz-x", str(tmp_path / "missing.json")),
        ("policy", "fuzz-x", "--schema", str(tmp_path / "missing.json")),
        ("restore", str(tmp_path / "missing.json")),
    ):
        ran = confbus(stack, capsys, *argv)
        # A file named on the command line that is not there is a usage error (exit 2).
        assert ran.code == 2 and "cannot read" in ran.err, (argv, ran)


def limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_limited(stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*confbus_argv(), "--nats-url", stack.url, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limited,
    )


@pytest.mark.parametrize("command", ["publish", "schema", "dry-run"])
def test_endless_and_huge_inputs_are_capped(stack: Stack, tmp_path: Path, command: str) -> None:
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    huge = tmp_path / "huge.json"
    huge.write_bytes(b'"' + b"a" * (3 * 1024 * 1024 + 512 * 1024) + b'"')
    cases: dict[str, list[tuple[str, ...]]] = {
        "publish": [("publish", "fuzz-big", str(zero)), ("publish", "fuzz-big", str(huge))],
        "schema": [("policy", "fuzz-big", "--schema", str(zero))],
        "dry-run": [("publish", "fuzz-big", str(huge), "--dry-run")],
    }
    argv = cases[command]
    for args in argv:
        done = run_limited(stack, *args)
        assert done.returncode == 1, (args, done.stderr[-2000:])
        assert "Traceback" not in done.stderr and "bytes" in done.stderr, done.stderr[-2000:]
    assert store_state(stack, "fuzz-big")[0] == 0


def test_restore_of_an_endless_file_is_refused(stack: Stack, tmp_path: Path) -> None:
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    done = run_limited(stack, "restore", str(zero))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "not a regular file" in done.stderr, done.stderr[-2000:]
