"""``confbus.runtime.natspy``: nats-py imported without ``importlib.metadata`` still tells the
server its true version, and the real ``importlib.metadata`` is there for whoever imports it
after. Each check runs in a fresh interpreter: the point is what a process imports."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from confbus.procs.nats import NatsServer
from confbus.procs.ports import free_port
from tests.cli.procs import REPO

# argv[1]: a NATS URL. Prints what the process saw, as JSON, and stays connected until stdin
# closes (so the server still lists the connection).
DRIVER = """
import asyncio, json, sys
from confbus.runtime import natspy
natspy.install()
import nats
seen = {
    "version": nats.aio.client.__version__,
    "metadata_imported": "importlib.metadata" in sys.modules,
    "heavy": sorted(m for m in ("zipfile", "csv", "email.message") if m in sys.modules),
    "finder_left": [type(f).__name__ for f in sys.meta_path if "natspy" in type(f).__module__],
    "loader": type(nats.aio.client.__spec__.loader).__name__,
}

async def main():
    nc = await nats.connect(sys.argv[1], name="natspy-probe")
    import importlib.metadata  # the real one, for anyone after
    seen["real_module"] = importlib.metadata.__file__
    seen["real_version"] = importlib.metadata.version("nats-py")
    seen["other_version"] = importlib.metadata.version("msgspec")
    print(json.dumps(seen), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await nc.close()

asyncio.run(main())
"""


def test_nats_py_tells_the_server_its_true_version_without_importlib_metadata(
    tmp_path: Path,
) -> None:
    monitor = free_port()
    server = NatsServer(data_dir=tmp_path / "nats", monitor_port=monitor).start()
    probe = subprocess.Popen(
        [sys.executable, "-c", DRIVER, server.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert probe.stdout is not None
        seen = json.loads(probe.stdout.readline())
        url = f"http://127.0.0.1:{monitor}/connz?subs=0"
        with urllib.request.urlopen(url, timeout=10) as reply:
            conns = json.load(reply)["connections"]
    finally:
        probe.communicate("", timeout=30)
        server.stop()
    # nats-py imported without importlib.metadata (nor what it brings), and nothing left behind.
    assert not seen["metadata_imported"] and seen["heavy"] == [], seen
    assert seen["finder_left"] == [] and seen["loader"] == "SourceFileLoader", seen
    # The version it reports is what importlib.metadata says, which is there after, real.
    assert seen["version"] == seen["real_version"], seen
    assert seen["real_module"].endswith("importlib/metadata/__init__.py"), seen
    assert seen["other_version"]
    [probe_conn] = [c for c in conns if c.get("name") == "natspy-probe"]
    assert probe_conn["lang"] == "python3" and probe_conn["version"] == seen["real_version"]


def test_without_the_finder_nats_py_reads_importlib_metadata() -> None:
    # The control: what the finder spares is really there without it.
    code = "import sys, nats; print('importlib.metadata' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.stdout.strip() == "True", done.stderr[-2000:]
