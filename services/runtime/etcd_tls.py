"""How a client reaches etcd members that serve TLS (``confbus up --ha --secure``): the CA that
signed their certificates and, when they ask for one (``--client-cert-auth``), this client's
certificate and key — and the ``--etcd-ca``/``--etcd-cert``/``--etcd-key`` flags that give them.

Light on purpose: the version-store's gRPC connection (``etcd_conn``) and ``confbus doctor``'s
HTTP status probe both take an ``EtcdTls``, and the CLI should not import gRPC to parse a flag.
"""

from __future__ import annotations

import argparse
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

_FLAGS = (
    ("ca", "the CA that signed the etcd members' certificates"),
    ("cert", "this client's certificate, for members that ask for one"),
    ("key", "that certificate's key"),
)


@dataclass(frozen=True)
class EtcdTls:
    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("an etcd client certificate and its key go together")

    def credentials(self) -> grpc.ChannelCredentials:
        """For a gRPC channel; the files read now (a missing one is a ``ValueError`` naming
        it, at start-up)."""
        import grpc

        try:
            return grpc.ssl_channel_credentials(
                root_certificates=self.ca.read_bytes(),
                private_key=self.key.read_bytes() if self.key is not None else None,
                certificate_chain=self.cert.read_bytes() if self.cert is not None else None,
            )
        except OSError as exc:
            raise ValueError(f"etcd TLS: {exc}") from None

    def ssl_context(self) -> ssl.SSLContext:
        """For HTTPS to a member's JSON gateway (``confbus doctor``); the same files."""
        for path in (self.ca, self.cert, self.key):
            if path is not None and not path.is_file():  # ssl's own error does not name it
                raise ValueError(f"etcd TLS: {path}: no such file")
        try:
            context = ssl.create_default_context(cafile=str(self.ca))
            if self.cert is not None and self.key is not None:
                context.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"etcd TLS: {exc}") from None
        return context


def add_etcd_tls_flags(parser: argparse.ArgumentParser) -> None:
    """``--etcd-ca``/``--etcd-cert``/``--etcd-key`` FILE, each defaulting to its
    ``CONFBUS_ETCD_*`` variable (what ``confbus up --ha --secure`` gives its services)."""
    group = parser.add_argument_group("etcd over TLS")
    for name, what in _FLAGS:
        env = f"CONFBUS_ETCD_{name.upper()}"
        group.add_argument(
            f"--etcd-{name}",
            default=os.environ.get(env),
            metavar="FILE",
            help=f"{what} (env {env})",
        )


def etcd_tls_from(args: argparse.Namespace) -> EtcdTls | None:
    """The flags' ``EtcdTls``; None without any. ``ValueError`` saying what is missing."""
    if not (args.etcd_ca or args.etcd_cert or args.etcd_key):
        return None
    if not args.etcd_ca:
        raise ValueError("--etcd-cert and --etcd-key need --etcd-ca, the CA to verify etcd by")

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    return EtcdTls(Path(args.etcd_ca), path(args.etcd_cert), path(args.etcd_key))
