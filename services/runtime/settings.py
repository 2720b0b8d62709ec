"""Settings shared by every service: from flags, falling back to ``CONFBUS_*`` environment
variables, falling back to defaults."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

from confbus.runtime.urls import DEFAULT_NATS_URL


def env(name: str, default: str) -> str:
    return os.environ.get(f"CONFBUS_{name}", default)


@dataclass(frozen=True)
class Settings:
    nats_url: str = DEFAULT_NATS_URL
    nats_user: str | None = None
    nats_password: str | None = None
    nats_creds: str | None = None
    tls_ca: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 0  # 0: any free port (announced in the ready line)
    log_level: str = "info"
    replicas: int = 1  # stream/bucket replicas when provisioning
    provision: bool = True
    instance: str = ""  # this replica's id, for leases and logs
    service: str = ""  # the service these settings run (run_service sets it)

    @property
    def instance_id(self) -> str:
        """This replica's id, and its name as the actor of what it does (events, leases):
        ``--instance``, else ``<service>@<host>-<pid>``. Either names the service — the one
        form an actor that is not a person takes."""
        if self.instance:
            return self.instance
        process = f"{socket.gethostname()}-{os.getpid()}"
        return f"{self.service}@{process}" if self.service else process


def add_common_args(parser: argparse.ArgumentParser, *, bus_defaults: bool = True) -> None:
    """The options every service takes. ``bus_defaults=False`` for a ``confbus`` subcommand:
    its bus options then default to the top-level ``confbus --nats-url …`` ones (argparse lets
    a subparser's defaults overwrite them, so ``confbus --nats-url X agent`` went to 4222)."""

    def default(value: str | None) -> str | None:
        return value if bus_defaults else argparse.SUPPRESS

    g = parser.add_argument_group("bus and service")
    g.add_argument(
        "--nats-url",
        default=default(env("NATS_URL", DEFAULT_NATS_URL)),
        help="comma-separated NATS URLs (env CONFBUS_NATS_URL)",
    )
    g.add_argument("--nats-user", default=default(os.environ.get("CONFBUS_NATS_USER")))
    g.add_argument("--nats-password", default=default(os.environ.get("CONFBUS_NATS_PASSWORD")))
    g.add_argument("--nats-creds", default=default(os.environ.get("CONFBUS_NATS_CREDS")))
    g.add_argument("--tls-ca", default=default(os.environ.get("CONFBUS_TLS_CA")))
    g.add_argument("--http-host", default=env("HTTP_HOST", "127.0.0.1"))
    g.add_argument(
        "--http-port",
        type=int,
        default=int(env("HTTP_PORT", "0")),
        help="port of /metrics and /healthz (0: any free port)",
    )
    g.add_argument("--log-level", default=env("LOG_LEVEL", "info"))
    g.add_argument(
        "--replicas",
        type=int,
        default=int(env("REPLICAS", "1")),
        help="replicas of streams and buckets when provisioning (3 in a cluster)",
    )
    g.add_argument(
        "--no-provision",
        dest="provision",
        action="store_false",
        help="do not create or update streams and buckets",
    )
    g.add_argument("--instance", default=env("INSTANCE", ""))


# Each of these fields is a flag of ``add_common_args`` whose dest is the field's name; the
# other one, ``service``, is the process's own (``run_service`` sets it).
_FLAG_FIELDS = tuple(f.name for f in fields(Settings) if f.name != "service")


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(**{name: getattr(args, name) for name in _FLAG_FIELDS})


D = TypeVar("D", bound="DataclassInstance")


def from_flags(args: argparse.Namespace, target: type[D], /, **given: Any) -> D:
    """A dataclass ``target`` from a process's own flags, each filling the field its dest names
    (``dest="validate_cmd"`` fills ``validate_cmd``), and from ``given`` for the fields no flag
    fills as it stands (a path to load, repeated values to pair up). The common flags fill
    ``Settings`` (``settings_from_args``), never ``target``: their names may mean another thing
    there (``--instance`` is a replica's name, not an agent's run)."""
    own = {f.name for f in fields(target) if f.init} - given.keys() - set(_FLAG_FIELDS)
    return target(**{name: value for name, value in vars(args).items() if name in own}, **given)
