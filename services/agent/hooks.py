"""``--on-change CMD``: run after each apply so the app reloads (like consul-template).

The command gets ``CONFBUS_NAMESPACE``, ``CONFBUS_VERSION`` and ``CONFBUS_PATH`` in its
environment. Its failure is logged, never fatal: the config is already applied.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import anyio

log = logging.getLogger("confbus.agent")

ON_CHANGE_TIMEOUT_S = 60.0


async def run_on_change(cmd: str, path: Path, namespace: str, version: int) -> None:
    import shlex  # here: most agents run no on-change command, and keep ~45 KB

    env = {
        **os.environ,
        "CONFBUS_NAMESPACE": namespace,
        "CONFBUS_VERSION": str(version),
        "CONFBUS_PATH": str(path),
    }
    try:
        with anyio.fail_after(ON_CHANGE_TIMEOUT_S):
            result = await anyio.run_process(
                shlex.split(cmd), env=env, check=False, stdin=subprocess.DEVNULL
            )
    except (OSError, TimeoutError) as exc:
        log.warning("on-change command failed to run", extra={"error": str(exc)})
        return
    if result.returncode != 0:
        log.warning(
            "on-change command failed",
            extra={
                "returncode": result.returncode,
                "stderr": result.stderr[-500:].decode(errors="replace"),
            },
        )
