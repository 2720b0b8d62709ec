"""The certificate files one process presents (``cert``, ``key``) and the CA it trusts (``ca``):
what a nats-server or an etcd member is configured with, and what this toolkit's own probes
(etcd's ``/health``, nats-server's ``/jsz``) use when they speak TLS to them.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA certificate that signed every certificate of the cluster
    cert: Path  # this process's certificate (PEM)
    key: Path  # its private key (PEM, mode 0600)

    def client_context(self) -> ssl.SSLContext:
        """Verify the server against ``ca`` (names included) and present ``cert``."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context
