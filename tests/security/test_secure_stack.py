"""``confbus up --secure`` as a real process: the permitted paths work end to end (CI publishes
as itself, an agent with its own credentials applies it, an operator approves as herself), and
neither a credential nor a secret namespace's content shows up in any log, in ``CFG_EVENTS`` or
in ``confbus replay``. Then once more over TLS, with a certificate made by ``openssl``.
"""

from __future__ import annotations

import base64
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import nats
import pytest

from confbus.cli.security import Roster
from confbus.client import Client
from confbus.procs.agent import agent_argv
from confbus.procs.proc import Proc
from confbus.runtime.bus import Bus, connect
from confbus.schemas import subjects
from confbus.schemas.streams import CFG_DLQ, CFG_EVENTS, STREAMS
from tests.cli.procs import run_confbus, start_confbus
from tests.helpers import eventually
from tests.security.support import leaks

READY_TIMEOUT = 90.0
SECRET_NS = "vault"
PLAIN_NS = "payments"
# Markers inside the secret namespace's configs: none may leave the store (or the agent's file).
MARKERS = {
    "applied": "MARKER-applied-7f3a9c",
    "schema": "MARKER-schema-51e2b0",
    "syntax": "MARKER-syntax-c0ffee",
    "dryrun": "MARKER-dryrun-d00d1e",
}
DLQ_MARKER = "MARKER-dlq-8badf00d"
SCHEMA = '{"type": "object", "properties": {"port": {"type": "integer"}}}'


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        out[key] = value.strip("'")
    return out


