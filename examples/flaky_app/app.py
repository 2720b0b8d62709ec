"""flaky_app: a tiny web app whose error rate is set by its config — the confbus demo's patient.

    python examples/flaky_app/app.py --config /etc/app/web.json --port 8081 --load 20

- ``GET /`` answers 200, or 500 with probability ``fail_ratio`` (a key of the JSON config file;
  0 when absent). Before the config file exists it answers 503 ("no config yet").
- ``GET /metrics`` is a Prometheus text page: ``app_requests_total``, ``app_errors_total``
  (counters over ``GET /``), ``app_config_fail_ratio``, ``app_config_reloads_total``.
- ``GET /healthz`` answers 200 once a config is loaded, 503 before.
- The config is re-read when the file changes (checked every 0.1 s: confbus replaces it by an
  atomic rename, so a new inode or mtime) and on SIGHUP. A file that does not parse is
  ignored (the previous config stays), as a careful app would.
- ``--load RPS`` sends that many ``GET /`` per second to itself, so the demo needs no load
  generator; ``--seed`` makes the failures reproducible.

It prints one JSON line on stdout when it serves: ``{"event": "ready", "port": N, ...}``.
Standard library only, so it runs anywhere Python does.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

POLL_S = 0.1


class App:
    def __init__(self, config_path: Path, seed: int | None) -> None:
        self.config_path = config_path
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = 0
        self.errors = 0
        self.reloads = 0
        self.fail_ratio = 0.0
        self.loaded = False
        self.config: dict[str, Any] = {}
        self._stamp: tuple[int, int, int] | None = None

    # -- config -------------------------------------------------------------------------------

    def reload(self, force: bool = False) -> bool:
        """Re-read the config if the file changed (or ``force``). True if a config was loaded."""
        try:
            st = self.config_path.stat()
        except FileNotFoundError:
            return False
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if not force and stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            config = json.loads(self.config_path.read_bytes())
            ratio = float(config.get("fail_ratio", 0.0))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log(f"config {self.config_path} not usable, keeping the previous one: {exc}")
            return False
        with self.lock:
            self.config = config
            self.fail_ratio = min(1.0, max(0.0, ratio))
            self.loaded = True
            self.reloads += 1
        log(f"config loaded: fail_ratio={self.fail_ratio}")
        return True

    def watch(self) -> None:
        while True:
            self.reload()
            time.sleep(POLL_S)

    # -- serving ------------------------------------------------------------------------------

    def serve_one(self) -> tuple[int, bytes]:
        with self.lock:
            self.requests += 1
            if not self.loaded:
                self.errors += 1
                return 503, b"no config yet\n"
            if self.rng.random() < self.fail_ratio:
                self.errors += 1
                return 500, b"injected failure\n"
        return 200, b"ok\n"

    def metrics(self) -> bytes:
        with self.lock:
            lines = [
                "# HELP app_requests_total Requests to GET /.",
                "# TYPE app_requests_total counter",
                f"app_requests_total {self.requests}",
                "# HELP app_errors_total Requests to GET / that failed (5xx).",
                "# TYPE app_errors_total counter",
                f"app_errors_total {self.errors}",
                "# HELP app_config_fail_ratio The fail_ratio of the config in use.",
                "# TYPE app_config_fail_ratio gauge",
                f"app_config_fail_ratio {self.fail_ratio}",
                "# HELP app_config_reloads_total Configs loaded.",
                "# TYPE app_config_reloads_total counter",
                f"app_config_reloads_total {self.reloads}",
            ]
        return ("\n".join(lines) + "\n").encode()


def make_handler(app: App) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, app.metrics(), "text/plain; version=0.0.4")
            elif self.path == "/healthz":
                ok = app.loaded
                self._send(200 if ok else 503, b"ok\n" if ok else b"no config yet\n")
            elif self.path == "/":
                status, body = app.serve_one()
                self._send(status, body)
            else:
                self._send(404, b"not found\n")

        def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per request would drown the demo's output

    return Handler


def load(port: int, rps: float) -> None:
    """Send ``rps`` requests per second to ourselves (one keep-alive connection)."""
    interval = 1.0 / rps
    conn: http.client.HTTPConnection | None = None
    next_at = time.monotonic()
    while True:
        next_at += interval
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/")
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            if conn is not None:
                conn.close()
            conn = None
        time.sleep(max(0.0, next_at - time.monotonic()))


def log(message: str) -> None:
    sys.stderr.write(f"flaky_app[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flaky_app", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, type=Path, help="the JSON config file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    p.add_argument("--load", type=float, default=0.0, metavar="RPS", help="self-traffic")
    p.add_argument("--seed", type=int, help="seed of the failure dice")
    args = p.parse_args(argv)

    app = App(args.config, args.seed)
    app.reload(force=True)

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        app.reload(force=True)

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer((args.host, args.port), make_handler(app))
    server.daemon_threads = True
    port = server.server_address[1]
    threading.Thread(target=app.watch, daemon=True).start()
    if args.load > 0:
        threading.Thread(target=load, args=(port, args.load), daemon=True).start()
    ready = {"event": "ready", "service": "flaky_app", "port": port, "pid": os.getpid()}
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
