"""The agent's checks of a config's content before it votes yes.

``check_content`` parses the bytes for the namespace's format (sync, pure CPU, microseconds to
milliseconds for a config of at most a few MiB). ``run_validate`` runs the node's own
validation command (``--validate``, like ``nginx -t``) against the staged file; it is async
and never blocks the event loop.

The validation command
----------------------
``cmd`` is a command line split with ``shlex`` (no shell: nothing in a path is interpreted),
or an argument list. Every ``{}`` in an argument is replaced by the staged file's path;
the path is also in the environment as ``CONFBUS_STAGED``. Nothing is appended when there is
no ``{}``, because many validators take no path at all (``CONFBUS_STAGED`` is for them)::

    --validate 'nginx -t -q -c {}'
    --validate 'python -m json.tool {}'
    --validate 'sh -c "my-check --file \"$CONFBUS_STAGED\""'

Exit status 0 means yes. Anything else is a refusal whose reason carries the command's stderr
(or its stdout if stderr is empty), cut to ``MAX_REASON`` characters keeping the head and the
tail (validators tend to put the error first and the summary last). The command runs in its
own session; on timeout or cancellation its whole process group is killed, so a hung
validator cannot hold up the vote or outlive it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import ByteReceiveStream

from confbus.agent.state import Refused

MAX_REASON = 1000
_MAX_CAPTURE = 64 * 1024  # of each output stream; the rest is read and dropped
STAGED_ENV = "CONFBUS_STAGED"


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def excerpt(text: str, limit: int = MAX_REASON) -> str:
    """``text`` on one line, at most ``limit`` characters: head … tail."""
    text = _one_line(text)
    if len(text) <= limit:
        return text
    half = (limit - 3) // 2
    return f"{text[:half]} … {text[-half:]}"


def check_content(fmt: str, content: bytes, json_schema: dict[str, Any] | None = None) -> None:
    """Refuse (``Refused`` kind ``format``) bytes that do not parse as ``fmt``; say where.

    ``json_schema``: the namespace's, carried by a prepare whose variant nobody validated
    (docs/design.md §2.6); a document that breaks it is refused (kind ``schema``) naming the
    JSON path. Plain text is never checked against a schema."""
    try:
        doc = _parse(fmt, content)
    except UnicodeDecodeError as exc:
        raise Refused("format", f"invalid {fmt}: not UTF-8 at byte {exc.start}") from exc
    except msgspec.DecodeError as exc:
        raise Refused("format", f"invalid JSON: {excerpt(str(exc))}") from exc
    except RecursionError as exc:
        raise Refused("format", f"invalid {fmt}: nested too deeply") from exc
    if json_schema is not None and fmt != "text":
        from confbus.runtime.jsonschema_check import SchemaViolation, check_document

        try:
            check_document(doc, json_schema)
        except SchemaViolation as exc:
            raise Refused("schema", f"the namespace's JSON Schema: {exc}") from exc


def _parse(fmt: str, content: bytes) -> Any:
    if fmt == "json":
        return msgspec.json.decode(content)
    if fmt == "yaml":
        return _parse_yaml(content)
    if fmt == "toml":
        return _parse_toml(content)
    if fmt == "text":
        return content.decode("utf-8")
    raise Refused("format", f"unknown format {fmt!r}")


# The YAML and TOML parsers are imported by the agents of such namespaces only (PyYAML is ~1 MB
# of every agent's RSS).


def _parse_yaml(content: bytes) -> Any:
    import yaml

    try:
        # Decode first: PyYAML would guess UTF-16 from a BOM; configs here are UTF-8.
        return yaml.safe_load(content.decode("utf-8"))
    except yaml.YAMLError as exc:
        raise Refused("format", f"invalid YAML: {excerpt(str(exc))}") from exc


def _parse_toml(content: bytes) -> Any:
    import tomllib

    try:
        return tomllib.loads(content.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise Refused("format", f"invalid TOML: {excerpt(str(exc))}") from exc


def validate_argv(cmd: str | Sequence[str], staged_path: Path) -> list[str]:
    """The argument list ``run_validate`` executes (``{}`` → the staged file's path)."""
    import shlex  # here: most agents run no validate command, and keep ~45 KB

    args = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    if not args:
        raise ValueError("empty validate command")
    return [arg.replace("{}", str(staged_path)) for arg in args]


async def _drain(stream: ByteReceiveStream | None, sink: bytearray) -> None:
    if stream is None:
        return
    # Keep reading past the cap: a validator blocked on a full pipe would look like a hang.
    async for chunk in stream:
        room = _MAX_CAPTURE - len(sink)
        if room > 0:
            sink += chunk[:room]


def _kill_group(pgid: int) -> None:
    # Only called while the group is known to exist (the command is running, or something it
    # started still holds our pipes), so the id cannot have been reused.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def run_validate(cmd: str | Sequence[str], staged_path: Path, timeout: float) -> None:
    """Run the node's validation command on the staged file; raise ``Refused`` unless it exits 0."""
    argv = validate_argv(cmd, staged_path)
    env = {**os.environ, STAGED_ENV: str(staged_path)}
    try:
        process = await anyio.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        raise Refused(
            "validate", f"validate command {argv[0]!r} cannot run: {exc.strerror or exc}"
        ) from exc
    out, err = bytearray(), bytearray()
    try:
        with anyio.move_on_after(timeout) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_drain, process.stdout, out)
                tg.start_soon(_drain, process.stderr, err)
                await process.wait()
        if scope.cancelled_caught:
            _kill_group(process.pid)
    except BaseException:
        _kill_group(process.pid)  # cancelled from outside (shutdown): leave nothing running
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()
    if scope.cancelled_caught:
        raise Refused("validate", f"validate command timed out after {timeout:g}s")
    code = process.returncode
    if code == 0:
        return
    output = excerpt((err or out).decode("utf-8", "replace")) or "(no output)"
    how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited {code}"
    raise Refused("validate", f"validate command {how}: {output}")