@dataclass
class SecureStack:
    root: Path
    up: Proc
    url: str
    secrets: Path
    agents: list[Proc] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # global flags for every confbus call

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def creds(self, user: str) -> dict[str, str]:
        return env_file(self.secrets / f"{user}.env")

    def confbus(
        self, user: str, *args: str, stdin: bytes | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return run_confbus(
            *self.extra,
            *args,
            env={**self.creds(user), "CONFBUS_NATS_URL": self.url},
            stdin=stdin.decode() if stdin is not None else None,
            timeout=timeout,
        )

    def start_agent(self, node: str, namespaces: list[str]) -> tuple[Proc, dict[str, Path]]:
        home = self.root / "nodes" / node
        live = home / "etc"
        live.mkdir(parents=True, exist_ok=True)
        files = {ns: live / f"{ns}.conf" for ns in namespaces}
        state = home / "state"
        argv = agent_argv(self.url, node, files, state, *self.extra, heartbeat_interval=0.5)
        logs = self.root / "agent-logs"
        logs.mkdir(exist_ok=True)
        proc = Proc(f"agent-{node}", argv, logs, env=self.creds(f"agent-{node}"))
        self.agents.append(proc.start())
        return proc, files

    async def service_bus(self) -> Bus:
        c = self.creds("service")
        tls = self.extra[1] if self.extra[:1] == ["--tls-ca"] else None
        return await connect(
            self.url,
            name="test-reader",
            user=c["CONFBUS_NATS_USER"],
            password=c["CONFBUS_NATS_PASSWORD"],
            tls_ca=tls,
        )

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        if self.up.alive():
            code = self.up.stop()
            assert code == 0, self.up.describe()


def start_secure(root: Path, *flags: str, extra: tuple[str, ...] = ()) -> SecureStack:
    proc = start_confbus(
        *extra, "up", "--data-dir", str(root / "data"), "--nats-port", "0", "--secure", *flags
    )
    try:
        line = proc.out.wait_for("confbus ready", READY_TIMEOUT)
    except BaseException:
        proc.kill()
        raise
    m = re.search(r"nats=(\S+).*secrets=(\S+)", line)
    assert m, line
    return SecureStack(root, proc, m.group(1), Path(m.group(2)), extra=list(extra))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    root = tmp_path_factory.mktemp("secure")
    s = start_secure(
        root, "--agent", "n1", "--operator", "alice", "--ci", "ci", "--ci", "ci-pay=payments"
    )
    try:
        yield s
    finally:
        try:
            s.stop()
        finally:
            s.up.kill()


def test_credentials_are_private_files(stack: SecureStack) -> None:
    assert (stack.secrets.stat().st_mode & 0o777) == 0o700
    names = sorted(p.name for p in stack.secrets.iterdir() if not p.name.startswith("."))
    assert names == [
        "agent-n1.env", "alice.env", "ci-pay.env", "ci.env", "nats-auth.conf", "service.env",
        "users.json",
    ]  # fmt: skip
    for path in stack.secrets.iterdir():
        assert (path.stat().st_mode & 0o777) == 0o600, path
    # The services got the service user through their environment, not their argv.
    for line in stack.up.out.lines + stack.up.err.lines:
        assert stack.creds("service")["CONFBUS_NATS_PASSWORD"] not in line


def test_ci_publishes_and_an_agent_with_its_own_credentials_applies_it(
    stack: SecureStack, tmp_path: Path
) -> None:
    _, files = stack.start_agent("n1", [PLAIN_NS, SECRET_NS])
    config = tmp_path / "payments.json"
    config.write_bytes(b'{"limit": 5}\n')
    done = stack.confbus("ci-pay", "publish", PLAIN_NS, str(config))
    assert done.returncode == 0, done.stderr
    assert re.match(r"payments v1 sha256=\w+ \(approved\)", done.stdout), done.stdout

    async def applied() -> bool:
        return files[PLAIN_NS].exists() and files[PLAIN_NS].read_bytes() == config.read_bytes()

    anyio.run(lambda: eventually(applied, timeout=20, what="n1 applies payments v1"))

    async def wait_as_ci() -> str:
        # What `publish --wait` reads: rollout events and the rollout record, as CI.
        creds = stack.creds("ci-pay")
        async with Client(
            stack.url, user=creds["CONFBUS_NATS_USER"], password=creds["CONFBUS_NATS_PASSWORD"]
        ) as client:
            info = await client.wait_rollout(PLAIN_NS, 1, timeout=30)
            return info.state

    assert anyio.run(wait_as_ci) == "completed"
    history = stack.confbus("alice", "history", PLAIN_NS)
    assert history.returncode == 0, history.stderr
    assert " ci-pay " in history.stdout  # the author is the NATS user, not the OS user
    # An operator reads the past (checkpoints, events, a time's sequence) within its rights.
    for args in (("status", PLAIN_NS, "--at", "0s", "--json"), ("why", PLAIN_NS, "n1")):
        past = stack.confbus("alice", *args)
        assert past.returncode == 0, past.stderr
        assert "v1" in past.stdout or '"version":1' in past.stdout, past.stdout

    # ci-pay may not publish elsewhere, nor claim to be someone else.
    claimed = stack.confbus("ci-pay", "publish", PLAIN_NS, str(config), "--author", "alice")
    assert claimed.returncode == 2, claimed.stderr
    assert "cannot be claimed" in claimed.stderr


def test_approval_is_by_another_nats_user(stack: SecureStack, tmp_path: Path) -> None:
    ns = "approved-ns"
    policy = stack.confbus("alice", "policy", ns, "--require-approval")
    assert policy.returncode == 0, policy.stderr
    config = tmp_path / "c.json"
    config.write_bytes(b'{"a": 1}\n')
    draft = stack.confbus("ci", "publish", ns, str(config))
    assert draft.returncode == 0, draft.stderr
    assert "draft: waiting for approval by someone other than ci" in draft.stdout
    # Every command that records who acted takes the NATS user: none lets alice claim bob.
    for claim in (
        ("approve", ns, "1"), ("rollback", ns), ("pause", ns), ("resume", ns), ("abort", ns),
        ("forget", "n9"),
    ):  # fmt: skip
        as_bob = stack.confbus("alice", *claim, "--as", "bob")
        assert as_bob.returncode == 2 and "cannot be claimed" in as_bob.stderr, (claim, as_bob)
    ok = stack.confbus("alice", "approve", ns, "1")
    assert ok.returncode == 0, ok.stderr
    info = stack.confbus("alice", "show", ns, "1", "--info")
    assert "approved_by: alice" in info.stdout and "author: ci" in info.stdout


def secret_configs() -> dict[str, bytes]:
    return {
        "applied": f'{{"token": "{MARKERS["applied"]}", "port": 1}}\n'.encode(),
        "schema": f'{{"token": "x", "port": "{MARKERS["schema"]}"}}\n'.encode(),
        "syntax": f'{{"token": "{MARKERS["syntax"]}", "port": }}\n'.encode(),
    }


@pytest.fixture(scope="module")
def secret_traffic(stack: SecureStack, tmp_path_factory: pytest.TempPathFactory) -> SecureStack:
    """Everything a secret namespace goes through: a policy, a version applied on a node, a
    schema rejection, a syntax rejection, a dry run; and a garbage change dead-lettered."""
    d = tmp_path_factory.mktemp("secret-files")
    schema = d / "schema.json"
    schema.write_text(SCHEMA)
    done = stack.confbus("alice", "policy", SECRET_NS, "--secret", "--schema", str(schema))
    assert done.returncode == 0, done.stderr
    if not stack.agents:
        stack.start_agent("n1", [PLAIN_NS, SECRET_NS])
    files = {k: d / f"{k}.json" for k in secret_configs()}
    for k, data in secret_configs().items():
        files[k].write_bytes(data)
    ok = stack.confbus("ci", "publish", SECRET_NS, str(files["applied"]))
    assert ok.returncode == 0, ok.stderr
    for k in ("schema", "syntax"):
        bad = stack.confbus("ci", "publish", SECRET_NS, str(files[k]))
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert MARKERS[k] not in bad.stderr + bad.stdout  # the rejection names no content
    dry = d / "dry.json"
    dry.write_text(f'{{"token": "{MARKERS["dryrun"]}", "port": 2}}\n')
    preview = stack.confbus("ci", "publish", SECRET_NS, str(dry), "--dry-run")
    assert preview.returncode == 0, preview.stderr
    assert MARKERS["dryrun"] not in preview.stdout + preview.stderr
    live = stack.root / "nodes" / "n1" / "etc" / f"{SECRET_NS}.conf"

    async def applied() -> bool:
        return live.exists() and MARKERS["applied"].encode() in live.read_bytes()

    anyio.run(lambda: eventually(applied, timeout=20, what="n1 applies the secret config"))

    async def dead_letter() -> None:
        # Bytes that never decode, on the secret namespace's change subject: only a confbus
        # service could put them there (CI goes through propose), but the DLQ must hold them.
        bus = await stack.service_bus()
        try:
            before = (await bus.js.stream_info(CFG_DLQ.name)).state.messages
            await bus.js.publish(subjects.change(SECRET_NS), f"{{{DLQ_MARKER}".encode())

            async def arrived() -> bool:
                return (await bus.js.stream_info(CFG_DLQ.name)).state.messages > before

            await eventually(arrived, timeout=20, what="the garbage change is dead-lettered")
        finally:
            await bus.close()

    anyio.run(dead_letter)
    return stack


async def stream_bytes(stack: SecureStack, stream: str) -> bytes:
    bus = await stack.service_bus()
    try:
        state = (await bus.js.stream_info(stream)).state
        out = []
        for seq in range(max(1, state.first_seq), state.last_seq + 1) if state.messages else ():
            try:
                msg = await bus.js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                continue
            out.append((msg.subject or "").encode() + b" " + (msg.data or b""))
            out.extend(f"{k}: {v}".encode() for k, v in (msg.headers or {}).items())
        return b"\n".join(out)
    finally:
        await bus.close()


def all_logs(stack: SecureStack) -> dict[str, bytes]:
    found = {}
    for d in (stack.data_dir / "logs", stack.root / "agent-logs"):
        for path in sorted(d.glob("*")):
            if path.is_file():
                found[str(path)] = path.read_bytes()
    found["up stdout"] = stack.up.out.text().encode()
    found["up stderr"] = stack.up.err.text().encode()
    return found


def test_the_leak_search_sees_through_base64() -> None:
    hidden = base64.b64encode(b"xy" + MARKERS["applied"].encode() + b"z")
    assert leaks({"h": b'{"data": "' + hidden + b'"}'}, [MARKERS["applied"]])


def passwords(stack: SecureStack) -> list[str]:
    roster = Roster.from_json((stack.secrets / "users.json").read_bytes())
    return [u.password for u in roster.users.values()]


def test_no_secret_or_credential_in_logs_events_or_replay(secret_traffic: SecureStack) -> None:
    stack = secret_traffic
    replay = stack.confbus("alice", "replay")
    assert replay.returncode == 0, replay.stderr
    assert f"{SECRET_NS}" in replay.stdout and "version.rejected" in replay.stdout
    haystacks = all_logs(stack)
    haystacks["confbus replay"] = (replay.stdout + replay.stderr).encode()
    haystacks["CFG_EVENTS"] = anyio.run(stream_bytes, stack, CFG_EVENTS.name)
    for spec in STREAMS:
        if spec.name not in (CFG_DLQ.name, "CFG_CHANGES", "CFG_TXN"):
            haystacks[spec.name] = anyio.run(stream_bytes, stack, spec.name)
    # The checks can fail: the marker is really in the agent's live file, the passwords really
    # in the secrets.
    assert (
        MARKERS["applied"].encode()
        in (stack.root / "nodes" / "n1" / "etc" / f"{SECRET_NS}.conf").read_bytes()
    )
    assert leaks({"secrets": (stack.secrets / "nats-auth.conf").read_bytes()}, passwords(stack))
    assert leaks(haystacks, [*MARKERS.values(), *passwords(stack)]) == []


def test_the_permitted_paths_trip_no_permission(secret_traffic: SecureStack) -> None:
    """Everything above (services, an agent, CI publishing and waiting, operators approving,
    replaying) ran within the permissions: the server refused nothing."""
    log = (secret_traffic.data_dir / "logs" / "nats-server.log").read_text(errors="replace")
    assert "Violation" not in log, [line for line in log.splitlines() if "Violation" in line]


def test_a_dead_lettered_secret_change_keeps_no_content(secret_traffic: SecureStack) -> None:
    dlq = anyio.run(stream_bytes, secret_traffic, CFG_DLQ.name)
    assert leaks({"CFG_DLQ": dlq}, [DLQ_MARKER]) == []


# -- TLS ------------------------------------------------------------------------------------------


def self_signed(dir: Path) -> tuple[Path, Path]:
    cert, key = dir / "nats.crt", dir / "nats.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not on PATH")


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecureStack, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    root = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(root)
    s = start_secure(
        root,
        "--tls-cert", str(cert), "--tls-key", str(key), "--agent", "t1",
        extra=("--tls-ca", str(cert)),
    )  # fmt: skip
    try:
        yield s, cert
    finally:
        try:
            s.stop()
        finally:
            s.up.kill()


