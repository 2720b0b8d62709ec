"""Knock on a port of the secured HA stack the way an outsider would, and say what came back.

Each probe speaks the port's own protocol at the lowest level — NATS's ``INFO``/``CONNECT``/
``PING`` on a client or route port, HTTP/1.1 on etcd's ports — so the answer names the refusal
itself: the server's ``-ERR``, the TLS alert it sent, the certificate this side would not
trust, or a closed connection. The probes that hold everything a legitimate party holds get
``PONG`` or ``200``: without them, a refusal would prove nothing.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from confbus.procs.tls import TlsFiles

TIMEOUT_S = 5.0
PONG = "PONG"


@dataclass(frozen=True)
class Holding:
    """What a prober holds: the CA it trusts (None: the system's, which does not know ours),
    the certificate it presents, and a NATS user and password."""

    ca: Path | None = None
    cert: TlsFiles | None = None
    user: str | None = None
    password: str | None = None
    plaintext: bool = False  # no TLS at all

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        if self.cert is not None:
            context.load_cert_chain(str(self.cert.cert), str(self.cert.key))
        return context


def _connect_line(holding: Holding, route: bool) -> bytes:
    fields: dict[str, object] = {"verbose": False, "pedantic": False, "name": "probe"}
    if route:
        fields |= {"tls_required": True, "cluster": "confbus"}
    else:
        fields |= {"lang": "python3", "version": "probe", "protocol": 1}
    if holding.user is not None:
        fields |= {"user": holding.user, "pass": holding.password}
    return b"CONNECT " + json.dumps(fields).encode() + b"\r\nPING\r\n"


def nats(port: int, holding: Holding, *, route: bool = False) -> str:
    """``PONG`` if the server took the connection; otherwise why not.

    A client port sends its ``INFO`` in the clear and then expects the TLS handshake; a route
    port (TLS first) expects the handshake at once."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw:
            if not route:
                info = _read_line(raw)
                if not info.startswith(b"INFO "):
                    return f"no INFO: {info[:60]!r}"
            if holding.plaintext:
                raw.sendall(_connect_line(holding, route))
                return _answer(raw)
            with holding.context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                if route:
                    info = _read_line(tls)
                    if not info.startswith(b"INFO "):
                        return f"no INFO: {info[:60]!r}"
                tls.sendall(_connect_line(holding, route))
                return _answer(tls)
    except ssl.SSLError as exc:
        return _tls_refusal(exc)
    except OSError as exc:
        return f"connection failed: {exc!r}"


def _tls_refusal(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"this side does not trust the server: {exc.verify_message}"
    return f"tls refused: {exc.reason or exc}"


def _read_line(sock: socket.socket) -> bytes:
    """One protocol line, read a byte at a time: nothing after it may be taken from the socket
    before TLS starts on it."""
    line = b""
    while not line.endswith(b"\r\n"):
        byte = sock.recv(1)
        if not byte:
            return line or b"<closed>"
        line += byte
    return line


def _answer(sock: socket.socket) -> str:
    """The server's answer to CONNECT + PING: ``PONG``, its ``-ERR``, or closed."""
    while True:
        line = _read_line(sock)
        if line == b"<closed>":
            return "closed"
        text = line.decode(errors="replace").strip()
        if text.startswith(("PONG", "-ERR")):
            return text
        # INFO updates and the like come before the answer on a route: read on.


def https(port: int, path: str, holding: Holding) -> str:
    """``200 <body>`` if etcd answered; otherwise why not."""
    if holding.plaintext:
        url, context = f"http://127.0.0.1:{port}{path}", None
    else:
        url, context = f"https://127.0.0.1:{port}{path}", holding.context()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as r:
            return f"{r.status} {r.read(200).decode(errors='replace')}"
    except urllib.error.HTTPError as exc:
        return f"{exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLError):
            return _tls_refusal(exc.reason)
        return f"connection failed: {exc.reason!r}"
    except ssl.SSLError as exc:  # a TLS 1.3 server refuses the certificate after the handshake
        return _tls_refusal(exc)
    except (OSError, ValueError) as exc:  # e.g. a reset, or an answer that is not HTTP
        return f"connection failed: {exc!r}"