@needs_openssl
def test_tls_with_a_self_signed_certificate(tls_stack: tuple[SecureStack, Path]) -> None:
    s, cert = tls_stack
    assert f"tls-ca={cert}" in s.up.out.text()
    _, files = s.start_agent("t1", ["tls-ns"])
    config = s.root / "c.json"
    config.write_bytes(b'{"tls": true}\n')
    done = s.confbus("ci", "publish", "tls-ns", str(config))
    assert done.returncode == 0, done.stderr

    async def applied() -> bool:
        return files["tls-ns"].exists()

    anyio.run(lambda: eventually(applied, timeout=20, what="t1 applies over TLS"))


@needs_openssl
def test_the_server_refuses_plaintext(tls_stack: tuple[SecureStack, Path]) -> None:
    """A client that skips TLS (and would send its password in clear) gets no session."""
    s, _ = tls_stack
    host, port = s.url.removeprefix("nats://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        info = sock.recv(4096)
        assert b'"tls_required":true' in info
        creds = s.creds("ci")
        user, password = creds["CONFBUS_NATS_USER"], creds["CONFBUS_NATS_PASSWORD"]
        connect = f'CONNECT {{"user":"{user}","pass":"{password}","verbose":false}}\r\nPING\r\n'
        try:
            sock.sendall(connect.encode())
            answer = sock.recv(4096)
        except OSError:  # the server may drop us before reading
            answer = b""
    # It expects a TLS handshake: the plaintext CONNECT ends the connection, unanswered.
    assert b"PONG" not in answer and (answer == b"" or answer.startswith(b"-ERR")), answer


@needs_openssl
def test_a_client_without_the_ca_fails_fast(tls_stack: tuple[SecureStack, Path]) -> None:
    """nats-py may never return from connect() when the server's certificate fails
    verification; services.runtime.bus.connect bounds the attempt (2 s per server + 1 s)."""
    s, cert = tls_stack
    s.extra = []
    try:
        untrusted = s.confbus("ci", "history", "tls-ns", timeout=10)
    except subprocess.TimeoutExpired:
        untrusted = None
    finally:
        s.extra = ["--tls-ca", str(cert)]
    assert untrusted is not None, "the CLI hung"
    assert untrusted.returncode == 3 and "Traceback" not in untrusted.stderr
